"""gen-questions and answer through the real command line on the tiny model: pipes, resume after
SIGKILL, shards, seeds, bad records and bad input."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_stmed

STMED = f"{shlex.quote(sys.executable)} -m stmed.cli"
TINY_GEN = ("--device", "cpu", "--max-new-tokens", "8")
N_QUESTIONS = 140  # three of answer's 64-question chunks: a kill lands between writes


def read_jsonl(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), f"{path} ends mid-line"
    return [json.loads(line) for line in text.splitlines()]


def vqa_rad_images(bench_data: Path, k: int) -> list[Path]:
    return sorted((bench_data / "vqa_rad" / "images").glob("*.jpg"))[:k]


@pytest.fixture(scope="module")
def image_dir(bench_data, tmp_path_factory) -> Path:
    """Three real VQA-RAD images, one in a subfolder (directories are walked recursively)."""
    d = tmp_path_factory.mktemp("unlabeled")
    a, b, c = vqa_rad_images(bench_data, 3)
    shutil.copy(a, d / a.name)
    shutil.copy(b, d / b.name)
    (d / "more").mkdir()
    shutil.copy(c, d / "more" / c.name)
    (d / "more" / "notes.txt").write_text("not an image\n")
    return d


@pytest.fixture(scope="module")
def question_file(bench_data, tmp_path_factory) -> Path:
    """Question records with relative image paths (resolved against this file's folder) and extra fields."""
    d = tmp_path_factory.mktemp("questions")
    (d / "imgs").mkdir()
    images = vqa_rad_images(bench_data, 6)
    for p in images:
        shutil.copy(p, d / "imgs" / p.name)
    path = d / "questions.jsonl"
    with open(path, "w") as f:
        for i in range(N_QUESTIONS):
            rec = {"id": f"{images[i % 6].name}:q{i // 6}", "image": f"imgs/{images[i % 6].name}",
                   "question": f"What does region {i} of this scan show?", "source": "test", "rank": i}
            f.write(json.dumps(rec) + "\n")
    return path


@pytest.fixture(scope="module")
def answered(question_file, tiny_model, tmp_path_factory) -> Path:
    """One uninterrupted `stmed answer` run over the question file: the reference output."""
    out = tmp_path_factory.mktemp("reference") / "answers.jsonl"
    proc = run_stmed("answer", question_file, "-m", tiny_model, *TINY_GEN, "--batch-size", "16", "-o", out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def piped(image_dir, tiny_model, tmp_path_factory) -> Path:
    """`stmed gen-questions DIR | tee | stmed answer -` as a real shell pipe; returns its folder."""
    d = tmp_path_factory.mktemp("pipe")
    cmd = (f"set -o pipefail; {STMED} gen-questions {image_dir} -m {tiny_model} -n 2 --seed 7 "
           f"--device cpu --max-new-tokens 8 --describe-max-new-tokens 8 "
           f"| tee {d}/questions.jsonl "
           f"| {STMED} answer - -m {tiny_model} -n 2 --device cpu --max-new-tokens 8 > {d}/answers.jsonl")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    (d / "stderr.txt").write_text(proc.stderr)
    return d


# --- the pipe ------------------------------------------------------------------------------------

def test_shell_pipe_gives_images_times_n_answered_questions(piped, image_dir, tiny_model):
    questions = read_jsonl(piped / "questions.jsonl")
    answers = read_jsonl(piped / "answers.jsonl")
    image_ids = sorted(p.relative_to(image_dir).as_posix() for p in image_dir.rglob("*.jpg"))
    assert len(image_ids) == 3
    assert [q["id"] for q in questions] == [f"{i}:q{k}" for i in image_ids for k in range(2)]
    assert [a["id"] for a in answers] == [q["id"] for q in questions], "one answer record per question, in order"
    for q, a in zip(questions, answers):
        assert q["image_id"] == q["id"].rsplit(":q", 1)[0]
        assert Path(q["image"]).is_file() and Path(q["image"]).name == Path(q["image_id"]).name
        assert q["question"].strip() and q["description"].strip()
        gen = q["gen"]
        assert gen["model"] == str(tiny_model) and gen["strategy"] == "vuser"
        assert (gen["temperature"], gen["top_k"], gen["top_p"], gen["max_new_tokens"]) == (1.2, 300, 0.95, 8)
        assert isinstance(gen["seed"], int)
        assert {k: v for k, v in a.items() if k not in ("answers", "answer_gen", "answer_prompt")} == q, \
            "every input field kept"
        assert a["answer_prompt"]["messages"] == [{"role": "user", "content": q["question"]}], "the prompt answered"
        assert [s["seed"] for s in a["answers"]] == [40, 42], "the paper's two seeds"
        assert all(isinstance(s["text"], str) for s in a["answers"])
        assert a["answer_gen"]["temperature"] == 1.2 and a["answer_gen"]["top_k"] == 100
    assert len({q["gen"]["seed"] for q in questions}) == 6, "each question has its own seed"
    stderr = (piped / "stderr.txt").read_text()
    assert "stmed gen-questions: done 3" in stderr and "stmed answer: done 6" in stderr, stderr


def test_same_seed_same_questions_across_runs_and_batch_sizes(piped, image_dir, tiny_model, tmp_path):
    """The pipe ran at the default batch 8; batch 1 with the same --seed gives the same bytes."""
    common = ("gen-questions", image_dir, "-m", tiny_model, "-n", "2", "--device", "cpu", "--max-new-tokens", "8",
              "--describe-max-new-tokens", "8")
    one = run_stmed(*common, "--seed", "7", "--batch-size", "1")
    assert one.returncode == 0, one.stderr
    assert one.stdout == (piped / "questions.jsonl").read_text(), "--batch-size changed seeded output"
    seeds = [json.loads(x)["gen"]["seed"] for x in one.stdout.splitlines()]
    assert len(set(seeds)) == len(seeds) == 6


# --- resume after SIGKILL ------------------------------------------------------------------------

def start_and_stop_when_output_grows(args: list[str], out: Path, sig: int) -> subprocess.Popen:
    """Start a run; once the output file has grown past its starting size, send ``sig``."""
    start = out.stat().st_size if out.exists() else 0
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 240
    try:
        while not (out.exists() and out.stat().st_size > start):
            assert proc.poll() is None, f"answer exited before writing more: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no new output after 240 s"
            time.sleep(0.02)
    finally:
        proc.send_signal(sig)
    proc.stderr_text = proc.communicate(timeout=120)[1]
    return proc


def test_interrupt_then_sigkill_then_rerun_answers_every_question_once(answered, question_file, tiny_model, tmp_path):
    out = tmp_path / "answers.jsonl"
    args = [sys.executable, "-m", "stmed.cli", "answer", str(question_file), "-m", str(tiny_model), *TINY_GEN,
            "--batch-size", "16", "-o", str(out)]
    reference = answered.read_bytes()

    # Ctrl-C: exit 130, one line saying how to go on, only whole records that an uninterrupted run also wrote
    proc = start_and_stop_when_output_grows(args, out, signal.SIGINT)
    assert proc.returncode == 130, proc.stderr_text
    assert proc.stderr_text.strip().splitlines()[-1] == "stmed: interrupted; rerun the same command to resume"
    assert "Traceback" not in proc.stderr_text
    first = out.read_bytes()
    assert first and first.endswith(b"\n") and reference.startswith(first)

    # SIGKILL part-way through the resumed run: nothing is cleaned up, a line may be torn
    proc = start_and_stop_when_output_grows(args, out, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    before = out.read_bytes()
    kept = before.count(b"\n")
    assert first.count(b"\n") < kept < N_QUESTIONS, f"the kill came too late to test resuming ({kept} lines)"

    rerun = run_stmed(*args[3:])
    assert rerun.returncode == 0, rerun.stderr
    assert f"skipped {kept}" in rerun.stderr, rerun.stderr
    final = read_jsonl(out)
    ids = [r["id"] for r in final]
    assert len(ids) == len(set(ids)) == N_QUESTIONS, "every question answered exactly once"
    assert all(r["source"] == "test" and r["rank"] == i and r["image"].startswith("imgs/")
               for i, r in enumerate(final)), "input fields kept as they were"
    assert out.read_bytes().startswith(before[: before.rfind(b"\n") + 1]), "finished records were not rewritten"
    assert out.read_bytes() == reference, "resumed output differs from an uninterrupted run"
    assert not out.with_name("answers.errors.jsonl").exists()


# --- shards --------------------------------------------------------------------------------------

def test_shards_union_is_the_full_output(answered, question_file, tiny_model, tmp_path):
    """Each shard also runs at another batch size than the reference (16): seeded answers must not care."""
    limit = 30
    reference = answered.read_text().splitlines()[:limit]
    parts = []
    for i, batch_size in enumerate((1, 3, 8)):
        out = tmp_path / f"part{i}.jsonl"
        proc = run_stmed("answer", question_file, "-m", tiny_model, *TINY_GEN, "--limit", limit,
                         "--shard", f"{i}/3", "--batch-size", batch_size, "-o", out)
        assert proc.returncode == 0, proc.stderr
        parts.append(out.read_text().splitlines())
    assert all(parts), f"an empty shard: {[len(p) for p in parts]}"
    union = [line for part in parts for line in part]
    assert len(union) == len(set(union)) == limit, "overlap or gaps between shards"
    assert sorted(union) == sorted(reference), "shards together must equal the unsharded output, byte for byte"
    for part in parts:  # and each shard keeps input order
        assert part == [line for line in reference if line in part]


# --- bad records and bad input -------------------------------------------------------------------

def write_bad_inputs(folder: Path, good: list[Path], question: bool) -> Path:
    """Good records with extra fields, plus one missing and one corrupt image."""
    data = good[0].read_bytes()
    (folder / "corrupt.jpg").write_bytes(data[: len(data) // 2])
    rows = [{"id": "good-a", "image": str(good[0]), "ward": "7B", "meta": {"study": 1}},
            {"id": "missing", "image": "does/not/exist.jpg"},
            {"id": "good-b", "image": str(good[1]), "ward": "3A", "meta": {"study": 2}},
            {"id": "corrupt", "image": "corrupt.jpg"}]
    if question:
        rows = [{**r, "question": "Is this normal?"} for r in rows] + [{"id": "no-question", "image": str(good[0])}]
    path = folder / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def check_errors_file(path: Path, src: Path, expect: dict[str, str]) -> None:
    errors = {e["id"]: e for e in read_jsonl(path)}
    assert set(errors) == set(expect), errors
    for rid, says in expect.items():
        line = next(i for i, ln in enumerate(src.read_text().splitlines(), 1) if json.loads(ln)["id"] == rid)
        assert errors[rid]["where"] == f"{src}:{line}"
        assert says in errors[rid]["error"] and "\n" not in errors[rid]["error"], errors[rid]


def test_gen_questions_bad_images_go_to_errors_file(bench_data, tiny_model, tmp_path):
    src = write_bad_inputs(tmp_path, vqa_rad_images(bench_data, 2), question=False)
    out = tmp_path / "q.jsonl"
    proc = run_stmed("gen-questions", src, "-m", tiny_model, "-n", "2", "--device", "cpu", "--max-new-tokens", "8",
                     "--describe-max-new-tokens", "8", "-o", out)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    check_errors_file(tmp_path / "q.errors.jsonl", src, {"missing": "image not found",
                                                         "corrupt": "truncated or corrupt JPEG"})
    records = read_jsonl(out)
    assert [r["id"] for r in records] == ["good-a:q0", "good-a:q1", "good-b:q0", "good-b:q1"]
    assert [(r["ward"], r["meta"]) for r in records] == [("7B", {"study": 1})] * 2 + [("3A", {"study": 2})] * 2


def test_answer_bad_records_go_to_errors_file(bench_data, tiny_model, tmp_path):
    src = write_bad_inputs(tmp_path, vqa_rad_images(bench_data, 2), question=True)
    out = tmp_path / "a.jsonl"
    proc = run_stmed("answer", src, "-m", tiny_model, *TINY_GEN, "-o", out)
    assert proc.returncode == 1, proc.stderr
    assert f"3 failed record(s) listed in {tmp_path / 'a.errors.jsonl'}" in proc.stderr
    check_errors_file(tmp_path / "a.errors.jsonl", src, {"missing": "image not found",
                                                         "corrupt": "truncated or corrupt JPEG",
                                                         "no-question": "missing field 'question'"})
    records = read_jsonl(out)
    assert [r["id"] for r in records] == ["good-a", "good-b"]
    assert all(len(r["answers"]) == 2 and r["ward"] for r in records)


def test_malformed_jsonl_exits_2_and_writes_nothing(tmp_path, tiny_model):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "image": "x.jpg", "question": "q?"}\n{"id": "b", "image": \n')
    out = tmp_path / "out.jsonl"
    proc = run_stmed("answer", src, "-m", tiny_model, "--device", "cpu", "-o", out)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"stmed: error: {src}:2: not valid JSON (Expecting value at column 22)"]
    assert not out.exists() and not (tmp_path / "out.errors.jsonl").exists()
    out.write_text('{"id": "earlier"}\n')  # an existing output is left as it was
    proc = run_stmed("answer", src, "-m", tiny_model, "--device", "cpu", "-o", out)
    assert proc.returncode == 2 and out.read_text() == '{"id": "earlier"}\n'
    piped = run_stmed("gen-questions", "-", "-m", tiny_model, input='{"id": "a", "image": "x.jpg"}\n[1]\n')
    assert piped.returncode == 2 and piped.stdout == ""
    assert piped.stderr.splitlines() == ["stmed: error: <stdin>:2: expected a JSON object, got list"]


@pytest.mark.parametrize("args, says", [
    (("--shard", "3/3"), "--shard 3/3: I must be in 0..N-1"),
    (("--shard", "x"), "--shard 'x': expected I/N"),
    (("--seeds", "40,40"), "seeds must differ"),
])
def test_bad_flags_exit_2(question_file, tiny_model, args, says):
    proc = run_stmed("answer", question_file, "-m", tiny_model, *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and says in proc.stderr, proc.stderr


@pytest.mark.parametrize("greedy", [(), ("--greedy",)])
def test_template_without_question_placeholder_exits_2(question_file, tiny_model, tmp_path, greedy):
    template = tmp_path / "template.txt"
    template.write_text("Answer in one word.\n")
    proc = run_stmed("answer", question_file, "-m", tiny_model, "--template", template, *greedy)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["stmed: error: the answer template file must contain {question}"]


def test_openai_backend_refuses_vuser(image_dir, tmp_path):
    out = tmp_path / "q.jsonl"
    proc = run_stmed("gen-questions", image_dir, "-m", "policy", "--engine", "openai",
                     "--base-url", "http://127.0.0.1:9/v1", "--strategy", "vuser", "-o", out)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "--strategy vuser" in lines[0] and "--strategy instruct" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()



def test_openai_backend_instruct_questions_then_answers(image_dir, tmp_path):
    """gen-questions --strategy instruct | answer through an OpenAI-compatible server on 127.0.0.1."""
    from openai_server import serve

    from stmed.images import list_images

    n_images = len(list_images(image_dir))
    questions, answers = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    remote = ("--engine", "openai", "-m", "policy", "--concurrency", "4")
    with serve() as server:
        proc = run_stmed("gen-questions", image_dir, *remote, "--base-url", server.base_url, "--strategy", "instruct",
                         "-n", "2", "-o", questions)
        assert proc.returncode == 0, proc.stderr
        proc = run_stmed("answer", questions, *remote, "--base-url", server.base_url, "-n", "2", "-o", answers)
        assert proc.returncode == 0, proc.stderr
        # one description per image, one request per question sample, one per answer seed
        assert server.stats.chat == n_images + n_images * 2 + n_images * 2 * 2
    qs = [json.loads(line) for line in questions.read_text().splitlines()]
    assert len(qs) == n_images * 2 and all(q["question"] and q["description"] for q in qs)
    assert {q["gen"]["backend"] for q in qs} == {"openai"} and {q["gen"]["strategy"] for q in qs} == {"instruct"}
    got = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [a["id"] for a in got] == [q["id"] for q in qs], "every question answered once, in input order"
    for a in got:
        assert [x["seed"] for x in a["answers"]] == [40, 42]
        assert a["answers"][0]["text"] != a["answers"][1]["text"], "each seed is its own request"
        assert a["answer_gen"]["backend"] == "openai"

# --- question cleaning and the bounded re-sampling, in process --------------------------------

@pytest.mark.parametrize("raw, question", [
    ("What organ is shown? ASSISTANT: The liver.", "What organ is shown?"),
    ("USER: Is there a fracture?", "Is there a fracture?"),
    ("  1. Where is the lesion located?\n2. Is it enhancing?", "Where is the lesion located?"),
    ("Question: is the aorta dilated? I would also ask", "is the aorta dilated?"),
    ('"Which side is the effusion on?"', "Which side is the effusion on?"),
    ("Describe the bowel loops", "Describe the bowel loops"),
    ("USER: ", ""),
])
def test_clean_question(raw, question):
    from stmed.stages.questions import clean_question

    assert clean_question(raw, ["ASSISTANT:", "USER:"]) == question


def test_duplicates_and_empty_questions_are_resampled_a_bounded_number_of_times(tiny_model, image_dir):
    """One-token questions are mostly too short or repeated: they are dropped, counted and drawn again."""
    from stmed.engines.hf import HFEngine
    from stmed.core.model import ModelSpec
    from stmed.stages import questions

    backend = HFEngine(ModelSpec(str(tiny_model), device="cpu"))
    records = questions.image_records(image_dir)
    cfg = questions.QuestionsConfig(n=4, max_new_tokens=1, describe_max_new_tokens=4, max_tries=3)
    outcomes = list(questions.run(cfg, backend, records))
    assert len(outcomes) == len(records), "each image gives one outcome: its questions or its error"
    by_image: dict[str, list[dict]] = {}
    for r in (r for o in outcomes if o.kind == "done" for r in o.records):
        by_image.setdefault(r["image_id"], []).append(r)
    dropped_any = False
    for image_id, recs in by_image.items():
        keys = [questions.normalise(r["question"]) for r in recs]
        assert len(keys) == len(set(keys)) <= cfg.n, f"{image_id}: duplicate questions kept: {keys}"
        assert all(len(k) >= 3 for k in keys), keys
        assert [r["id"] for r in recs] == [f"{image_id}:q{k}" for k in range(len(recs))]
        dropped = {r["gen"]["dropped"] for r in recs}
        assert len(dropped) == 1, "one count per image"
        seeds = [r["gen"]["seed"] for r in recs]
        assert len(set(seeds)) == len(seeds)
        drawn = len(recs) + dropped.pop()
        assert drawn <= cfg.n * cfg.max_tries, f"{image_id}: {drawn} samples drawn, more than the bound"
        dropped_any |= drawn > len(recs)
    assert dropped_any, "1-token questions should have produced some drops to test"
