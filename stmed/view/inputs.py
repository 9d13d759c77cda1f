"""What ``stmed view`` was given: record files of any stage, and training runs.

A path is a training run when it is a folder holding ``train_log.jsonl`` (what ``dpo`` and
``sft`` write) or a JSONL file whose rows all carry ``step`` and none an ``id``; every other
file is records. Files are read strictly (``records.read_records``): a malformed line stops the
command with file:line before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from stmed.errors import InputError
from stmed.records import STDIO, Record, read_records

TRAIN_LOG = "train_log.jsonl"


@dataclass
class Source:
    """One records file: its name as the page shows it, and its records."""

    name: str
    path: Path | None  # None for stdin
    records: list[Record]


@dataclass
class Run:
    """One training run: its log rows and, when beside it, its ``_meta.json``."""

    path: Path  # the folder, or the log file
    rows: list[dict]
    meta: dict = field(default_factory=dict)
    label: str = ""


@dataclass
class Inputs:
    sources: list[Source] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)  # files with no records, named in the summary

    @property
    def records(self) -> int:
        return sum(len(s.records) for s in self.sources)


def _is_train_log(records: list[Record]) -> bool:
    return bool(records) and all("step" in r and "id" not in r and "question" not in r for r in records)


def _read_meta(folder: Path) -> dict:
    p = folder / "_meta.json"
    if not p.is_file():
        return {}
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{p}: not valid JSON ({e})") from None
    return meta if isinstance(meta, dict) else {}


def read_inputs(paths: list[str]) -> Inputs:
    """Every path read and sorted into record sources and training runs, or one InputError."""
    if not paths:
        raise InputError("give at least one JSONL file or training folder")
    if sum(p == STDIO for p in paths) > 1:
        raise InputError("stdin (-) can be given only once")
    out = Inputs()
    for raw in paths:
        p = Path(raw)
        if raw != STDIO and p.is_dir():
            log = p / TRAIN_LOG
            if not log.is_file():
                raise InputError(f"{raw}: folder without {TRAIN_LOG} (expected a dpo or sft output folder)")
            out.runs.append(Run(p, _rows(log), _read_meta(p)))
            continue
        records = read_records(raw, assign_ids=False, unique_ids=False)
        if not records:  # a stage that had nothing to write (no skips, no failures): nothing to show
            out.empty.append("<stdin>" if raw == STDIO else raw)
            continue
        if p.name == TRAIN_LOG or _is_train_log(records):
            out.runs.append(Run(p, [dict(r) for r in records], _read_meta(p.parent) if raw != STDIO else {}))
            continue
        for r in records:
            if "id" not in r:
                r["id"] = f"{r.get('image', 'line')}:{r.where.rsplit(':', 1)[-1]}"  # as read_records names them
            r["id"] = str(r["id"])
        out.sources.append(Source("<stdin>" if raw == STDIO else raw, None if raw == STDIO else p, records))
    if not out.sources and not out.runs:
        raise InputError(f"{', '.join(out.empty)}: no records (empty input)")
    _label_runs(out.runs)
    return out


def _rows(log: Path) -> list[dict]:
    return [dict(r) for r in read_records(log, assign_ids=False, unique_ids=False)]


def _label_runs(runs: list[Run]) -> None:
    """Each run named by the shortest tail of its folder path that tells it from the others
    (``round-1/dpo`` and ``round-2/dpo``, not ``dpo`` twice)."""
    folders = [(r.path if r.path.is_dir() else r.path.parent).resolve() for r in runs]
    for depth in range(1, 8):
        labels = ["/".join(f.parts[max(1, len(f.parts) - depth):]) or f.name for f in folders]
        if len(set(labels)) == len(labels) or depth == 7:
            break
    for i, (run, label) in enumerate(zip(runs, labels)):
        run.label = label if labels.count(label) == 1 else f"{label} ({i + 1})"
