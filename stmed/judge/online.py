"""The online judge: every request of every record concurrently on one event loop, against
api.openai.com or any OpenAI-compatible server, through the LLM-judge core (judge.core: the
client, the reply cache, the re-ask, the window of records in flight)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

from stmed.errors import RecordError
from stmed.judge.common import (Judgement, Outcome, Prepared, Unparseable, decide, failed, orders, outcome,
                                prepare_or_decide, request_for)
from stmed.judge.core import JudgeCore
from stmed.judge.cost import JudgeStats
from stmed.judge.verdict import parse_scores

if TYPE_CHECKING:
    from stmed.judge.config import JudgeConfig


def run_online(cfg: JudgeConfig, records: list, stats: JudgeStats, cache) -> Iterator[Outcome]:
    core = JudgeCore(cfg.judge_model, "openai", client=cfg.client_settings(), cache=cache, stats=stats)
    yield from core.run(records, lambda rec: _judge_record(rec, cfg, core))


async def _ask(prep: Prepared, order, cfg, core: JudgeCore) -> Judgement:
    reply = await core.ask(request_for(prep, order, cfg), parse_scores)
    if reply.value is None:
        raise Unparseable(f"{prep.record.where}: judge reply has no two scores after one re-ask", reply.text)
    return Judgement(order, reply.value, reply.text, reply.source)


async def _judge_record(rec, cfg, core: JudgeCore) -> Outcome:
    try:
        prep = await asyncio.to_thread(prepare_or_decide, rec, cfg, core.stats)
        if isinstance(prep, Outcome):
            return prep
        tasks = [asyncio.ensure_future(_ask(prep, o, cfg, core)) for o in orders(len(prep.answers), cfg.policy)]
        try:
            judgements = await asyncio.gather(*tasks)
        finally:
            for t in tasks:  # one order failed: do not leave the other running unowned
                t.cancel()
        return outcome(prep, decide(list(judgements), len(prep.answers), cfg.policy, cfg.min_margin), judgements, cfg,
                       core.stats)
    except Unparseable as e:
        return Outcome.failed(rec, str(e), [e.raw])
    except RecordError as e:
        return failed(rec, e)
