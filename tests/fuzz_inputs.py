"""Malformed inputs for the fuzz suite (tests/test_fuzz.py): good records of every stage, and
hypothesis strategies that break them the ways files from other tools and hand edits do.

Each kind of broken input (FILE_KINDS, named as in docs/reliability.md's fuzz table) is a
strategy for the bytes of one input file: a good record, the broken line 2, another good record.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import strategies as st

# --- good records, the shapes the stages write -----------------------------------------------------


def good(command: str, rid: str, image: str) -> dict:
    """A record ``command`` reads, as the stage before it writes one (with every field it owns)."""
    base = {"id": rid, "image": image}
    if command == "gen-questions":
        return base
    q = {**base, "image_id": "img", "question": "What organ is shown?", "description": "A CT of the abdomen.",
         "gen": {"model": "tiny", "strategy": "vuser", "temperature": 1.0, "top_k": 50, "top_p": 0.95, "seed": 3}}
    if command == "answer":
        return q
    answers = [{"text": "The liver, which is enlarged.", "seed": 40, "ids": [5, 6, 7]},
               {"text": "Liver.", "seed": 42, "ids": [8]}]
    if command == "judge":
        return {**q, "answers": answers}
    pair = {**q, "answers": answers, "chosen": "The liver, which is enlarged.", "rejected": "Liver.",
            "chosen_ids": [5, 6, 7], "rejected_ids": [8], "margin": 3.5,
            "judge": {"model": "gpt-4o", "scores": [8, 3], "swapped_scores": [3, 8], "raw": ["8 3", "3 8"]}}
    if command in ("dpo", "view"):
        return pair
    if command == "sft":
        return {"id": rid, "image": image, "conversations": [
            {"from": "human", "value": "<image>\nWhat organ is shown?"}, {"from": "gpt", "value": "The liver."},
            {"from": "human", "value": "Is it enlarged?"}, {"from": "gpt", "value": "Yes."}]}
    if command == "eval":
        return {**base, "question": "Is the liver enlarged?", "answer": "yes", "answer_type": "CLOSED"}
    if command == "eval --predictions":
        return {**base, "question": "What organ is shown?", "answer": "liver", "answer_type": "OPEN",
                "prediction": "The liver.", "bench": "jsonl"}
    raise AssertionError(command)


def summary(name: str) -> dict:
    """An ``stmed eval --summary`` file, what ``stmed report`` reads."""
    entry = lambda v: {"value": v, "ci95": [v - 5, v + 5], "n": 10}  # noqa: E731
    return {"name": name, "benchmark": {"bench": "vqa-rad", "lang": "en", "items": 20},
            "metrics": {"open_recall": entry(30.0), "closed_accuracy": entry(60.0), "open_f1": entry(20.0)}}


# --- the field paths a stage knows, for "wrong type" mutations -----------------------------------

def paths(obj, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a JSON value ((\"judge\", \"scores\", 0), ...), the record's own fields first."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out += paths(v, (*prefix, k))
    return out


def set_path(obj, path: tuple, value):
    obj = json.loads(json.dumps(obj))
    target = obj
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return obj


def del_path(obj, path: tuple):
    obj = json.loads(json.dumps(obj))
    target = obj
    for k in path[:-1]:
        target = target[k]
    del target[path[-1]]
    return obj


scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([-1, 0, -(10**30), 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["", " ", "\x00", "..", "../../etc/passwd", "/", "nan", "1e999", "\u202e"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)


RECORD_KINDS = ["wrong type", "missing field", "extra field", "not an object", "several at once"]
PATH_KINDS = ["escapes", "absolute outside", "symlink", "folder", "missing", "empty string", "nul byte", "very long"]
BYTE_KINDS = ["non-UTF-8", "NUL bytes", "lone surrogate", "torn line", "not JSON"]
LAYOUT_KINDS = ["BOM", "CRLF", "blank lines", "no final newline", "one huge line"]
# every kind of input file, with how many examples the default run draws of it (fixed ones need one)
FILE_KINDS = {**{k: 8 for k in RECORD_KINDS}, **{f"image path: {k}": 1 for k in PATH_KINDS},
              **{f"bytes: {k}": 3 if k == "not JSON" else 1 for k in BYTE_KINDS},
              **{f"layout: {k}": 1 for k in LAYOUT_KINDS}, "duplicate ids": 2}


@st.composite
def broken_record(draw, base: dict, kind: str):
    """The good record ``base`` with one or more of its fields broken (or not an object at all)."""
    if kind == "not an object":
        return draw(st.one_of(scalars, st.lists(scalars, max_size=3)))
    rec = base
    steps = draw(st.integers(2, 4)) if kind == "several at once" else 1
    for _ in range(steps):
        op = kind if kind != "several at once" else draw(st.sampled_from(["wrong type", "missing field", "extra field"]))
        known = paths(rec)
        if op == "wrong type" and known:
            rec = set_path(rec, draw(st.sampled_from(known)), draw(values))
        elif op == "missing field" and known:
            rec = del_path(rec, draw(st.sampled_from(known)))
        else:
            rec = {**rec, draw(st.text(min_size=1, max_size=8)): draw(values)}
    return rec


def line(record) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"


@st.composite
def input_files(draw, command: str, images: dict[str, str], kind: str) -> bytes:
    """A whole input file of ``kind`` (a key of FILE_KINDS): good record a, a broken line 2 (or a
    broken layout), good record c."""
    a, b, c = (good(command, rid, images["c" if rid == "b" else rid]) for rid in "abc")
    if kind in RECORD_KINDS:
        return line(a) + line(draw(broken_record(b, kind))) + line(c)
    group, _, which = kind.partition(": ")
    if group == "image path":
        image = {"escapes": "../" * 12 + "etc/hostname", "absolute outside": "/etc/hostname",
                 "symlink": images["link"], "folder": images["dir"], "missing": images["missing"], "empty string": "",
                 "nul byte": "a\x00b.jpg", "very long": "x" * 5000 + ".jpg"}[which]
        return line(a) + line({**b, "image": image}) + line(c)
    if group == "bytes":
        raw = {"non-UTF-8": b'{"id": "b", "q": "\xff\xfe"}', "NUL bytes": b"\x00\x00{}",
               "lone surrogate": b'{"id": "b", "image": "\\ud800"}', "torn line": line(b)[: len(line(b)) // 2],
               "not JSON": draw(st.binary(min_size=1, max_size=40)).replace(b"\n", b" ")}[which]
        return line(a) + raw + b"\n" + line(c)
    if group == "layout":
        if which == "BOM":
            return b"\xef\xbb\xbf" + line(a) + line(b) + line(c)
        if which == "CRLF":
            return (line(a) + line(b) + line(c)).replace(b"\n", b"\r\n")
        if which == "blank lines":
            return b"\n \n" + line(a) + b"\t\n" + line(b) + b"\n\n" + line(c) + b"\n"
        if which == "no final newline":
            return line(a) + line(b) + line(c)[:-1]
        return line(a) + line({**b, "note": "x" * (10 << 20)}) + line(c)  # a 10 MB field in a good record
    assert kind == "duplicate ids", kind
    return line(a) + line({**b, "id": draw(st.sampled_from(["a", "c"]))}) + line(c)


def image_dir_entries(root: Path, good_image: Path) -> dict[str, str]:
    """The images a fuzz run points at: two good ones, a symlink to one, a folder, a missing path."""
    import shutil

    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(good_image, root / "a.jpg")
    shutil.copy(good_image, root / "c.jpg")
    link = root / "link.jpg"
    if not link.exists():
        link.symlink_to(root / "a.jpg")
    (root / "folder.jpg").mkdir(exist_ok=True)
    return {"a": str(root / "a.jpg"), "c": str(root / "c.jpg"), "link": str(link), "dir": str(root / "folder.jpg"),
            "missing": str(root / "missing.jpg")}
