"""A judge model grades open answers against the reference (``stmed eval --open-judge MODEL``).

MedEvalKit and similar suites ask a GPT model whether an open answer means the reference
answer; the papers' "open" number is token recall, so this score is an extra column, never a
replacement. The judge sees text only (question, reference, candidate: no image, no path) and
answers 1 (correct) or 0 (incorrect) on its first line. It asks through the LLM-judge core
(stmed.judge.core) on any judge backend (``--open-judge-backend``): ``openai`` (any
OpenAI-compatible server: concurrency, tenacity retries, the reply cache, so a rerun pays
nothing), ``batch`` (one round of Batch API files for the run, half price) or ``local`` (a VLM
in this process on ``--open-judge-engine hf|vllm``; not cached). Usage and cost are summed in a
``JudgeStats``.

A reply with no verdict is asked once more (openai); a local model's is settled by the
log-probabilities of "1" and "0" as its first word instead (the reply notes it). If no verdict
comes, or the request fails for good, the item keeps its rule-based scores, gets no judge score
and counts as a failure.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from stmed.api import ChatRequest, Usage
from stmed.api.settings import ClientSettings, client_flag
from stmed.judge.config import BatchOptions
from stmed.judge.cost import JudgeStats
from stmed.options import opt

if TYPE_CHECKING:
    from stmed.judge.core import Reply

PROMPT_VERSION = "stmed-open-judge-v1"
PROMPT = """You are grading an answer to a question about a medical image. You cannot see the image: judge only whether the candidate answer gives the same answer as the reference answer. Wording, synonyms, abbreviations and extra correct detail do not matter; a different, missing, hedged or contradictory answer is incorrect.

[Question]
{question}

[Reference answer]
{reference}

[Candidate answer]
{candidate}

Reply with 1 on the first line if the candidate answer is correct, or 0 if it is not; then at most one sentence of reason."""
MAX_TOKENS = 64  # a verdict and a short reason


@dataclass
class OpenJudgeConfig:
    # field names carry the prefix where eval's engine flags (--base-url, ...) already use the plain name
    open_judge: str | None = opt(None, "Also grade open answers with this judge model (a served name, e.g. gpt-4o; "
                                 "for local a HF id or folder): metric open_judge, beside token recall.")
    open_judge_backend: str = opt("openai", "--open-judge: openai (any OpenAI-compatible server) | batch (OpenAI "
                                  "Batch API) | local (a VLM here).")
    open_judge_base_url: str | None = client_flag("base_url", "--open-judge")
    open_judge_api_key_env: str = client_flag("api_key_env", "--open-judge")
    open_judge_concurrency: int = client_flag("concurrency", "--open-judge")
    open_judge_engine: str = opt("hf", "--open-judge-backend local: the engine the judge model runs on: hf | vllm "
                                 "(on --device and --dtype).")
    open_judge_batch_size: int = opt(8, "--open-judge-backend local: generation batch size.", min=1)
    open_judge_batch_dir: Path | None = opt(None, "--open-judge-backend batch: folder for request/output files "
                                            "(default OUTPUT.open-judge.batch/).", type=Optional[Path])
    open_judge_poll_interval: float = opt(BatchOptions.poll_interval, "--open-judge-backend batch: seconds between "
                                          "status polls.")
    cache: Path | None = opt(None, "SQLite reply cache (default judge-cache.sqlite in $STMED_CACHE_DIR, else "
                             "~/.cache/stmed).", type=Optional[Path])
    no_cache: bool = opt(False, "Neither read nor write the reply cache.", flags="--no-cache")
    prices: Path | None = opt(None, "JSON price table {model: [input, output]} in USD per million tokens.",
                              type=Optional[Path])
    price: str | None = opt(None, "IN,OUT USD per million tokens for the --open-judge model.")

    def __post_init__(self) -> None:
        from stmed import registry

        self.entry = registry.lookup(self.open_judge_backend, registry.JUDGE, "--open-judge-backend")
        registry.require(registry.lookup(self.open_judge_engine, flag="--open-judge-engine"), "logprobs",
                         "the local open judge's fallback")

    @property
    def model(self) -> str | None:
        return self.open_judge

    @property
    def backend(self) -> str:
        """openai | batch | local (``hf``, its old name, reads as local)."""
        return "local" if self.entry.name == "hf" else self.entry.name

    @property
    def base_url(self) -> str | None:
        return self.open_judge_base_url

    @property
    def api_key_env(self) -> str:
        return self.open_judge_api_key_env

    @property
    def concurrency(self) -> int:
        return self.open_judge_concurrency

    @property
    def enabled(self) -> bool:
        return self.model is not None

    def client_settings(self) -> ClientSettings:
        return ClientSettings(base_url=self.base_url, api_key_env=self.api_key_env, concurrency=self.concurrency)

    def describe(self) -> dict:
        """What made a judge score, recorded on every judged item (no secrets, no URL)."""
        where = {} if self.backend == "openai" else {"backend": self.backend}
        if self.backend == "local" and self.open_judge_engine != "hf":
            where["engine"] = self.open_judge_engine
        return {"model": self.model, "prompt_version": PROMPT_VERSION, **where}


_VERDICT = re.compile(r"^(?:verdict|score|answer|grade|correct)?\s*[:=]?\s*([01])(?![\d.,]\d|\d)", re.I)
_WORD = re.compile(r"^(correct|incorrect|wrong|yes|no)\b", re.I)


def parse_verdict(text: str | None) -> float | None:
    """1.0 / 0.0 from the reply's first non-empty line, or None when it holds no verdict.

    Accepts "1", "**0**", "Verdict: 1", "1 - same finding", a JSON object with verdict, score
    or correct, and the words correct / incorrect / wrong / yes / no; nothing else."""
    if not text:
        return None
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except ValueError:
            data = None
        if isinstance(data, dict):
            for key in ("verdict", "score", "correct"):
                v = data.get(key)
                if isinstance(v, bool) or v in (0, 1):
                    return float(v)
            return None
    line = next((ln for ln in stripped.splitlines() if ln.strip()), "")
    line = line.strip().strip("*#`\"'[]() ").strip()
    m = _VERDICT.match(line)
    if m:
        return float(m.group(1))
    w = _WORD.match(line)
    if w:
        return 1.0 if w.group(1).lower() in ("correct", "yes") else 0.0
    return None


def prompt_for(item: dict) -> str:
    return PROMPT.format(question=str(item.get("question", "")).strip(), reference=str(item["answer"]).strip(),
                         candidate=str(item.get("prediction") or "").strip())


def is_open(item: dict) -> bool:
    return str(item.get("answer_type", "")).upper() == "OPEN"


def kept_score(item: dict, judge: dict | None) -> dict:
    """{"open_judge": score} when ``item`` holds a score by this judge (model and prompt version), else {}."""
    made = item.get("open_judge")
    score = (item.get("scores") or {}).get("open_judge")
    if judge is None or not is_open(item) or score is None or not isinstance(made, dict):
        return {}
    same = made.get("model") == judge["model"] and made.get("prompt_version") == judge["prompt_version"]
    return {"open_judge": score} if same else {}


def _pick(logprobs: dict) -> tuple[float, str]:
    """A local model's verdict from the log-probabilities of "1" and "0" as its reply's first word."""
    p1 = 1.0 / (1.0 + math.exp(logprobs["0"] - logprobs["1"]))  # softmax over the two choices only
    return (1.0 if p1 > 0.5 else 0.0), f"p(1)={p1:.4f}"


class OpenJudge:
    """Grades the open items of a list on the config's backend; ``stats`` and ``failures`` add up
    over every call. ``spec`` (local): how the judge model loads (device, dtype); ``batch_dir``
    (batch): the folder of its request and output files."""

    def __init__(self, cfg: OpenJudgeConfig, *, cache=None, prices: dict | None = None, spec=None,
                 batch_dir: Path | None = None):
        self.cfg, self.prices, self.batch_dir = cfg, prices or {}, batch_dir
        if cfg.backend == "local":
            from stmed.judge.local import local_core

            self.core = local_core(cfg.model, cfg.open_judge_engine, spec, cfg.open_judge_batch_size)
        else:
            from stmed.judge.core import JudgeCore

            self.core = JudgeCore(cfg.model, cfg.backend, client=cfg.client_settings(), cache=cache)
        self.stats = self.core.stats
        self.judged = 0
        self.failures: Counter[str] = Counter()

    @property
    def chunk(self) -> int:
        """Finished items graded together: enough to keep every request slot busy; the whole run
        for batch (one round of files, not one per chunk)."""
        if self.cfg.backend == "batch":
            return sys.maxsize
        if self.cfg.backend == "local":
            return 8 * self.cfg.open_judge_batch_size
        return max(64, 4 * self.cfg.concurrency)

    def grade(self, items: list[dict]) -> list[dict]:
        """``items`` with ``scores.open_judge`` and an ``open_judge`` record on each open item that
        lacks a score by this judge; closed items and already judged ones come back unchanged."""
        todo = [i for i, it in enumerate(items) if is_open(it) and not kept_score(it, self.cfg.describe())]
        out = list(items)
        if not todo:
            return out
        requests = [ChatRequest([{"role": "user", "content": prompt_for(items[i])}], temperature=0.0,
                                max_tokens=MAX_TOKENS, tag=f"open judge {items[i].get('id')}") for i in todo]
        if self.cfg.backend == "batch":
            replies = self._ask_batch([items[i] for i in todo], requests)
        else:
            replies = self.core.ask_all(requests, parse_verdict, choices=(("1", "0"), _pick))
        for i, reply in zip(todo, replies):
            out[i] = self._graded(items[i], reply)
        return out

    def _ask_batch(self, items: list[dict], requests: list[ChatRequest]) -> list[Reply]:
        from stmed.judge.batch import BatchRound, custom_id
        from stmed.judge.core import Reply

        batch = BatchRound(self.core, BatchOptions(self.batch_dir or Path("stmed-open-judge.batch"),
                                                   self.core.settings, poll_interval=self.cfg.open_judge_poll_interval))
        got = [batch.add(req, custom_id(it.get("id"), (0, 0)), parse_verdict) for it, req in zip(items, requests)]
        batch.send()
        return [g if isinstance(g, Reply) else batch.reply(req, g, parse_verdict) for g, req in zip(got, requests)]

    def _graded(self, item: dict, reply: Reply) -> dict:
        made = self.cfg.describe()
        if reply.error is not None:  # the request failed for good (retries spent, or a 4xx)
            self.failures["request failed"] += 1
            return _derive(item, open_judge={**made, "error": reply.error})
        if reply.value is None:
            self.failures["no verdict"] += 1
            why = "no 0/1 verdict after one re-ask" if self.cfg.backend == "openai" else "no 0/1 verdict"
            return _derive(item, open_judge={**made, "error": why, "reply": reply.text})
        self.judged += 1
        return _derive(item, scores={**item.get("scores", {}), "open_judge": reply.value},
                       open_judge={**made, "reply": reply.text})

    def figures(self) -> dict:
        """This process's spend and counts, in a shape the stage runner sums over processes."""
        s = self.stats
        return {"judged": self.judged, "requests": s.requests, "cache_hits": s.cache_hits, "reasks": s.reasks,
                "retries": s.retries, **s.usage.to_dict(), "failures": dict(self.failures)}

    def close(self) -> None:
        self.core.cache.close()


def summary(cfg: OpenJudgeConfig, figures: dict, prices: dict) -> dict:
    """The summary JSON's ``open_judge`` block: who judged, what it cost."""
    usage = Usage(figures.get("prompt_tokens", 0), figures.get("completion_tokens", 0))
    cost = JudgeStats(usage=usage).cost(cfg.model, prices, batch=cfg.backend == "batch")
    failures = {k: v for k, v in (figures.get("failures") or {}).items() if v}
    return {**cfg.describe(), "judged": figures.get("judged", 0), "requests": figures.get("requests", 0),
            "cache_hits": figures.get("cache_hits", 0), "reasks": figures.get("reasks", 0),
            "retries": figures.get("retries", 0), "failures": sum(failures.values()), "failure_reasons": failures,
            "usage": usage.to_dict(), "cost_usd": None if cost is None else round(cost, 6)}


def summary_line(block: dict) -> str:
    cost = block["cost_usd"]
    return (f"stmed eval: open judge {block['model']} ({block['prompt_version']}): {block['judged']} open answers "
            f"judged, {block['failures']} failed; {block['requests']} requests, {block['cache_hits']} cached; "
            f"{block['usage']['prompt_tokens']:,} in / {block['usage']['completion_tokens']:,} out tokens, "
            + ("cost n/a (no price for this model)" if cost is None else f"~${cost:.4f}"))


def open_cache(cfg: OpenJudgeConfig):
    if cfg.no_cache:
        return None
    from stmed.judge.cache import ReplyCache, default_cache_path

    return ReplyCache(cfg.cache or default_cache_path())


def _derive(item: dict, **fields) -> dict:
    derive = getattr(item, "derive", None)
    return derive(**fields) if derive is not None else {**item, **fields}
