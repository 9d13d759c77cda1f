"""Hard-negative pairs: an answer on the real image (chosen) against the same model's answer to
the same question on a corrupted copy of it (rejected), from ``stmed answer --corrupt``.

The chosen side is the record's first answer and the rejected side its first corrupted-image
answer: both were sampled with the first of ``--seeds``, so only the pixels differ. Unconfirmed
(``--no-confirm``), every record becomes a pair with ``margin`` and ``judge`` null. Confirmed, the
judge compares the two on the real image (the question is about it) like any two answers, and
the pair is kept only when it prefers the real-image answer under the usual policy and
``--min-margin``; when it prefers the corrupted one the record is skipped as
``corrupt-preferred``. In the pair's ``judge``, ``pair`` numbers the answers as ``answers``
followed by ``corrupt_answers``, so ``[1, len(answers) + 1]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from stmed.corrupt import ANSWERS, FIELD, HARD_NEGATIVE, Corruption
from stmed.errors import RecordError
from stmed.judge.cost import JudgeStats
from stmed.records import Outcome, Record, answer_texts, require

KINDS = ("corrupt",)
FLAG = "--hard-negative corrupt"


def sides(rec: Record) -> tuple[list[str], str]:
    """The record's real-image answers and its first corrupted-image answer, or RecordError."""
    require(rec, "image", "question", types={"image": str, "question": str})
    real = answer_texts(rec)
    if not real:
        raise RecordError(f"{rec.where}: {FLAG} needs an answer on the real image in 'answers'")
    raw = rec.get(ANSWERS)
    if raw is None:
        raise RecordError(f"{rec.where}: {FLAG} needs field '{ANSWERS}' (written by stmed answer --corrupt)")
    if not isinstance(raw, list) or not raw or not all(isinstance(a, dict) and isinstance(a.get("text"), str) for a in raw):
        raise RecordError(f"{rec.where}: field '{ANSWERS}' must be a non-empty list of objects with 'text'")
    Corruption.from_record(rec.get(FIELD), rec.where)  # the pair must say which image made its rejected side
    return real, raw[0]["text"]


def run(records: Iterable[Record], *, confirm: bool, ask: Callable[[list], Iterator[Outcome]],
        stats: JudgeStats) -> Iterator[Outcome]:
    """One Outcome per record; ``ask`` judges records (a backend's run) when ``confirm``."""
    originals: dict[str, tuple[Record, int]] = {}
    judged = []
    for rec in records:
        try:
            real, bad = sides(rec)
        except RecordError as e:
            yield Outcome.failed(rec, str(e))
            continue
        if confirm:
            originals[rec["id"]] = rec, len(real)
            judged.append(rec.derive(answers=[real[0], bad]))
        elif real[0].strip() == bad.strip():  # dpo refuses identical sides: say why here instead
            stats.reasons["identical-answers"] = stats.reasons.get("identical-answers", 0) + 1
            yield Outcome("skipped", [_base(rec, skip="identical-answers", margin=None, judge=None)])
        else:
            yield Outcome.done(_base(rec, chosen=real[0], rejected=bad, margin=None, judge=None))
    if judged:
        for o in ask(judged):
            rec, n_real = originals[o.record["id"]]
            yield _back(o, rec, n_real, stats)


def _base(rec: Record, **fields) -> dict:
    return {**rec, **fields, HARD_NEGATIVE: "corrupt"}


def _back(o: Outcome, rec: Record, n_real: int, stats: JudgeStats) -> Outcome:
    """A judged (real, corrupted) record as the original record's pair, skip or failure."""
    if o.kind == "failed":
        return Outcome("failed", [rec], o.error, o.raw)
    out = {k: v for k, v in o.record.items() if k != "answers"}
    if "answers" in rec:
        out["answers"] = rec["answers"]
    if isinstance(out.get("judge"), dict):
        out["judge"] = {**out["judge"], "pair": [1, n_real + 1]}
    out[HARD_NEGATIVE] = "corrupt"
    if o.kind == "done" and out["chosen"] != o.record["answers"][0]:  # the judge liked the corrupted image's answer
        stats.reasons["corrupt-preferred"] = stats.reasons.get("corrupt-preferred", 0) + 1
        out = {k: v for k, v in out.items() if k not in ("chosen", "rejected")}
        return Outcome("skipped", [{**out, "skip": "corrupt-preferred"}])
    return Outcome(o.kind, [out], tokens=o.tokens)
