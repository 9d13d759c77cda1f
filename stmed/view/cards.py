"""Records of every stage joined into one card per image.

Records with the same ``id`` are one *unit* (a question, its answers, the judge's verdict), in
the order the files were given, each stage's fields added to the last; eval records keep one
prediction per file, so a base and a trained model's outputs sit side by side. Units sit on the
card of their image: ``image_id`` (what gen-questions writes), else the image path. An errors
file's line joins its record's unit, or, for a failure before any question (``<image id>``, or
``<image id>:q<k>`` whose record is not shown), the card of that image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from stmed.records import Record
from stmed.view.inputs import Source

QUESTION_ID = re.compile(r"^(?P<image>.+):q\d+$")
OUTCOMES = ("chosen", "rejected", "skipped", "error", "answered", "asked", "right", "partial", "wrong")


@dataclass
class Prediction:
    """One eval record's answer to a benchmark item."""

    label: str  # the file it came from, without .jsonl
    text: str
    scores: dict
    gen: dict


@dataclass
class Unit:
    id: str
    record: dict = field(default_factory=dict)  # every stage's fields, later files on top
    base_dir: Path | None = None  # where the record's relative image path resolves
    predictions: list[Prediction] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)


@dataclass
class Card:
    key: str
    units: list[Unit] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)  # failures that belong to no shown unit

    @property
    def image(self) -> tuple[str, Path | None] | None:
        """The image path as written, and the folder it resolves against."""
        for u in self.units:
            if isinstance(u.record.get("image"), str) and u.record["image"]:
                return u.record["image"], u.base_dir
        return None

    def first(self, key: str):
        return next((u.record[key] for u in self.units if u.record.get(key)), None)


def kind_of(rec: dict) -> str:
    if "error" in rec and "where" in rec:
        return "error"  # a line of an errors file
    if "prediction" in rec:
        return "eval"
    if "skip" in rec:
        return "skipped"
    if "chosen" in rec and "rejected" in rec:
        return "pair"
    if "answers" in rec:
        return "answers"
    if "question" in rec:
        return "question"
    return "image"


def eval_mark(answer_type, scores: dict) -> str:
    """right | partial | wrong: closed by LLaVA-Med's hit rule, open by recall of the answer's words."""
    if str(answer_type).upper() == "CLOSED":
        return "right" if (scores.get("closed_hit") or 0) >= 1 else "wrong"
    recall = scores.get("recall") or 0
    return "right" if recall >= 1 else "partial" if recall > 0 else "wrong"


def outcomes(unit: Unit) -> list[str]:
    """The unit's filter tags (a subset of OUTCOMES)."""
    rec, tags = unit.record, []
    if unit.errors:
        tags.append("error")
    if "chosen" in rec and "rejected" in rec:
        tags += ["chosen", "rejected"]
    if "skip" in rec:
        tags.append("skipped")
    for p in unit.predictions:
        tags.append(eval_mark(rec.get("answer_type"), p.scores))
    if not tags:
        tags.append("answered" if "answers" in rec else "asked" if "question" in rec else "")
    return [t for t in dict.fromkeys(tags) if t]


def answer_type(unit: Unit) -> str | None:
    t = unit.record.get("answer_type")
    return str(t).lower() if t else None


def _card_key(rec: dict) -> str:
    if rec.get("image_id"):
        return str(rec["image_id"])
    if isinstance(rec.get("image"), str) and rec["image"]:
        return "image:" + rec["image"]
    m = QUESTION_ID.match(rec["id"])
    return m.group("image") if m else rec["id"]


def _label(source: Source) -> str:
    name = Path(source.name).name
    return name[: -len(".jsonl")] if name.endswith(".jsonl") else name


def _scores(rec: Record) -> dict:
    if isinstance(rec.get("scores"), dict):
        return rec["scores"]
    from stmed.evaluation.metrics import score_item  # pure Python: no torch on this path

    return score_item(str(rec.get("prediction") or ""), str(rec.get("answer") or ""), str(rec.get("answer_type")))


def join(sources: list[Source]) -> list[Card]:
    """Cards in the order their first record appears; units likewise within a card."""
    units: dict[str, Unit] = {}
    failures: list[dict] = []
    for source in sources:
        for rec in source.records:
            kind = kind_of(rec)
            if kind == "error":
                failures.append({**rec, "source": source.name})
                continue
            unit = units.setdefault(rec["id"], Unit(rec["id"]))
            if unit.base_dir is None and rec.get("image"):
                unit.base_dir = rec.base_dir
            if kind == "eval":
                unit.predictions.append(Prediction(_label(source), str(rec.get("prediction") or ""), _scores(rec),
                                                   rec.get("gen") if isinstance(rec.get("gen"), dict) else {}))
                rec = {k: v for k, v in rec.items() if k not in ("prediction", "scores", "gen")}
            unit.record.update(rec)
    cards: dict[str, Card] = {}
    for unit in units.values():
        cards.setdefault(_card_key(unit.record), Card(_card_key(unit.record))).units.append(unit)
    for failure in failures:
        fid = str(failure.get("id"))
        if fid in units:
            units[fid].errors.append(failure)
            continue
        m = QUESTION_ID.match(fid)
        key = m.group("image") if m else fid
        cards.setdefault(key, Card(key)).errors.append(failure)
    return list(cards.values())
