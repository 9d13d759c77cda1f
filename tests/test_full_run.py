"""The whole loop as users run it: examples/selftrain.sh (what `make selftrain` runs) for two
rounds on the tiny model with the local judge, rerun to show it does no work; and
examples/demo.sh (what `make demo` runs) end to end, evaluation and report included."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import EXAMPLE_IMAGES, ROOT

STAGES = ("questions", "answers", "judge", "dpo")
VENV_STMED = Path(sys.executable).with_name("stmed")


def env_for(tmp_path: Path, **extra: str) -> dict:
    # One torch thread per process: on a small busy CI machine the default pool is many times
    # slower for the tiny model. STMED_HOME keeps any cache out of the real home folder.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "STMED_HOME": str(tmp_path / "home"),
            **extra}


def bash(script: str, env: dict, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "examples" / script)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), f"{path} is empty or ends mid-line"
    return [json.loads(line) for line in text.splitlines()]


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` with its mtime and content."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_selftrain_two_rounds_then_a_rerun_does_no_work(tiny_model, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted(EXAMPLE_IMAGES.glob("*.jpg"))[:2]:
        shutil.copy(p, images / p.name)
    out = tmp_path / "run"
    env = env_for(tmp_path, MODEL=str(tiny_model), JUDGE=str(tiny_model), JUDGE_BACKEND="local", IMAGES=str(images),
                  ROUNDS="2", OUT=str(out), STMED=f"{shlex.quote(sys.executable)} -m stmed.cli", N_QUESTIONS="2",
                  # GEN_ARGS goes to both gen-questions and answer: only flags both take
                  GEN_ARGS="--max-new-tokens 8 --device cpu",
                  JUDGE_ARGS="--policy paper --max-tokens 8 --no-cache --device cpu",
                  DPO_ARGS="--max-steps 2 --batch-size 2 --grad-accum 1")
    first = bash("selftrain.sh", env)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr

    policy = str(tiny_model)
    for k in (1, 2):
        d = out / f"round-{k}"
        questions, answers, pairs = (read_jsonl(d / f) for f in ("questions.jsonl", "answers.jsonl", "pairs.jsonl"))
        assert len(questions) == 2 * 2, "two images, two questions each"
        assert {q["gen"]["model"] for q in questions} == {policy}, f"round {k} asked with the wrong policy"
        assert [a["id"] for a in answers] == [q["id"] for q in questions]
        assert all(len(a["answers"]) == 2 and a["answer_gen"]["model"] == policy for a in answers)
        assert pairs and {p["id"] for p in pairs} <= {q["id"] for q in questions}
        assert all(p["chosen"] != p["rejected"] for p in pairs)
        meta = json.loads((d / "dpo" / "_meta.json").read_text())
        assert meta["base_model"] == policy and meta["config"]["data"] == str(d / "pairs.jsonl")
        assert (d / "dpo" / "merged" / "config.json").is_file()
        assert {p.name for p in d.glob(".*.done")} == {f".{s}.done" for s in STAGES}
        assert f"selftrain: round {k} of 2, policy {policy}" in first.stderr
        policy = str(d / "dpo" / "merged")  # round K+1 starts from round K's merged model
    q1, q2 = (read_jsonl(out / f"round-{k}" / "questions.jsonl") for k in (1, 2))
    assert {q["gen"]["seed"] for q in q1}.isdisjoint(q["gen"]["seed"] for q in q2), "a new seed every round"
    assert first.stderr.rstrip().endswith(f"selftrain: done; final model {out}/round-2/dpo/merged")

    # The same command again: every stage is skipped without loading a model, nothing is touched.
    before = snapshot(out)
    again = bash("selftrain.sh", env, timeout=60)
    assert again.returncode == 0, again.stderr
    skipped = [f"selftrain: {out}/round-{k}: {s} already complete, skipped" for k in (1, 2) for s in STAGES]
    assert [line for line in again.stderr.splitlines() if "already complete" in line] == skipped
    assert not [line for line in again.stderr.splitlines() if line.startswith("stmed")], "a stage ran"
    assert snapshot(out) == before, "a rerun changed or touched a file"

    # Killed after dpo saved its last checkpoint but before the stage was marked complete: the
    # rerun goes on from the checkpoint instead of refusing the folder (exit 2 without --resume).
    (out / "round-2" / ".dpo.done").unlink()
    resumed = bash("selftrain.sh", env, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"stmed: resuming from {out}/round-2/dpo/checkpoint-2" in resumed.stderr
    assert (out / "round-2" / ".dpo.done").is_file()
    assert (out / "round-2" / "dpo" / "merged" / "config.json").is_file()


def test_demo_pipeline_end_to_end(tiny_model, tmp_path):
    """`make demo` on the tiny model: inspect, one self-training round, eval of both models, report."""
    out = tmp_path / "demo"
    stmed = str(VENV_STMED) if VENV_STMED.exists() else f"{shlex.quote(sys.executable)} -m stmed.cli"
    proc = bash("demo.sh", env_for(tmp_path, OUT=str(out), TINY=str(tiny_model), STMED=stmed, EVAL_LIMIT="6"))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "tiny and random" in proc.stderr and "make selftrain MODEL=" in proc.stderr, "the closing note"
    assert (out / "round-1" / "dpo" / "merged" / "config.json").is_file()
    assert read_jsonl(out / "round-1" / "pairs.jsonl")
    steps = [r for r in read_jsonl(out / "round-1" / "dpo" / "train_log.jsonl") if "loss" in r]
    assert max(abs(r["loss"] - 0.693147) for r in steps) > 0.01, "the demo's DPO visibly trains (loss leaves ln 2)"
    assert any(r["rewards/margins"] > 0 for r in steps), "reward margins move"
    assert "reward margin" in proc.stderr and "the copy in examples/data" in proc.stderr
    for name, model in (("base", str(tiny_model)), ("trained", str(out / "round-1" / "dpo" / "merged"))):
        summary = json.loads((out / f"eval-{name}.json").read_text())
        assert summary["name"] == name and summary["run"]["limit"] == 6, summary.get("run")
        assert summary["run"]["model"] == model
        assert len(read_jsonl(out / f"eval-{name}.jsonl")) == 6
    header = next(line for line in (out / "report.md").read_text().splitlines() if line.startswith("|"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert "base" in cells and "trained" in cells, header
