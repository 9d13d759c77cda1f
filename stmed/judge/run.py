"""The judge stage: ``run(cfg, records)`` yields one Outcome per record: a pair, a skip, or a failure.

Shared by the three backends: a record is *prepared* (answers, question, image as pixels-only
data URL), the answer orders its policy needs become chat requests, each reply is parsed into a
Judgement, and ``verdict.decide`` makes the pair. The online path runs every request of every
record concurrently on one event loop; the batch and local paths live in their own modules.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stmed.backends import ChatRequest
from stmed.errors import InputError, RecordError
from stmed.images import encode_for_api
from stmed.judge.cost import JudgeStats
from stmed.judge.prompt import JudgePrompt
from stmed.judge.verdict import POLICIES, Judgement, Verdict, decide, orders, parse_scores
from stmed.records import answer_texts
from stmed.stages.common import record_image

BACKENDS = ("openai", "batch", "local")


@dataclass
class JudgeConfig:
    backend: str = "openai"
    judge_model: str = "gpt-4o"  # the paper's judge
    base_url: str | None = None  # any OpenAI-compatible server; None is api.openai.com
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 16  # requests in flight (openai backend)
    policy: str = "swap"  # swap (both orders) | paper (STLLaVA-Med's single order)
    min_margin: float = 1.0  # swap: averaged score gap a pair needs, on the 1-10 scale
    temperature: float = 0.2  # the paper's judge temperature
    max_tokens: int = 300  # two scores and a short reason
    max_side: int = 1024  # the image sent is resized to this longest side
    json_mode: str = "auto"  # auto: ask for JSON (response_format) from api.openai.com only
    prompt_file: str | None = None
    image_root: Path | None = None
    timeout: float = 120.0  # one HTTP attempt
    max_request_seconds: float = 600.0  # all retries of one request
    backoff_initial: float = 1.0
    # local backend
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8
    adapter: str | None = None
    trust_remote_code: bool = False
    chat_template: str | None = None  # local: a Jinja file replacing the judge model's template
    max_pixels: int | None = None  # images downscaled to at most this many pixels before judging
    # batch backend
    batch_dir: Path | None = None
    prepare_only: bool = False
    collect: list[str] = field(default_factory=list)
    poll_interval: float = 30.0
    max_batch_requests: int = 50_000  # OpenAI's per-file limit
    max_batch_bytes: int = 190 * 1024 * 1024  # under OpenAI's 200 MB file limit

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(f"--backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.policy not in POLICIES:
            raise InputError(f"--policy {self.policy!r}: expected one of {', '.join(POLICIES)}")
        if self.json_mode not in ("auto", "on", "off"):
            raise InputError(f"--json {self.json_mode!r}: expected auto, on or off")
        if self.min_margin < 0:
            raise InputError("--min-margin must be 0 or more")
        self.prompt = JudgePrompt.from_file(self.prompt_file) if self.prompt_file else JudgePrompt()

    @property
    def use_json(self) -> bool:
        if self.backend == "local":
            return False
        return self.json_mode == "on" or (self.json_mode == "auto" and self.base_url is None)

    def describe(self) -> dict:
        """The settings recorded in every output and in _meta (no secrets: the key is never here)."""
        return {"model": self.judge_model, "prompt_version": self.prompt.version, "policy": self.policy,
                "min_margin": self.min_margin, "temperature": self.temperature, "backend": self.backend}


@dataclass
class Outcome:
    kind: str  # pair | skipped | failed
    record: dict
    error: str | None = None
    raw: list[str] | None = None


class Unparseable(RecordError):
    def __init__(self, message: str, raw: str):
        super().__init__(message)
        self.raw = raw


@dataclass
class Prepared:
    record: Any
    question: str
    answers: list[str]
    image: Any = None  # PIL, kept only for the local backend
    image_url: str | None = None
    image_sha: str | None = None


def answers_of(rec) -> list[str]:
    """The record's answers (see ``records.answer_texts``): at least two, to have a pair to judge."""
    out = answer_texts(rec)
    if len(out) < 2:
        raise RecordError(f"{rec.where}: needs at least 2 answers to judge, has {len(out)}")
    return out


def question_of(rec) -> str:
    q = rec.get("question")
    if not q and isinstance(rec.get("conversations"), list) and rec["conversations"]:
        q = rec["conversations"][0].get("value", "")  # LLaVA format: first human turn
    if q is not None and not isinstance(q, str):
        raise RecordError(f"{rec.where}: field 'question' must be str, got {type(q).__name__}")
    if not isinstance(q, str) or not q.replace("<image>", "").strip():
        raise RecordError(f"{rec.where}: missing field 'question'")
    return q.replace("<image>", "").strip()


def prepare(rec, cfg: JudgeConfig, *, keep_image: bool = False) -> Prepared:
    answers, question = answers_of(rec), question_of(rec)
    img = record_image(rec, cfg.image_root, max_pixels=cfg.max_pixels)
    if keep_image:
        return Prepared(rec, question, answers, image=img)
    url, sha = encode_for_api(img, cfg.max_side)
    return Prepared(rec, question, answers, image_url=url, image_sha=sha)


def request_for(prep: Prepared, order: tuple[int, int], cfg: JudgeConfig, mode: str | None = None) -> ChatRequest:
    mode = mode or ("json" if cfg.use_json else "text")
    text = cfg.prompt.render(prep.question, prep.answers[order[0]], prep.answers[order[1]], mode=mode)
    return ChatRequest(
        [{"role": "user", "content": text}], image=prep.image, image_url=prep.image_url, image_sha=prep.image_sha,
        temperature=cfg.temperature, max_tokens=cfg.max_tokens,
        response_format={"type": "json_object"} if mode == "json" else None,
        tag=f"{prep.record['id']}#{order[0] + 1}>{order[1] + 1}",
    )


def quick_verdict(prep: Prepared, cfg: JudgeConfig) -> Verdict | None:
    """Identical answers make no preference: skip them before paying (swap policy only)."""
    if cfg.policy == "swap" and len(set(a.strip() for a in prep.answers)) == 1:
        return Verdict("skipped", reason="identical-answers")
    return None


def failed(rec, error: Exception) -> Outcome:
    msg = str(error)
    return Outcome("failed", rec, msg if msg.startswith(rec.where) else f"{rec.where}: {msg}")


def prepare_or_decide(rec, cfg: JudgeConfig, stats: JudgeStats, *, keep_image: bool = False) -> Prepared | Outcome:
    """The record prepared for asking, or its Outcome when no request is needed: it could not be
    prepared (failed) or its answers decide it already (``quick_verdict``). Every backend starts here."""
    try:
        prep = prepare(rec, cfg, keep_image=keep_image)
    except RecordError as e:
        return failed(rec, e)
    quick = quick_verdict(prep, cfg)
    return prep if quick is None else outcome(prep, quick, [], cfg, stats)


def outcome(prep: Prepared, v: Verdict, judgements: list[Judgement], cfg: JudgeConfig, stats: JudgeStats) -> Outcome:
    judge = {**cfg.describe(), "scores": v.scores, "swapped_scores": v.swapped_scores, "raw": v.raw,
             "pair": [i + 1 for i in v.pair] if v.pair else None,
             "sources": sorted({j.source for j in judgements})}
    if v.comparisons:
        judge["comparisons"] = [{**c, "shown": [i + 1 for i in c["shown"]]} for c in v.comparisons]
    base = {**prep.record, "id": prep.record["id"], "image": prep.record["image"], "question": prep.question}
    if v.kind == "pair":
        return Outcome("pair", {**base, "chosen": prep.answers[v.chosen], "rejected": prep.answers[v.rejected],
                                "margin": round(v.margin, 4), "judge": judge})
    stats.reasons[v.reason] = stats.reasons.get(v.reason, 0) + 1
    return Outcome("skipped", {**base, "skip": v.reason, "margin": round(v.margin, 4), "judge": judge})


def judgement_from(order: tuple[int, int], text: str, source: str) -> Judgement | None:
    scores = parse_scores(text)
    return Judgement(order, scores, text, source) if scores is not None else None


def run(cfg: JudgeConfig, records: list, stats: JudgeStats | None = None, *, cache=None) -> Iterator[Outcome]:
    """Judge ``records``; every one comes out exactly once, as a pair, a skip or a failure."""
    stats = stats if stats is not None else JudgeStats()
    if cfg.backend == "local":
        from stmed.judge.local import run_local

        yield from run_local(cfg, records, stats)
        return
    if cache is None:
        from stmed.judge.cache import NoCache

        cache = NoCache()
    if cfg.backend == "batch":
        from stmed.judge.batch import run_batch

        yield from run_batch(cfg, records, stats, cache)
        return
    from stmed.backends.openai_client import OpenAIClient, OpenAIConfig, drive

    backend = OpenAIClient(OpenAIConfig(
        model=cfg.judge_model, base_url=cfg.base_url, api_key_env=cfg.api_key_env, concurrency=cfg.concurrency,
        timeout=cfg.timeout, max_request_seconds=cfg.max_request_seconds, backoff_initial=cfg.backoff_initial,
    ))
    try:
        yield from drive(_online(cfg, records, stats, backend, cache), backend.aclose)
    finally:
        stats.retries = backend.retries


async def _ask(prep: Prepared, order, cfg, stats: JudgeStats, backend, cache) -> Judgement:
    req = request_for(prep, order, cfg)
    key = req.cache_key(cfg.judge_model, cfg.base_url)
    hit = cache.get(key)
    if hit is not None and (j := judgement_from(order, hit.text, "cache")) is not None:
        stats.cache_hits += 1
        return j
    for attempt in range(2):  # a reply that cannot be parsed is asked once more, then reported
        if attempt:
            stats.reasks += 1
        result = await backend.complete(req)
        stats.requests += 1
        stats.usage.add(result.usage)
        if (j := judgement_from(order, result.text, "api")) is not None:
            cache.put(key, cfg.judge_model, result)  # only parseable replies: a bad one is asked again next run
            return j
    raise Unparseable(f"{prep.record.where}: judge reply has no two scores after one re-ask", result.text)


async def _judge_record(rec, cfg, stats, backend, cache) -> Outcome:
    try:
        prep = await asyncio.to_thread(prepare_or_decide, rec, cfg, stats)
        if isinstance(prep, Outcome):
            return prep
        tasks = [asyncio.ensure_future(_ask(prep, o, cfg, stats, backend, cache)) for o in orders(len(prep.answers), cfg.policy)]
        try:
            judgements = await asyncio.gather(*tasks)
        finally:
            for t in tasks:  # one order failed: do not leave the other running unowned
                t.cancel()
        return outcome(prep, decide(list(judgements), len(prep.answers), cfg.policy, cfg.min_margin), judgements, cfg, stats)
    except Unparseable as e:
        return Outcome("failed", rec, str(e), raw=[e.raw])
    except RecordError as e:
        return failed(rec, e)


async def _online(cfg, records, stats, backend, cache) -> AsyncIterator[Outcome]:
    queue: asyncio.Queue = asyncio.Queue()
    window = asyncio.Semaphore(max(8, 2 * cfg.concurrency))  # records in flight: bounds memory for images
    tasks: list[asyncio.Future] = []

    async def one(rec) -> None:
        try:
            result: Any = await _judge_record(rec, cfg, stats, backend, cache)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - fatal errors and bugs go to the consumer, not lost in a task
            result = e
        window.release()
        await queue.put(result)

    async def feed() -> None:
        for rec in records:
            await window.acquire()
            tasks.append(asyncio.ensure_future(one(rec)))

    feeder = asyncio.ensure_future(feed())
    try:
        for _ in range(len(records)):
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        for t in [feeder, *tasks]:
            t.cancel()
        await asyncio.gather(feeder, *tasks, return_exceptions=True)
