"""What every judge backend shares: a record *prepared* for asking (answers, question, image as
pixels-only data URL), the chat request for one answer order, a reply parsed into a Judgement,
and the Outcome a verdict makes (``verdict.decide`` is the policy). The backends (online, batch,
local) and the judge stage (stmed.stages.judge) sit on top of this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stmed.api import ChatRequest
from stmed.errors import RecordError
from stmed.images import encode_for_api, record_image
from stmed.judge.cost import JudgeStats
from stmed.judge.verdict import Judgement, Verdict, decide, orders, parse_scores
from stmed.records import Outcome, answer_texts

if TYPE_CHECKING:
    from stmed.judge.config import JudgeConfig

__all__ = ["Judgement", "Outcome", "Prepared", "Unparseable", "decide", "judgement_from", "orders", "outcome",
           "prepare_or_decide", "request_for"]


class Unparseable(RecordError):
    def __init__(self, message: str, raw: str):
        super().__init__(message)
        self.raw = clip(raw)  # what the errors file keeps of it


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
    return Outcome.failed(rec, str(error))


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
    judge = {**cfg.describe(), "scores": v.scores, "swapped_scores": v.swapped_scores, "raw": [clip(r) for r in v.raw],
             "pair": [i + 1 for i in v.pair] if v.pair else None,
             "sources": sorted({j.source for j in judgements})}
    if v.comparisons:
        judge["comparisons"] = [{**c, "shown": [i + 1 for i in c["shown"]]} for c in v.comparisons]
    base = {**prep.record, "id": prep.record["id"], "image": prep.record["image"], "question": prep.question}
    if v.kind == "pair":
        return Outcome.done({**base, "chosen": prep.answers[v.chosen], "rejected": prep.answers[v.rejected],
                             "margin": round(v.margin, 4), "judge": judge})
    stats.reasons[v.reason] = stats.reasons.get(v.reason, 0) + 1
    return Outcome("skipped", [{**base, "skip": v.reason, "margin": round(v.margin, 4), "judge": judge}])


RAW_KEPT = 4000  # characters of a judge reply kept in a record: its scores and reasons, not a runaway reply


def clip(reply: str) -> str:
    """A reply as records keep it: whole up to RAW_KEPT characters, else its start and how much was cut."""
    if len(reply) <= RAW_KEPT:
        return reply
    return f"{reply[:RAW_KEPT]}... [{len(reply) - RAW_KEPT:,} more characters not kept]"


def judgement_from(order: tuple[int, int], text: str, source: str) -> Judgement | None:
    scores = parse_scores(text)
    return Judgement(order, scores, text, source) if scores is not None else None
