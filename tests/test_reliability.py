"""The reliability suite (issue 8): every stage killed with SIGKILL at a random point and rerun
loses nothing and duplicates nothing; a table of bad inputs run through every command gives one
clear line, the right exit code (DESIGN.md section 4), no traceback and no damaged output.

The table of cases lives in ``CASES`` below and, rendered as markdown, in docs/reliability.md;
``test_docs_table_is_in_sync`` fails when the two differ. Regenerate the doc with

    .venv/bin/python tests/test_reliability.py --write-docs
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import EXAMPLE_IMAGES, ROOT, run_stmed  # noqa: E402
from openai_server import serve  # noqa: E402

DOC = ROOT / "docs" / "reliability.md"
# One torch thread per process: on a small, busy CI machine (2 cores, other tests running) the
# default thread pool makes the tiny model many times slower; the behaviour tested is the same.
FAST = {"OMP_NUM_THREADS": "1", "OPENAI_API_KEY": "sk-test-reliability"}


def read_jsonl(path: Path) -> list[dict]:
    """Every line of a stage output, which must be whole JSON lines (never a torn one)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), f"{path} ends mid-line"
    return [json.loads(line) for line in text.splitlines()]


# ================================================================================================
# The table of bad inputs
# ================================================================================================

@dataclass(frozen=True)
class Case:
    name: str  # the row's readable name (also the test id)
    command: str
    exit: int
    sees: str  # what the user sees: the stderr line (exit 2) or the errors-file entry (exit 1)

    @property
    def id(self) -> str:
        return f"{self.command}:{self.name.replace(' ', '-')}"


JSONL_COMMANDS = ("gen-questions", "answer", "judge", "dpo", "eval")

# {in} is the input file, {img} the bad image's path. For exit 2 the line is the whole of stderr
# after "stmed: error: "; for exit 1 it is the "error" of the one entry in the errors file.
CASES = [
    # malformed file: stops before anything is written
    *[Case("malformed JSON line", c, 2, "{in}:2: not valid JSON (Expecting value at column 22)") for c in JSONL_COMMANDS],
    *[Case("non-UTF-8 line", c, 2, "{in}:2: not valid UTF-8 (byte 25)") for c in JSONL_COMMANDS],
    *[Case("zero-byte input file", c, 2, "{in}: no records (empty input)") for c in ("gen-questions", "answer", "judge", "dpo")],
    Case("zero-byte input file", "eval", 2, "{in}: no test items in this file (format jsonl, lang en)"),
    *[Case("empty input (blank lines)", c, 2, "{in}: no records (empty input)")
      for c in ("gen-questions", "answer", "judge", "dpo")],
    Case("empty input (blank lines)", "eval", 2, "{in}: no test items in this file (format jsonl, lang en)"),
    *[Case("duplicate ids", c, 2, "{in}:3: duplicate id 'a' (first at line 1)")
      for c in ("gen-questions", "answer", "judge", "eval")],
    # bad records: reported in the errors file, the rest done, exit 1
    Case("missing field", "gen-questions", 1, "{in}:2: missing field 'image'"),
    Case("missing field", "answer", 1, "{in}:2: missing field 'question'"),
    Case("missing field", "judge", 1, "{in}:2: needs at least 2 answers to judge, has 0"),
    Case("missing field", "dpo", 1, "{in}:2: empty or missing 'chosen'"),
    Case("wrong type", "gen-questions", 1, "{in}:2: field 'image' must be str, got int"),
    Case("wrong type", "answer", 1, "{in}:2: field 'question' must be str, got int"),
    Case("wrong type", "judge", 1, "{in}:2: field 'question' must be str, got int"),
    Case("wrong type", "dpo", 1, "{in}:2: field 'question' must be str, got int"),
    *[Case("missing image", c, 1, "{in}:2: {img}: image not found") for c in ("gen-questions", "answer", "judge", "eval")],
    Case("missing image", "dpo", 1, "{in}:2: image not found: {img}"),
    *[Case("corrupt image", c, 1, "{in}:2: {img}: truncated or corrupt JPEG image") for c in JSONL_COMMANDS],
    *[Case("enormous image", c, 1, "{in}:2: {img}: image is 30000x30000 = 900,000,000 pixels, above the limit")
      for c in JSONL_COMMANDS],
    # a benchmark is read whole: an item that cannot be scored is a malformed benchmark
    Case("missing field", "eval", 2, "{in}:2: missing 'answer'"),
    Case("wrong type", "eval", 2, "{in}:2: 'question' must be a string, got int"),
    # training pairs are examples, not resumable records: a repeated id is trained on twice
    Case("duplicate ids", "dpo", 0, "3 pairs, 0 rejected"),
    # inspect takes one image: any bad image is an input error
    Case("missing image", "inspect", 2, "{img}: image not found"),
    Case("corrupt image", "inspect", 2, "{img}: truncated or corrupt JPEG image"),
    Case("zero-byte input file", "inspect", 2, "{img}: empty file"),
    Case("enormous image", "inspect", 2, "{img}: image is 30000x30000 = 900,000,000 pixels, above the limit"),
]

ORDER = ["malformed JSON line", "non-UTF-8 line", "zero-byte input file", "empty input (blank lines)", "duplicate ids",
         "missing field", "wrong type", "missing image", "corrupt image", "enormous image"]
CASES.sort(key=lambda c: (ORDER.index(c.name), [*JSONL_COMMANDS, "inspect"].index(c.command)))

MEANING = {0: "done", 1: "finished, bad record in the errors file", 2: "stopped, nothing written"}


def markdown_table() -> str:
    rows = ["| case | command | exit | what the user sees |", "|---|---|---|---|"]
    for c in CASES:
        sees = c.sees.replace("{in}", "IN").replace("{img}", "IMG").replace("|", "\\|")
        where = {0: "stderr: `stmed: ", 1: "errors file: `", 2: "stderr: `stmed: error: "}[c.exit]
        shown = f"{where}{sees}`"
        rows.append(f"| {c.name} | {c.command} | {c.exit} ({MEANING[c.exit]}) | {shown} |")
    return "\n".join(rows) + "\n"


BEGIN, END = "<!-- cases: begin (generated from tests/test_reliability.py) -->", "<!-- cases: end -->"


def doc_with_table(doc: str) -> str:
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{markdown_table()}{END}{tail}"


def test_docs_table_is_in_sync():
    doc = DOC.read_text(encoding="utf-8")
    assert doc == doc_with_table(doc), "docs/reliability.md is stale: run .venv/bin/python tests/test_reliability.py --write-docs"


def test_table_covers_every_case_for_every_command():
    for cmd in JSONL_COMMANDS:
        assert {c.name for c in CASES if c.command == cmd} == set(ORDER), cmd
    assert len({c.id for c in CASES}) == len(CASES), "a case is listed twice"


# --- inputs --------------------------------------------------------------------------------------

def huge_png(path: Path, side: int = 30000) -> None:
    """A tiny PNG whose header declares side x side pixels: a decompression bomb in 70 bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    struct.pack_into(">II", png, 16, side, side)  # IHDR data starts after signature(8)+length(4)+type(4)
    struct.pack_into(">I", png, 29, zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(png))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images")
    jpgs = sorted(EXAMPLE_IMAGES.glob("*.jpg"))
    shutil.copy(jpgs[0], d / "good-a.jpg")
    shutil.copy(jpgs[1], d / "good-c.jpg")
    data = jpgs[2].read_bytes()
    (d / "corrupt.jpg").write_bytes(data[: len(data) // 2])
    huge_png(d / "huge.png")
    (d / "zero.jpg").write_bytes(b"")
    return {"a": d / "good-a.jpg", "c": d / "good-c.jpg", "corrupt": d / "corrupt.jpg", "huge": d / "huge.png",
            "zero": d / "zero.jpg", "missing": d / "not-there.jpg"}


def good(command: str, rid: str, image: Path | str) -> dict:
    rec = {"id": rid, "image": str(image)}
    if command != "gen-questions":
        rec["question"] = "What organ is shown?"
    if command == "judge":
        rec["answers"] = [{"text": "The liver, which is enlarged.", "seed": 40}, {"text": "Liver.", "seed": 42}]
    if command == "dpo":
        rec.update(chosen="The liver, which is enlarged.", rejected="A normal chest.")
    if command == "eval":
        rec.update(answer="liver", answer_type="OPEN")
    return rec


MISSING_FIELD = {"gen-questions": "image", "answer": "question", "judge": "answers", "dpo": "chosen", "eval": "answer"}
WRONG_TYPE = {"gen-questions": ("image", 5), "answer": ("question", 5), "judge": ("question", 5), "dpo": ("question", 5),
              "eval": ("question", 5)}


def write_input(case: Case, folder: Path, images: dict[str, Path]) -> tuple[Path, Path | None]:
    """The case's input file: a good record, the bad line, another good record; and the bad image."""
    cmd, name = case.command, case.name
    src = folder / "in.jsonl"
    a, c = good(cmd, "a", images["a"]), good(cmd, "c", images["c"])
    bad_image = {"missing image": "missing", "corrupt image": "corrupt", "enormous image": "huge"}.get(name)
    line = lambda r: json.dumps(r).encode() + b"\n"  # noqa: E731
    if name == "malformed JSON line":
        body = line(a) + b'{"id": "b", "image": \n' + line(c)
    elif name == "non-UTF-8 line":
        body = line(a) + b'{"id": "b", "question": "\xff\xfe?"}\n' + line(c)
    elif name == "zero-byte input file":
        body = b""
    elif name == "empty input (blank lines)":
        body = b"\n   \n\n"
    elif name == "duplicate ids":
        body = line(a) + line(good(cmd, "b", images["c"])) + line(good(cmd, "a", images["c"]))
    elif name == "missing field":
        b = good(cmd, "b", images["c"])
        del b[MISSING_FIELD[cmd]]
        body = line(a) + line(b) + line(c)
    elif name == "wrong type":
        key, value = WRONG_TYPE[cmd]
        body = line(a) + line({**good(cmd, "b", images["c"]), key: value}) + line(c)
    else:
        body = line(a) + line(good(cmd, "b", images[bad_image])) + line(c)
    src.write_bytes(body)
    return src, images[bad_image] if bad_image else None


@pytest.fixture(scope="module")
def server():
    with serve() as srv:
        yield srv


def argv(command: str, src: Path, out: Path, tiny: Path, base_url: str) -> list:
    remote = ("--engine", "openai", "--base-url", base_url)
    if command == "gen-questions":  # the remote policy needs the instruct strategy
        return ["gen-questions", src, "-m", "policy", *remote, "--strategy", "instruct", "-n", "1", "-o", out]
    if command == "answer":
        return ["answer", src, "-m", "policy", *remote, "-o", out]
    if command == "judge":
        return ["judge", src, "--backend", *remote[1:], "--judge-model", "gpt-4o", "--no-cache", "-o", out]
    if command == "eval":
        return ["eval", "--bench", "jsonl", "--data", src, "-m", "policy", *remote, "--bootstrap", "0", "-o", out]
    if command == "dpo":
        return ["dpo", src, "-m", tiny, "-o", out, "--max-steps", "1", "--batch-size", "1", "--grad-accum", "1",
                "--lora-r", "4", "--lora-alpha", "8"]
    raise AssertionError(command)


EARLIER = {"id": "earlier", "note": "a record from an earlier run"}


@pytest.mark.parametrize("case", [c for c in CASES if c.command != "inspect"], ids=lambda c: c.id)
def test_bad_input(case: Case, images, server, tiny_model, tmp_path):
    src, bad_image = write_input(case, tmp_path, images)
    sees = case.sees.replace("{in}", str(src)).replace("{img}", str(bad_image))
    if case.command == "dpo":  # a folder: a run that stops must not even create it
        out, existing, errors_file = tmp_path / "dpo", None, tmp_path / "dpo" / "errors.jsonl"
    else:
        out = existing = tmp_path / "out.jsonl"
        existing.write_text(json.dumps(EARLIER) + "\n")  # an earlier run's output: never damaged
        errors_file = tmp_path / "out.errors.jsonl"
    before = existing.read_bytes() if existing else None

    proc = run_stmed(*argv(case.command, src, out, tiny_model, server.base_url), env={**FAST, "STMED_HOME": str(tmp_path)})

    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == case.exit, proc.stderr
    if case.exit == 2:
        assert proc.stderr.splitlines() == [f"stmed: error: {sees}"], "one clear line naming what is wrong"
        assert existing is None or existing.read_bytes() == before, "a run that stopped changed an existing output"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            p.name for p in (src, existing) if p is not None), "a run that stopped wrote something"
        return
    if case.exit == 1:
        errors = read_jsonl(errors_file)
        assert len(errors) == 1, errors
        assert errors[0]["id"] == "b" and errors[0]["where"] == f"{src}:2", errors[0]
        assert errors[0]["error"].startswith(sees), errors[0]["error"]
        assert f"1 failed record(s) listed in {errors_file}" in proc.stderr, proc.stderr
    if case.exit == 0:
        assert f"stmed: {sees}" in proc.stderr.splitlines(), proc.stderr
        assert not errors_file.exists()
    if case.command == "dpo":
        meta = json.loads((out / "_meta.json").read_text())
        assert meta["data"]["pairs"] == (2 if case.exit == 1 else 3), meta["data"]
        assert (out / "adapter_model.safetensors").is_file() or any(out.glob("**/adapter_model.safetensors"))
        return
    records = read_jsonl(out)
    ids = [r["id"] for r in records]
    assert ids[0] == "earlier" and len(ids) == len(set(ids)), ids
    done = {"a", "c"} if case.command != "gen-questions" else {"a:q0", "c:q0"}
    assert set(ids[1:]) == done, "the good records around the bad one were all done"


INSPECT = [c for c in CASES if c.command == "inspect"]


@pytest.mark.parametrize("case", INSPECT, ids=lambda c: c.id)
def test_bad_image_for_inspect(case: Case, images, tiny_model):
    image = images[{"missing image": "missing", "corrupt image": "corrupt", "zero-byte input file": "zero",
                    "enormous image": "huge"}[case.name]]
    proc = run_stmed("inspect", image, "-m", tiny_model, "--device", "cpu", env=FAST)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode == case.exit
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("stmed: error: " + case.sees.replace("{img}", str(image))), proc.stderr



# ================================================================================================
# SIGKILL at a random point, then the same command again
# ================================================================================================

KILL_SEED = 8  # the kill points are random but reproducible; change it to explore others


def stage_run(stage: str, folder: Path, tiny: Path, base_url: str) -> tuple[list, set[str], bool]:
    """(argv without -o, every id the output must hold, whether the output is byte-deterministic);
    each run's output folder also holds its judge cache (--cache {dir})."""
    jpgs = sorted(EXAMPLE_IMAGES.glob("*.jpg"))
    src = folder / "in.jsonl"
    hf = ("-m", tiny, "--device", "cpu", "--batch-size", "2", "--max-new-tokens", "8")
    if stage == "gen-questions":  # 8 images a unit of work at batch 2: 8 units
        rows = [{"id": f"img{i:03d}", "image": str(jpgs[i % len(jpgs)])} for i in range(64)]
        args, ids = ["gen-questions", src, *hf, "-n", "2", "--describe-max-new-tokens", "8"], \
            {f"img{i:03d}:q{k}" for i in range(64) for k in range(2)}
    elif stage == "answer":
        rows = [{"id": f"q{i:03d}", "image": str(jpgs[i % len(jpgs)]), "question": f"What does region {i} show?"}
                for i in range(96)]
        args, ids = ["answer", src, *hf], {r["id"] for r in rows}
    elif stage == "eval":
        rows = [{"id": f"e{i:03d}", "image": str(jpgs[i % len(jpgs)]), "question": f"Is region {i} normal?",
                 "answer": "yes" if i % 3 else "no"} for i in range(160)]
        args, ids = ["eval", "--bench", "jsonl", "--data", src, *hf, "--bootstrap", "0"], {r["id"] for r in rows}
    elif stage == "judge":  # 40 records, both orders each, 200 ms a reply, 4 in flight: about 4 s
        from judge_data import make_records

        make_records(src, 40, seed=1)
        return (["judge", src, "--backend", "openai", "--base-url", base_url, "--judge-model", "gpt-4o",
                 "--concurrency", "4", "--cache", "{dir}/cache.sqlite"], {f"q{i}" for i in range(40)}, False)
    else:
        raise AssertionError(stage)
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return args, ids, True


def judged(out: Path) -> list[dict]:
    """A judge run's records: pairs and skipped ones together (each input record lands in one)."""
    return read_jsonl(out) + read_jsonl(out.with_name(out.stem + ".skipped.jsonl"))


@pytest.fixture(scope="module")
def slow_server():
    with serve(delay=0.2) as srv:
        yield srv


@pytest.mark.parametrize("stage", ["gen-questions", "answer", "judge", "eval"])
def test_sigkill_at_a_random_point_then_rerun(stage, tiny_model, slow_server, tmp_path):
    args, ids, deterministic = stage_run(stage, tmp_path, tiny_model, slow_server.base_url)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **FAST, "STMED_HOME": str(tmp_path)}
    ref_out, out = tmp_path / "reference" / "out.jsonl", tmp_path / "killed" / "out.jsonl"
    argv_for = lambda o: [str(a).replace("{dir}", str(o.parent)) for a in args] + ["-o", str(o)]  # noqa: E731
    for o in (ref_out, out):
        o.parent.mkdir()
    # The uninterrupted reference runs beside the killed run (one torch thread each, two cores).
    python = [sys.executable, "-m", "stmed.cli"]
    reference = subprocess.Popen(python + argv_for(ref_out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
    rng = random.Random(f"{KILL_SEED}:{stage}")
    after_lines, extra = rng.randint(1, len(ids) // 3), rng.uniform(0.0, 0.25)
    killed = subprocess.Popen(python + argv_for(out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not (out.exists() and out.read_bytes().count(b"\n") >= after_lines):
            assert killed.poll() is None, f"{stage} ended before the kill: {killed.stderr.read().decode()}"
            assert time.monotonic() < deadline, f"{stage}: fewer than {after_lines} lines after 120 s"
            time.sleep(0.005)
        time.sleep(extra)
        assert killed.poll() is None, f"{stage} finished before the kill ({after_lines} lines + {extra:.2f} s)"
    finally:
        killed.kill()
        killed.wait()
    assert killed.returncode == -signal.SIGKILL
    before = out.read_bytes()
    whole = before[: before.rfind(b"\n") + 1]
    kept = len(judged(out) if stage == "judge" else whole.splitlines())
    assert 0 < kept < len(ids), f"the kill at {kept} lines tests no resume"

    # Each record is one write + flush, so a kill rarely tears a line by chance; tear one here, as a
    # kill in the middle of a write would: the rerun must drop it and redo that record.
    last = whole.splitlines()[-1]
    with open(out, "ab") as f:
        f.write(last[: len(last) // 2])
    if os.environ.get("STMED_KILL_VERBOSE"):
        print(f"\n{stage}: killed at {kept}/{len(ids)} records, {len(before) - len(whole)} bytes torn by the kill itself")
    rerun = run_stmed(*argv_for(out), env={**FAST, "STMED_HOME": str(tmp_path)}, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "Traceback" not in rerun.stderr
    assert reference.wait(timeout=120) == 0, reference.stderr.read().decode()

    records = judged(out) if stage == "judge" else read_jsonl(out)  # every line whole, valid JSON
    got = [r["id"] for r in records]
    assert len(got) == len(set(got)), f"duplicated after resume: {[i for i in got if got.count(i) > 1][:5]}"
    assert set(got) == ids, f"lost after resume: {sorted(ids - set(got))[:5]}"
    assert out.read_bytes().startswith(whole), "records finished before the kill were rewritten (or the torn line kept)"
    if deterministic:  # seeded sampling and greedy decoding: the very bytes of an uninterrupted run
        assert out.read_bytes() == ref_out.read_bytes(), "resumed output differs from an uninterrupted run"
    else:  # the judge writes as replies arrive: the same verdict for every record, in any order
        ref = {r["id"]: (r.get("chosen"), r.get("rejected"), r.get("skip")) for r in judged(ref_out)}
        assert {r["id"]: (r.get("chosen"), r.get("rejected"), r.get("skip")) for r in records} == ref


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-docs"]:
        DOC.write_text(doc_with_table(DOC.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"wrote {DOC}")
    else:
        print(markdown_table(), end="")
