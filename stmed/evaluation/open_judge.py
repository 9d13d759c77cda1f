"""A judge model grades open answers against the reference (``stmed eval --open-judge MODEL``).

MedEvalKit and similar suites ask a GPT model whether an open answer means the reference
answer; the papers' "open" number is token recall, so this score is an extra column, never a
replacement. The judge sees text only (question, reference, candidate: no image, no path) and
answers 1 (correct) or 0 (incorrect) on its first line. Requests go through the judge's client
(``backends.openai_client``: concurrency, tenacity retries) and reply cache (``judge.cache``), so
a rerun pays nothing; usage and cost are summed in a ``JudgeStats``.

A reply with no verdict is asked once more; if the second has none either, or the request fails
for good, the item keeps its rule-based scores, gets no judge score and counts as a failure.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from stmed.errors import RecordError
from stmed.judge.cost import JudgeStats
from stmed.options import opt
from stmed.registry import API_KEY_ENV, BASE_URL_HELP, CONCURRENCY

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
    open_judge: str | None = opt(None, "Also grade open answers with this judge model (OpenAI-compatible; e.g. "
                                 "gpt-4o): metric open_judge, beside token recall.")
    open_judge_base_url: str | None = opt(None, "--open-judge: " + BASE_URL_HELP)
    open_judge_api_key_env: str = opt(API_KEY_ENV, "--open-judge: environment variable holding the API key.")
    open_judge_concurrency: int = opt(CONCURRENCY, "--open-judge: requests in flight.", min=1)
    cache: Path | None = opt(None, "SQLite reply cache (default ~/.cache/stmed/judge-cache.sqlite).", type=Optional[Path])
    no_cache: bool = opt(False, "Neither read nor write the reply cache.", flags="--no-cache")
    prices: Path | None = opt(None, "JSON price table {model: [input, output]} in USD per million tokens.",
                              type=Optional[Path])
    price: str | None = opt(None, "IN,OUT USD per million tokens for the --open-judge model.")
    timeout: float = 120.0  # seconds for one HTTP attempt
    max_request_seconds: float = 600.0  # all retries of one request
    backoff_initial: float = 1.0

    @property
    def model(self) -> str | None:
        return self.open_judge

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

    def describe(self) -> dict:
        """What made a judge score, recorded on every judged item (no secrets, no URL)."""
        return {"model": self.model, "prompt_version": PROMPT_VERSION}


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


class OpenJudge:
    """Grades the open items of a list; ``stats`` and ``failures`` add up over every call."""

    def __init__(self, cfg: OpenJudgeConfig, *, cache=None, prices: dict | None = None):
        from stmed.api.openai_client import OpenAIClient, OpenAIConfig

        self.cfg, self.prices = cfg, prices or {}
        self.client = OpenAIClient(OpenAIConfig(
            model=cfg.model, base_url=cfg.base_url, api_key_env=cfg.api_key_env, concurrency=cfg.concurrency,
            timeout=cfg.timeout, max_request_seconds=cfg.max_request_seconds, backoff_initial=cfg.backoff_initial,
        ))
        if cache is None:
            from stmed.judge.cache import NoCache

            cache = NoCache()
        self.cache = cache
        self.stats = JudgeStats()
        self.judged = 0
        self.failures: Counter[str] = Counter()

    def grade(self, items: list[dict]) -> list[dict]:
        """``items`` with ``scores.open_judge`` and an ``open_judge`` record on each open item that
        lacks a score by this judge; closed items and already judged ones come back unchanged."""
        from stmed.api.openai_client import drive

        todo = [i for i, it in enumerate(items) if is_open(it) and not kept_score(it, self.cfg.describe())]
        if not todo:
            return list(items)
        out = list(items)
        try:
            for i, graded in drive(self._agrade([(i, items[i]) for i in todo]), self.client.aclose):
                out[i] = graded
        finally:
            self.stats.retries = self.client.retries
        return out

    async def _agrade(self, todo: list[tuple[int, dict]]) -> AsyncIterator[tuple[int, dict]]:
        import asyncio

        tasks = [asyncio.ensure_future(self._one(i, it)) for i, it in todo]
        try:
            for fut in asyncio.as_completed(tasks):
                yield await fut
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, i: int, item: dict) -> tuple[int, dict]:
        from stmed.api import ChatRequest

        made = self.cfg.describe()
        req = ChatRequest([{"role": "user", "content": prompt_for(item)}], temperature=0.0, max_tokens=MAX_TOKENS,
                          tag=f"open judge {item.get('id')}")
        key = req.cache_key(self.cfg.model, self.cfg.base_url)
        hit = self.cache.get(key)
        if hit is not None and (v := parse_verdict(hit.text)) is not None:
            self.stats.cache_hits += 1
            return i, self._scored(item, v, {**made, "reply": hit.text})
        text = None
        try:
            for attempt in range(2):  # a reply with no verdict is asked once more, then counted failed
                if attempt:
                    self.stats.reasks += 1
                result = await self.client.complete(req)
                self.stats.requests += 1
                self.stats.usage.add(result.usage)
                text = result.text
                if (v := parse_verdict(text)) is not None:
                    self.cache.put(key, self.cfg.model, result)  # only verdicts: a bad reply is asked again next run
                    return i, self._scored(item, v, {**made, "reply": text})
        except RecordError as e:  # the request failed for good (retries spent, or a 4xx)
            self.failures["request failed"] += 1
            return i, _derive(item, open_judge={**made, "error": str(e)})
        self.failures["no verdict"] += 1
        return i, _derive(item, open_judge={**made, "error": "no 0/1 verdict after one re-ask", "reply": text})

    def _scored(self, item: dict, verdict: float, made: dict) -> dict:
        self.judged += 1
        return _derive(item, scores={**item.get("scores", {}), "open_judge": verdict}, open_judge=made)

    def figures(self) -> dict:
        """This process's spend and counts, in a shape the stage runner sums over processes."""
        s = self.stats
        return {"judged": self.judged, "requests": s.requests, "cache_hits": s.cache_hits, "reasks": s.reasks,
                "retries": self.client.retries, **s.usage.to_dict(), "failures": dict(self.failures)}

    def close(self) -> None:
        self.cache.close()


def summary(cfg: OpenJudgeConfig, figures: dict, prices: dict) -> dict:
    """The summary JSON's ``open_judge`` block: who judged, what it cost."""
    from stmed.api import Usage

    usage = Usage(figures.get("prompt_tokens", 0), figures.get("completion_tokens", 0))
    cost = JudgeStats(usage=usage).cost(cfg.model, prices)
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
