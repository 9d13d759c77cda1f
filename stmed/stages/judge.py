"""judge: sampled answers in, preference pairs out.

``run(cfg, records)`` yields one Outcome per record: a pair (done), a skip (a tie, verdicts that
disagree across answer orders, a margin below ``--min-margin``, identical answers) or a failure.
The backend (stmed.registry: ``openai``, ``batch``, or ``local``, the hf engine as a judge)
asks; the shared policy code (judge.verdict) decides. ``judge`` runs it through the one stage
runner: every input record ends in exactly one place (the pairs output, the skipped file with
its reason, or the errors file); resume skips the ids already in pairs or skipped, failures are
retried, so the errors file always lists the latest run's failures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from stmed import registry
from stmed.api import Usage
from stmed.errors import InputError
from stmed.judge.config import JudgeConfig
from stmed.judge.cost import JudgeStats
from stmed.records import STDIO, Outcome, sibling_path
from stmed.stages.runner import Files, run_stage, sum_figures

__all__ = ["JudgeConfig", "judge", "run"]


def run(cfg: JudgeConfig, records: list, stats: JudgeStats | None = None, *, cache=None) -> Iterator[Outcome]:
    """Judge ``records`` with ``cfg.backend``; every one comes out exactly once."""
    stats = stats if stats is not None else JudgeStats()
    if cache is None:
        from stmed.judge.cache import NoCache

        cache = NoCache()
    ask = cfg.entry.load(registry.JUDGE)
    if cfg.hard_negative:
        from stmed.stages import hard_negative

        yield from hard_negative.run(records, confirm=cfg.confirm, ask=lambda recs: ask(cfg, recs, stats, cache),
                                     stats=stats)
        return
    yield from ask(cfg, records, stats, cache)


def judge(cfg: JudgeConfig, records: list, files: Files, *, cache=None, prices: dict | None = None,
          export: str | None = None) -> int:
    """Judge ``records`` into ``files`` (pairs, skipped, errors, OUTPUT.meta.json); the exit code."""
    if files.skipped is None:
        files.skipped = sibling_path(files.output, ".skipped.jsonl")
    if cfg.backend == "batch" and cfg.batch_dir is None:
        cfg.batch_dir = sibling_path(files.output, ".batch") or Path("stmed-judge.batch")
    from stmed.distributed import world

    if world().active and cfg.backend == "batch":
        raise InputError("--backend batch runs as one process (the Batch API does the scaling); start it without a launcher")
    prices = prices or {}
    store, stats, started = _open_cache(cache), JudgeStats(), time.perf_counter()
    try:
        result = run_stage("judge", lambda todo: run(cfg, todo, stats, cache=store), records, files,
                           figures=stats.to_dict, progress=lambda t: _progress(t, stats, cfg, prices, started),
                           meta=None if cfg.prepare_only else lambda counts, infos, s: _meta(cfg, prices, counts, infos, s),
                           resumed="resumed")
    finally:
        if store is not None:
            store.close()
    if result.main and export == "stllava" and not cfg.prepare_only and files.output not in (None, STDIO):
        from stmed.judge.export import export_stllava

        export_stllava(Path(files.output), sibling_path(files.output, ".stllava.json"))
    return result.code


def _open_cache(cache):
    if cache is None:
        return None
    from stmed.judge.cache import ReplyCache, default_cache_path

    return ReplyCache(default_cache_path() if cache == "default" else cache)


def _progress(tracker, stats: JudgeStats, cfg: JudgeConfig, prices: dict, started: float) -> None:
    seconds = max(time.perf_counter() - started, 1e-9)
    cost = stats.cost(cfg.judge_model, prices, batch=cfg.backend == "batch")
    tracker.extra = {
        "requests": f"{stats.requests} ({stats.requests / seconds:.1f}/s, {stats.cache_hits} cached)",
        "tokens": f"{stats.usage.prompt_tokens:,} in / {stats.usage.completion_tokens:,} out",
        "cost": "n/a (no price for this model)" if cost is None else f"~${cost:.4f}",
    }


def _meta(cfg: JudgeConfig, prices: dict, counts: dict, infos: list[dict], seconds: float) -> dict:
    """This run's settings and spend, summed over every process (the key is never part of cfg.describe)."""
    stats = sum_figures(infos)
    usage = JudgeStats(usage=Usage(stats.get("prompt_tokens", 0), stats.get("completion_tokens", 0)))
    cost = usage.cost(cfg.judge_model, prices, batch=cfg.backend == "batch")
    return {"judge": cfg.describe(), "counts": dict(counts), "stats": stats,
            "cost_usd": None if cost is None else round(cost, 6), "seconds": round(seconds, 2)}
