"""The local judge: a VLM in this process, through the shared model core, with the same prompt.

Where the model's reply has no two scores (small or untuned models often ramble), the same pair
is asked as "which answer is better, 1 or 2?" and the next-token log-probabilities of "1" and
"2" decide: their softmax p gives scores 10*p and 10*(1-p). So any model, the tiny test model
included, yields a verdict for every record; the judgement's ``source`` says ``logprob``.
torch and transformers load here only, never for the API backends.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from typing import TYPE_CHECKING

from stmed.api import ChatRequest
from stmed.judge.common import Judgement, Outcome, decide, judgement_from, orders, outcome, prepare_or_decide
from stmed.judge.core import JudgeCore
from stmed.judge.cost import JudgeStats
from stmed.judge.prompt import JudgePrompt

if TYPE_CHECKING:
    from stmed.judge.config import JudgeConfig


def local_core(model: str, engine: str, spec, batch_size: int, stats: JudgeStats | None = None) -> JudgeCore:
    """A judge core on a local engine (``--engine hf|vllm``, stmed.registry) for the model in ``spec``
    (its loading flags), loaded on first use; replies are not cached (a rerun costs no money)."""

    def open_local():
        from stmed.engines import EngineOptions, open_engine

        return open_engine(EngineOptions(engine=engine, batch_size=batch_size), spec)

    return JudgeCore(model, "local", stats=stats, engine=open_local, batch_size=batch_size)


def run_local(cfg: JudgeConfig, records: list, stats: JudgeStats, cache=None) -> Iterator[Outcome]:
    """The local engine (``--engine``) as the pairwise judge."""
    core = local_core(cfg.judge_model, cfg.engine, cfg.model_spec(), cfg.batch_size, stats)
    prompt: JudgePrompt = cfg.prompt

    def request(prep, order, mode):
        text = prompt.render(prep.question, prep.answers[order[0]], prep.answers[order[1]], mode=mode)
        return ChatRequest([{"role": "user", "content": text}], image=prep.image)

    chunk_size = max(1, cfg.batch_size * 8)  # records per round: enough to fill batches, few images in memory
    for start in range(0, len(records), chunk_size):
        preps = []
        for rec in records[start:start + chunk_size]:
            prep = prepare_or_decide(rec, cfg, stats, keep_image=True)
            if isinstance(prep, Outcome):
                yield prep
            else:
                preps.append(prep)
        jobs = [(p, o) for p in preps for o in orders(len(p.answers), cfg.policy)]
        replies = core.generate([request(p, o, "text") for p, o in jobs], cfg.max_tokens, cfg.temperature)
        broken = {id(p): replies[k] for k, (p, _) in enumerate(jobs) if isinstance(replies[k], Exception)}
        for p in [p for p in preps if id(p) in broken]:  # the model failed on this record's input
            yield Outcome.failed(p.record, str(broken[id(p)]))
        preps = [p for p in preps if id(p) not in broken]
        jobs = [(k, p, o) for k, (p, o) in enumerate(jobs) if id(p) not in broken]
        judged: dict[int, Judgement] = {}
        fallback = []
        for k, p, o in jobs:
            j = judgement_from(o, replies[k], "local")
            if j is None:
                fallback.append(k)
            else:
                judged[k] = j
        if fallback:
            order_of = {k: (p, o) for k, p, o in jobs}
            lps = core.choose([request(*order_of[k], "choice") for k in fallback], ["1", "2"])
            for k, lp in zip(fallback, lps):
                p1 = 1.0 / (1.0 + math.exp(lp["2"] - lp["1"]))  # softmax over the two choices only
                judged[k] = Judgement(order_of[k][1], (round(10 * p1, 4), round(10 * (1 - p1), 4)),
                                      f"{replies[k]}\n[log-prob fallback: p(1)={p1:.4f}]", "logprob")
        by_prep: dict[int, list[Judgement]] = {}
        for k, p, _ in jobs:
            by_prep.setdefault(id(p), []).append(judged[k])
        for p in preps:
            js = by_prep[id(p)]
            yield outcome(p, decide(js, len(p.answers), cfg.policy, cfg.min_margin), js, cfg, stats)
