"""The online judge: every request of every record concurrently on one event loop, against
api.openai.com or any OpenAI-compatible server, each reply cached (judge.cache) and retried by
the client (backends.openai_client)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from stmed.errors import RecordError
from stmed.judge.common import (Judgement, Outcome, Prepared, Unparseable, decide, failed, judgement_from, orders,
                                outcome, prepare_or_decide, request_for)
from stmed.judge.cost import JudgeStats

if TYPE_CHECKING:
    from stmed.stages.judge import JudgeConfig


def run_online(cfg: JudgeConfig, records: list, stats: JudgeStats, cache) -> Iterator[Outcome]:
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
        return Outcome.failed(rec, str(e), [e.raw])
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
