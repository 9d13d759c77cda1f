"""JSONL records in and out.

Reading is strict: the whole input is checked before a stage writes anything, so a malformed
file stops with one line naming file:line. Writing is resumable: an existing output file is
scanned for the keys it already holds (a torn last line from a killed run is repaired), and
every record is written as one line and flushed, so a killed run loses at most what was in flight.
What a stage made of one record is an ``Outcome`` (done, skipped or failed), which the stage
runner (stmed.stages.runner) writes where it belongs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from stmed.errors import InputError

STDIO = "-"


class Record(dict):
    """A JSON object from an input file; ``where`` is its "file:line" for error messages."""

    where: str = "?"
    base_dir: Path | None = None  # folder that relative image paths resolve against

    @classmethod
    def at(cls, data: dict, where: str, base_dir: Path | None = None) -> Record:
        rec = cls(data)
        rec.where, rec.base_dir = where, base_dir
        return rec

    def derive(self, **fields: Any) -> Record:
        """A copy with ``fields`` added, keeping every other key and the source location."""
        return Record.at({**self, **fields}, self.where, self.base_dir)


def dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(", ", ": "))


def _input_name(path: str | Path) -> str:
    return "<stdin>" if str(path) == STDIO else str(path)


def read_records(path: str | Path, *, assign_ids: bool = True, unique_ids: bool = True) -> list[Record]:
    """Read every record of a JSONL file (or ``-`` for stdin), or raise one InputError.

    Blank lines are skipped. A record without ``id`` gets one from its image path and line
    number, so ids are stable across runs of the same file.
    """
    name = _input_name(path)
    if str(path) == STDIO:
        raw, base = sys.stdin.buffer.read(), Path.cwd()
    else:
        p = Path(path)
        if not p.exists():
            raise InputError(f"{name}: no such file")
        if p.is_dir():
            raise InputError(f"{name}: is a folder, expected a JSONL file")
        raw, base = p.read_bytes(), p.resolve().parent
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark, as some Windows editors write
    records: list[Record] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{where}: not valid UTF-8 (byte {e.start})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if "\\u" in text and not _is_unicode(data):
            raise InputError(f"{where}: not valid Unicode (a \\uD800-\\uDFFF escape without its pair)")
        if "id" not in data and assign_ids:
            data = {"id": f"{data.get('image', 'line')}:{lineno}", **data}
        if "id" in data:
            if not isinstance(data["id"], (str, int)):
                raise InputError(f"{where}: 'id' must be a string or number")
            data["id"] = str(data["id"])
            if unique_ids:
                if data["id"] in first_line:
                    raise InputError(
                        f"{where}: duplicate id {data['id']!r} (first at line {first_line[data['id']]})"
                    )
                first_line[data["id"]] = lineno
        records.append(Record.at(data, where, base))
    return records


def _is_unicode(data: dict) -> bool:
    """Whether every string in a parsed line is real text: JSON's \\u escapes can spell half a
    surrogate pair, which no file, terminal or later stage can write."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def require(record: Record, *fields: str, types: dict[str, type] | None = None) -> None:
    """Raise RecordError naming the record's file:line when a field is missing or mistyped."""
    from stmed.errors import RecordError

    for f in fields:
        value = record.get(f)
        if value is None or value == "":
            raise RecordError(f"{record.where}: missing field {f!r}")
        want = (types or {}).get(f, None)
        if want is not None and not isinstance(value, want):
            raise RecordError(f"{record.where}: field {f!r} must be {want.__name__}, got {type(value).__name__}")


def answer_texts(record: Record) -> list[str]:
    """``answers`` as strings or {"text"} objects (what ``stmed answer`` writes), or
    answer_1..answer_k / answer1..answerk fields; RecordError for any other shape."""
    from stmed.errors import RecordError

    raw = record.get("answers")
    if raw is None:
        raw = [record[k] for k in (f"answer_{i}" for i in range(1, 10)) if k in record] or \
              [record[k] for k in (f"answer{i}" for i in range(1, 10)) if k in record]
    if not isinstance(raw, list):
        raise RecordError(f"{record.where}: 'answers' must be a list")
    out = []
    for a in raw:
        text = a.get("text") if isinstance(a, dict) else a
        if not isinstance(text, str):
            raise RecordError(f"{record.where}: every answer must be a string or an object with 'text'")
        out.append(text)
    return out


@dataclass
class Outcome:
    """What a stage made of one unit of its input.

    ``done``: ``records`` go to the output. ``skipped``: a decision not to make a record (the
    judge's ties), ``records`` go to the skipped file with their reason. ``failed``: ``records``
    holds the input record, ``error`` the one line naming its file:line, ``raw`` any replies
    that could not be parsed."""

    kind: str  # done | skipped | failed
    records: list[dict]
    error: str | None = None
    raw: list[str] | None = None
    tokens: int = 0  # tokens generated for it, for the rate in the summary

    @property
    def record(self) -> dict:
        return self.records[0]

    @classmethod
    def done(cls, *records: dict, tokens: int = 0) -> Outcome:
        return cls("done", list(records), tokens=tokens)

    @classmethod
    def failed(cls, record, error: str, raw: list[str] | None = None) -> Outcome:
        where = getattr(record, "where", "?")
        return cls("failed", [record], error if error.startswith(where) else f"{where}: {error}", raw)


def scan_output(path: Path, key: str = "id", *, repair: bool = True) -> set[str]:
    """Keys already in an output file; repairs a torn last line left by a killed run (with
    ``repair=False`` only reads, leaving a torn last line out, for a process that does not own the file)."""
    if not path.exists() or path.stat().st_size == 0:
        return set()
    with open(path, "rb+" if repair else "rb") as f:
        data = f.read()
        if not repair and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
        elif not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            try:
                json.loads(tail)
                f.write(b"\n")  # complete record that only lacks its newline
                data += b"\n"
            except ValueError:
                f.truncate(cut)  # half-written record: drop it, it will be redone
                data = data[:cut]
    keys: set[str] = set()
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise InputError(f"{path}:{lineno}: existing output is not valid JSONL; use --overwrite") from None
        if isinstance(rec, dict) and key in rec:
            keys.add(str(rec[key]))
    return keys


class RecordWriter:
    """Writes one JSON line per record to a file (resumable) or stdout, flushing each one."""

    def __init__(self, path: str | Path | None, *, overwrite: bool = False, key: str = "id"):
        self.path = None if path in (None, STDIO) else Path(path)
        self.key = key
        self.done: set[str] = set()
        self.written = 0
        self._fh: IO[str]
        if self.path is None:
            self._fh = sys.stdout
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite and self.path.exists():
            self.path.unlink()
        self.done = scan_output(self.path, key)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._fh.write(dumps(record) + "\n")
        self._fh.flush()
        self.written += 1
        if self.key in record:
            self.done.add(str(record[self.key]))

    def close(self) -> None:
        if self._fh is not sys.stdout:
            self._fh.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    """Write a small JSON artefact (summary, _meta, state) whole or not at all: a kill mid-write
    leaves the previous version, never a torn file that a later run would fail to read."""
    import os

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def sibling_path(output: str | Path | None, suffix: str) -> Path | None:
    """``q.jsonl`` -> ``q<suffix>`` beside it (``q.txt`` -> ``q.txt<suffix>``); None for stdout."""
    if output in (None, STDIO):
        return None
    out = Path(output)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + suffix)


def default_errors_path(output: str | Path | None) -> Path | None:
    return sibling_path(output, ".errors.jsonl")


class ErrorSink:
    """Bad records: one JSON line each in the errors file, or one human line on stderr.

    The file holds the failures of the latest run: failed records are retried on resume,
    so an older failure either succeeds now or is written again.
    """

    def __init__(self, path: str | Path | None):
        self.path = None if path in (None, STDIO) else Path(path)
        self.count = 0
        self._fh: IO[str] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w", encoding="utf-8")

    def add(self, record: dict, message: str, **extra: Any) -> None:
        self.count += 1
        where = getattr(record, "where", "?")
        if self._fh is None:
            print(f"stmed: {message}", file=sys.stderr)
            return
        entry = {"id": record.get("id"), "where": where, "error": message, **extra}
        self._fh.write(dumps(entry) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            if self.count == 0 and self.path is not None:
                self.path.unlink(missing_ok=True)  # no failures: leave no empty file behind


def shard_of(key: str, n: int) -> int:
    """A stable shard number for a key (the same on every machine and Python run)."""
    import hashlib

    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % n


def select(records: list[Record], *, shard: tuple[int, int] | None = None, limit: int | None = None) -> list[Record]:
    """``--limit`` first (the first N input records), then this process's ``--shard I/N``."""
    if limit is not None:
        records = records[:limit]
    if shard is not None:
        i, n = shard
        records = [r for r in records if shard_of(str(r.get("id")), n) == i]
    return records
