"""JSONL records: strict reading with file:line errors, resumable writing, errors file, shards."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stmed.errors import InputError, RecordError
from stmed.records import (ErrorSink, RecordWriter, default_errors_path, read_records, require,
                           scan_output, select, shard_of)

ROOT = Path(__file__).resolve().parents[1]


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines))
    return path


def lines_of(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), f"{path} does not end with a newline: {text[-40:]!r}"
    return [json.loads(ln) for ln in text.splitlines()]


# --- reading -------------------------------------------------------------------------------------

def test_file_input_keeps_fields_location_and_base_dir(tmp_path):
    src = write_lines(tmp_path / "in.jsonl", [
        '{"id": "a", "image": "x.jpg", "extra": [1, 2]}',
        "",
        '{"id": 7, "image": "y.jpg", "nested": {"k": "v"}}',
    ])
    recs = read_records(src)
    assert [r["id"] for r in recs] == ["a", "7"], "numeric ids become strings"
    assert recs[0]["extra"] == [1, 2] and recs[1]["nested"] == {"k": "v"}, "unknown fields are kept"
    assert recs[0].where == f"{src}:1"
    assert recs[1].where == f"{src}:3", "blank lines are skipped but still counted"
    assert recs[0].base_dir == tmp_path.resolve(), "images resolve against the input file's folder"
    derived = recs[1].derive(answer="z")
    assert derived.where == recs[1].where and derived.base_dir == recs[1].base_dir and derived["nested"] == {"k": "v"}


def test_stdin_input(monkeypatch, tmp_path):
    data = b'{"id": "s1", "image": "a.png"}\n{"id": "s2", "image": "b.png", "q": "\xc3\xa9"}\n'
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    monkeypatch.chdir(tmp_path)
    recs = read_records("-")
    assert [r["id"] for r in recs] == ["s1", "s2"]
    assert recs[1]["q"] == "é"
    assert recs[1].where == "<stdin>:2"
    assert recs[0].base_dir == tmp_path, "stdin records resolve images against the working folder"


def test_malformed_line_names_file_and_line(tmp_path):
    src = write_lines(tmp_path / "bad.jsonl", ['{"id": "a"}', '{"id": "b"}', '{"id": "c", oops}', '{"id": "d"}'])
    with pytest.raises(InputError) as e:
        read_records(src)
    msg = str(e.value)
    assert msg.startswith(f"{src}:3: not valid JSON"), msg
    assert "\n" not in msg, "one line"


def test_malformed_stdin_names_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"id": 1}\n[1, 2\n')))
    with pytest.raises(InputError, match=r"^<stdin>:2: not valid JSON"):
        read_records("-")


def test_non_utf8_line(tmp_path):
    src = write_lines(tmp_path / "latin1.jsonl", ['{"id": "a"}', '{"id": "caf\xe9"}'.encode("latin-1")])
    with pytest.raises(InputError, match=rf"^{src}:2: not valid UTF-8"):
        read_records(src)


@pytest.mark.parametrize("line, kind", [("[1, 2]", "list"), ('"text"', "str"), ("42", "int"), ("null", "NoneType")])
def test_non_object_line(tmp_path, line, kind):
    src = write_lines(tmp_path / "in.jsonl", ['{"id": "a"}', line])
    with pytest.raises(InputError, match=rf"^{src}:2: expected a JSON object, got {kind}$"):
        read_records(src)


def test_bad_id_type(tmp_path):
    src = write_lines(tmp_path / "in.jsonl", ['{"id": ["a"]}'])
    with pytest.raises(InputError, match=rf"^{src}:1: 'id' must be"):
        read_records(src)


def test_duplicate_ids_name_both_lines(tmp_path):
    src = write_lines(tmp_path / "in.jsonl", ['{"id": "a"}', '{"id": "b"}', '{"id": "a"}'])
    with pytest.raises(InputError) as e:
        read_records(src)
    assert str(e.value) == f"{src}:3: duplicate id 'a' (first at line 1)"
    # "1" and 1 are the same id once ids are strings
    src2 = write_lines(tmp_path / "in2.jsonl", ['{"id": 1}', '{"id": "1"}'])
    with pytest.raises(InputError, match="duplicate id '1'"):
        read_records(src2)
    assert len(read_records(src, unique_ids=False)) == 3


def test_ids_assigned_when_missing_are_stable(tmp_path):
    src = write_lines(tmp_path / "in.jsonl", ['{"image": "scans/a.jpg"}', '{"image": "scans/a.jpg"}', '{"q": "x"}'])
    ids = [r["id"] for r in read_records(src)]
    assert ids == ["scans/a.jpg:1", "scans/a.jpg:2", "line:3"], ids
    assert len(set(ids)) == 3, "the same image twice still gets two ids"
    assert [r["id"] for r in read_records(src)] == ids, "stable across reads"
    assert "id" not in read_records(src, assign_ids=False)[0]


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="is a folder"):
        read_records(tmp_path)


def test_require_names_record_location(tmp_path):
    src = write_lines(tmp_path / "in.jsonl", ['{"id": "a", "question": ""}', '{"id": "b", "question": 3}'])
    a, b = read_records(src)
    with pytest.raises(RecordError, match=rf"^{src}:1: missing field 'question'$"):
        require(a, "question")
    with pytest.raises(RecordError, match=rf"^{src}:2: field 'question' must be str, got int$"):
        require(b, "question", types={"question": str})


# --- writing and resuming ------------------------------------------------------------------------

def test_writer_to_file_flushes_each_record(tmp_path):
    out = tmp_path / "sub" / "out.jsonl"
    w = RecordWriter(out)
    w.write({"id": "a", "text": "é"})
    # visible to another reader before close: a killed run keeps it
    assert lines_of(out) == [{"id": "a", "text": "é"}]
    w.write({"id": "b"})
    w.close()
    assert [r["id"] for r in lines_of(out)] == ["a", "b"]
    assert w.written == 2


def test_writer_to_stdout(capsys):
    with RecordWriter("-") as w:
        w.write({"id": "x", "v": 1})
        w.write({"id": "y", "v": 2})
    out = capsys.readouterr().out
    assert [json.loads(ln) for ln in out.splitlines()] == [{"id": "x", "v": 1}, {"id": "y", "v": 2}]
    assert w.path is None and w.done == {"x", "y"}


def test_resume_skips_done_keys(tmp_path):
    out = tmp_path / "out.jsonl"
    src = write_lines(tmp_path / "in.jsonl", [json.dumps({"id": f"r{i}"}) for i in range(6)])
    records = read_records(src)
    with RecordWriter(out) as w:
        for r in records[:4]:
            w.write({**r, "done": 1})
    with RecordWriter(out) as w:
        assert w.done == {"r0", "r1", "r2", "r3"}
        pending = [r for r in records if r["id"] not in w.done]
        assert [r["id"] for r in pending] == ["r4", "r5"]
        for r in pending:
            w.write({**r, "done": 2})
    got = lines_of(out)
    assert [r["id"] for r in got] == [f"r{i}" for i in range(6)], "each record exactly once, in order"
    assert [r["done"] for r in got] == [1, 1, 1, 1, 2, 2], "earlier records were not rewritten"


def test_overwrite_starts_fresh(tmp_path):
    out = write_lines(tmp_path / "out.jsonl", ['{"id": "old"}'])
    with RecordWriter(out, overwrite=True) as w:
        assert w.done == set()
        w.write({"id": "new"})
    assert lines_of(out) == [{"id": "new"}]


def test_torn_last_line_is_repaired(tmp_path):
    out = tmp_path / "out.jsonl"
    with RecordWriter(out) as w:
        for i in range(3):
            w.write({"id": f"r{i}", "text": "some generated answer text " * 3})
    full = out.read_bytes()
    out.write_bytes(full[:-25])  # a run killed in the middle of writing r2
    with RecordWriter(out) as w:
        assert w.done == {"r0", "r1"}, "the torn record is not counted as done"
        assert out.read_bytes() == full[: full.rfind(b"\n", 0, len(full) - 1) + 1], "torn bytes dropped"
        w.write({"id": "r2", "text": "redone"})
    got = lines_of(out)
    assert [r["id"] for r in got] == ["r0", "r1", "r2"] and got[2]["text"] == "redone"


def test_torn_first_line_leaves_empty_file(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "r0", "te')
    assert scan_output(out) == set()
    assert out.read_bytes() == b""


def test_complete_last_line_without_newline_is_kept(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": "r0"}\n{"id": "r1"}')
    with RecordWriter(out) as w:
        assert w.done == {"r0", "r1"}
        w.write({"id": "r2"})
    assert out.read_bytes() == b'{"id": "r0"}\n{"id": "r1"}\n{"id": "r2"}\n'


def test_corrupt_line_inside_existing_output_stops(tmp_path):
    out = write_lines(tmp_path / "out.jsonl", ['{"id": "r0"}', "garbage", '{"id": "r2"}'])
    with pytest.raises(InputError, match=rf"^{out}:2: existing output is not valid JSONL; use --overwrite$"):
        RecordWriter(out)


def test_resume_with_another_key(tmp_path):
    out = write_lines(tmp_path / "out.jsonl", ['{"pair": "p1"}', '{"id": "x"}'])
    assert scan_output(out, key="pair") == {"p1"}


# --- errors file ---------------------------------------------------------------------------------

def test_error_sink_file_contents(tmp_path):
    src = write_lines(tmp_path / "in.jsonl", ['{"id": "a", "image": "gone.jpg"}', '{"id": "b"}'])
    a, b = read_records(src)
    path = tmp_path / "out.errors.jsonl"
    sink = ErrorSink(path)
    sink.add(a, f"{a.where}: image not found")
    sink.add(b, "no question", raw="xyz")
    sink.close()
    assert sink.count == 2
    assert lines_of(path) == [
        {"id": "a", "where": f"{src}:1", "error": f"{src}:1: image not found"},
        {"id": "b", "where": f"{src}:2", "error": "no question", "raw": "xyz"},
    ]


def test_error_sink_without_failures_leaves_no_file(tmp_path):
    path = tmp_path / "out.errors.jsonl"
    path.write_text('{"id": "stale"}\n')  # failures of an earlier run are retried, not kept
    ErrorSink(path).close()
    assert not path.exists()


def test_error_sink_to_stderr(capsys):
    sink = ErrorSink(None)
    sink.add({"id": "a"}, "in.jsonl:4: image not found")
    sink.close()
    assert capsys.readouterr().err == "stmed: in.jsonl:4: image not found\n"
    assert sink.count == 1


def test_default_errors_path(tmp_path):
    assert default_errors_path(tmp_path / "q.jsonl") == tmp_path / "q.errors.jsonl"
    assert default_errors_path(tmp_path / "q.txt") == tmp_path / "q.txt.errors.jsonl"
    assert default_errors_path(None) is None and default_errors_path("-") is None


# --- shards and limits ---------------------------------------------------------------------------

def test_shards_cover_every_record_exactly_once(tmp_path):
    src = write_lines(tmp_path / "in.jsonl", [json.dumps({"id": f"img{i}.jpg:q{i % 5}"}) for i in range(300)])
    records = read_records(src)
    parts = [select(records, shard=(i, 3)) for i in range(3)]
    ids = [r["id"] for part in parts for r in part]
    assert sorted(ids) == sorted(r["id"] for r in records), "union is the whole input"
    assert len(ids) == len(set(ids)) == 300, "no record in two shards"
    assert all(60 < len(p) < 140 for p in parts), f"a lopsided split: {[len(p) for p in parts]}"
    for i, part in enumerate(parts):  # input order is kept inside a shard
        assert part == [r for r in records if r in part]
        assert all(shard_of(r["id"], 3) == i for r in part)
    assert select(records, shard=(0, 1)) == records


def test_limit_applies_before_shard(tmp_path):
    src = write_lines(tmp_path / "in.jsonl", [json.dumps({"id": f"r{i}"}) for i in range(50)])
    records = read_records(src)
    assert [r["id"] for r in select(records, limit=7)] == [f"r{i}" for i in range(7)]
    limited = [r for i in range(4) for r in select(records, shard=(i, 4), limit=20)]
    assert sorted(r["id"] for r in limited) == sorted(f"r{i}" for i in range(20))


def test_shard_is_the_same_in_every_python_process():
    """Another process, another hash seed: a split by Python's hash() would differ here."""
    keys = [f"k{i}" for i in range(40)]
    here = [shard_of(k, 7) for k in keys]
    code = "import json,sys; from stmed.records import shard_of; print(json.dumps([shard_of(f'k{i}', 7) for i in range(40)]))"
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
        assert json.loads(out.stdout) == here
    assert len(set(here)) > 3
