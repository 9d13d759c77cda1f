"""One judge run end to end: resume, route every outcome to its one file, summary, _meta, export.

Every input record ends in exactly one place: the pairs output, the skipped file (with its
reason) or the errors file. Resume skips the ids already in pairs or skipped; failures are
retried, so the errors file always lists the latest run's failures.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from stmed import __version__
from stmed.backends import Usage
from stmed.errors import EXIT_OK, EXIT_SOME_FAILED, InputError
from stmed.judge.cost import JudgeStats
from stmed.judge.run import JudgeConfig, run
from stmed.progress import track
from stmed.records import STDIO, ErrorSink, RecordWriter, default_errors_path, sibling_path, write_json


def judge_session(cfg: JudgeConfig, records: list, *, output: str | None, skipped: str | None, errors: str | None,
                  overwrite: bool, quiet: bool, cache, prices: dict, export: str | None = None) -> int:
    from stmed.distributed import Parts, summary_line, world

    skipped_path = skipped or sibling_path(output, ".skipped.jsonl")
    if cfg.backend == "batch" and cfg.batch_dir is None:
        cfg.batch_dir = sibling_path(output, ".batch") or Path("stmed-judge.batch")
    w, final = world(), output
    if w.active and cfg.backend == "batch":
        raise InputError("--backend batch runs as one process (the Batch API does the scaling); start it without a launcher")
    parts = Parts(w, [output, skipped_path], errors, overwrite=overwrite) if w.active else None
    if parts is not None:  # this process writes its parts; the main one merges them (stmed.distributed)
        output, skipped_path, errors, overwrite = parts.part(output), parts.part(skipped_path), parts.errors, False
    pairs = RecordWriter(output, overwrite=overwrite)
    skips = RecordWriter(skipped_path, overwrite=overwrite) if skipped_path else None
    done = pairs.done | (skips.done if skips else set()) | (parts.done if parts else set())
    pending = [r for r in records if r["id"] not in done]
    sink = ErrorSink(errors if errors is not None else default_errors_path(output))
    store = _open_cache(cache)
    stats = JudgeStats()
    started = time.perf_counter()
    try:
        with track(f"judge {w.label}" if parts else "judge", len(pending), quiet=quiet) as tracker:
            for o in run(cfg, pending, stats, cache=store):
                if o.kind == "pair":
                    pairs.write(o.record)
                    tracker.advance(kind="done")
                elif o.kind == "skipped":
                    if skips is not None:
                        skips.write(o.record)
                    else:
                        print(f"stmed: {o.record.get('id')}: skipped ({o.record['skip']})", file=sys.stderr)
                    tracker.advance(kind="skipped")
                else:
                    sink.add(o.record, o.error or "failed", **({"raw": o.raw} if o.raw else {}))
                    tracker.advance(kind="failed")
                _summary(tracker, stats, cfg, prices, started)
            tracker.counts["resumed"] = len(done & {r["id"] for r in records})
    finally:
        pairs.close()
        if skips is not None:
            skips.close()
        sink.close()
        if store is not None:
            store.close()
    code = EXIT_SOME_FAILED if sink.count else EXIT_OK
    if cfg.prepare_only:  # records that could not be prepared have no request: say so in the exit code
        return code
    counts, spent, failed_path = dict(tracker.counts), stats.to_dict(), sink.path
    if parts is not None:
        code, infos = parts.finish(code, {"counts": counts, "stats": spent})
        if not w.main:
            return code
        output, failed_path = final, parts.final_errors
        counts, spent = _sum([i["counts"] for i in infos]), _sum([i["stats"] for i in infos])
        if not quiet:
            print(summary_line("judge", parts.finals[0], infos, parts.added[0]), file=sys.stderr)
    _write_meta(sibling_path(output, ".meta.json"), cfg, spent, prices, counts, time.perf_counter() - started)
    if export == "stllava" and output not in (None, STDIO):
        export_stllava(Path(output), sibling_path(output, ".stllava.json"))
    if counts.get("failed") and failed_path is not None and not quiet:
        print(f"stmed judge: {counts['failed']} failed record(s) listed in {failed_path}", file=sys.stderr)
    return code


def _sum(dicts: list[dict]) -> dict:
    """Counts and spend of several processes added up, key by key (nested dicts too)."""
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = _sum([out.get(k, {}), v]) if isinstance(v, dict) else out.get(k, 0) + v
    return out


def _open_cache(cache):
    if cache is None:
        return None
    from stmed.judge.cache import ReplyCache, default_cache_path

    return ReplyCache(default_cache_path() if cache == "default" else cache)


def _summary(tracker, stats: JudgeStats, cfg: JudgeConfig, prices: dict, started: float) -> None:
    seconds = max(time.perf_counter() - started, 1e-9)
    cost = stats.cost(cfg.judge_model, prices, batch=cfg.backend == "batch")
    tracker.extra = {
        "requests": f"{stats.requests} ({stats.requests / seconds:.1f}/s, {stats.cache_hits} cached)",
        "tokens": f"{stats.usage.prompt_tokens:,} in / {stats.usage.completion_tokens:,} out",
        "cost": "n/a (no price for this model)" if cost is None else f"~${cost:.4f}",
    }


def _write_meta(path: Path | None, cfg: JudgeConfig, stats: dict, prices: dict, counts: dict, seconds: float) -> None:
    """This run's settings and spend beside the output (the key is never part of cfg.describe)."""
    if path is None:
        return
    usage = JudgeStats(usage=Usage(stats.get("prompt_tokens", 0), stats.get("completion_tokens", 0)))
    cost = usage.cost(cfg.judge_model, prices, batch=cfg.backend == "batch")
    meta = {"_meta": "stmed judge", "stmed": __version__, "judge": cfg.describe(), "counts": dict(counts),
            "stats": stats, "cost_usd": None if cost is None else round(cost, 6), "seconds": round(seconds, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(path, meta)


def stllava_record(pair: dict) -> dict:
    """STLLaVA-Med's DPO format: the same human turn, then the chosen or the rejected answer."""
    human = {"from": "human", "value": "<image>\n" + pair["question"]}
    return {"id": pair["id"], "image": pair["image"],
            "chosen_conversations": [human, {"from": "gpt", "value": pair["chosen"]}],
            "reject_conversations": [human, {"from": "gpt", "value": pair["rejected"]}]}


def export_stllava(pairs_path: Path, out: Path) -> None:
    """The whole pairs file, converted (so it stays right across resumed runs); a JSON list, as their loader reads."""
    rows = [stllava_record(json.loads(line)) for line in pairs_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    write_json(out, rows, indent=1)
