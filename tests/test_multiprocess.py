"""Many processes on one CPU machine: training, generation, judging and evaluation under a real
launcher (torchrun workers on gloo), a killed process, Slurm shards, and TensorBoard logs.

The launcher is ``accelerate launch --multi_gpu --num_processes 2`` with no GPU visible: accelerate
1.15's ``--cpu`` flag goes through its simple launcher, which starts one process (several CPU
processes need mpirun and a host file), while ``--multi_gpu`` starts torchrun workers, and the
Trainer's ``use_cpu`` then puts accelerate on MULTI_CPU with gloo. Every run sets one torch
thread per process, so one process and two give the same floating-point sums.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EXAMPLE_IMAGES, ROOT, run_stmed

pytestmark = pytest.mark.slow

ACCELERATE = Path(sys.executable).with_name("accelerate")
ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
TRAIN = ("--lora-dropout", "0", "--grad-accum", "1", "--max-steps", "3", "--lr", "1e-2", "--lora-r", "8",
         "--lora-alpha", "16")  # dropout 0: one process and two draw no masks, so their steps can be equal
GEN = ("--device", "cpu", "--max-new-tokens", "8")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(nproc: int = 2) -> list[str]:
    return [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(nproc), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(free_port())]


def launch(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``stmed ARGS`` as two processes of one launch."""
    return subprocess.run([*launcher(), "-m", "stmed.cli", *map(str, args)], cwd=ROOT, env={**os.environ, **ENV},
                          capture_output=True, text=True, timeout=timeout)


def single(*args) -> subprocess.CompletedProcess:
    return run_stmed(*args, env=ENV)


def summary(stderr: str) -> dict:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("stmed: {")]
    assert len(lines) == 1, f"one closing summary per run, not one per process: {lines}"
    return json.loads(lines[0][len("stmed: "):])


def adapter(outdir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(outdir / "adapter_model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def logged(outdir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (outdir / "train_log.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def images(k: int) -> list[str]:
    return [str(p) for p in sorted(EXAMPLE_IMAGES.glob("*.jpg"))[:k]]


QUESTIONS = ["What organ is shown?", "Is there a fracture?", "What is the modality?", "Where is the abnormality?",
             "Which side is affected?", "Is this a CT scan?"]
ANSWERS = ["The liver, with a hypodense lesion.", "A fracture of the left femur.", "Axial CT of the abdomen.",
           "The right upper lobe.", "The left side.", "Yes, with contrast."]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- training ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dpo_runs(tiny_model, tmp_path_factory):
    """The same 8 pairs (and one bad one): 2 processes at batch 1, and 1 process at batch 2."""
    d = tmp_path_factory.mktemp("dpo-mp")
    imgs = images(6)
    rows = [{"id": f"p{i}", "image": imgs[i % 6], "question": QUESTIONS[i % 6], "chosen": ANSWERS[i % 6],
             "rejected": ANSWERS[(i + 1) % 6]} for i in range(8)]
    pairs = write_jsonl(d / "pairs.jsonl", rows + [{"id": "gone", "image": "missing.jpg", "question": "q",
                                                    "chosen": "a", "rejected": "b"}])
    two = launch("dpo", pairs, "-m", tiny_model, "-o", d / "two", "--batch-size", "1", "--save-steps", "1",
                 "--report-to", "tensorboard", "--merge", *TRAIN)
    one = single("dpo", pairs, "-m", tiny_model, "-o", d / "one", "--batch-size", "2", *TRAIN)
    return d, pairs, two, one


def test_dpo_two_processes_at_batch_1_equal_one_process_at_batch_2(dpo_runs):
    """Gradients are averaged over the processes: rank r takes batches r, r+2, ... of the one seeded
    order, so step k sees the same two pairs as one process at batch 2, and ends on the same adapter."""
    d, _, two, one = dpo_runs
    assert two.returncode == 1 and one.returncode == 1, f"one bad pair is exit 1:\n{two.stderr[-3000:]}\n{one.stderr}"
    got = summary(two.stderr)
    assert got["processes"] == 2 and got["distributed"] == "MULTI_CPU" and got["steps"] == 3, got
    assert summary(one.stderr)["processes"] == 1
    a, b = adapter(d / "two"), adapter(d / "one")
    moved = max(v.abs().max().item() for k, v in b.items() if "lora_B" in k)
    assert moved > 1e-3, "the adapter did not move: the comparison would prove nothing"
    assert max_diff(a, b) < 1e-5, f"2 x batch 1 and 1 x batch 2 ended apart by {max_diff(a, b)} (moved {moved})"
    assert [r["step"] for r in logged(d / "two")] == [1, 2, 3], "every step logged once, by the main process"
    for r2, r1 in zip(logged(d / "two"), logged(d / "one")):
        assert r2["loss"] == pytest.approx(r1["loss"], abs=1e-5)
        assert r2["rewards/margins"] == pytest.approx(r1["rewards/margins"], abs=1e-5)


def test_dpo_only_the_main_process_writes(dpo_runs):
    d = dpo_runs[0]
    out = d / "two"
    errors = (out / "errors.jsonl").read_text().splitlines()
    assert len(errors) == 1 and json.loads(errors[0])["id"] == "gone", f"the bad pair, listed once: {errors}"
    meta = json.loads((out / "_meta.json").read_text())
    assert meta["processes"] == 2 and meta["distributed"] == "MULTI_CPU" and meta["data"]["pairs"] == 8
    assert not list(out.rglob("*.tmp")), "a half-written file from two writers"
    assert (out / "merged" / "config.json").exists(), "--merge after a 2-process run"
    events = list(out.rglob("events.out.tfevents*"))
    assert len(events) == 1, f"one TensorBoard event file (the main process's), found {events}"


def test_tensorboard_holds_the_dpo_metrics(dpo_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d = dpo_runs[0]
    (event,) = (d / "two").rglob("events.out.tfevents*")
    acc = EventAccumulator(str(event))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    log = logged(d / "two")
    for name in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert f"train/{name}" in tags, f"train/{name} not in {sorted(tags)}"
        values = [e.value for e in acc.Scalars(f"train/{name}")]
        assert values == pytest.approx([r[name] for r in log], abs=1e-5), f"{name}: TensorBoard and train_log disagree"


def test_resume_continues_a_two_process_run(dpo_runs, tiny_model, tmp_path):
    """A 2-process run stopped after checkpoint-2 (its later files removed, as a kill leaves it)
    resumes under 2 processes from that checkpoint and ends where the uninterrupted run ended."""
    d, pairs, _, _ = dpo_runs
    out = tmp_path / "out"
    shutil.copytree(d / "two", out, ignore=shutil.ignore_patterns("merged", "runs", "checkpoint-3"))
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (out / name).unlink()
    kept = [ln for ln in (out / "train_log.jsonl").read_text().splitlines() if json.loads(ln).get("step", 0) <= 2
            and "loss" in json.loads(ln)]
    (out / "train_log.jsonl").write_text("".join(ln + "\n" for ln in kept))
    resumed = launch("dpo", pairs, "-m", tiny_model, "-o", out, "--batch-size", "1", "--save-steps", "1",
                     "--resume", *TRAIN)
    assert resumed.returncode == 1, resumed.stderr[-3000:]  # the bad pair again
    assert "resuming from" in resumed.stderr and "checkpoint-2" in resumed.stderr
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3
    assert max_diff(adapter(out), adapter(d / "two")) < 1e-6, "the resumed run ended elsewhere"
    assert [r["step"] for r in logged(out)] == [1, 2, 3]


def test_a_killed_training_rank_stops_the_run_and_resume_finishes_it(dpo_runs, tiny_model, tmp_path):
    """SIGKILL rank 1 of a 2-process dpo after its first checkpoint: the launcher stops rank 0 (it
    would otherwise wait in the gradient all-reduce), nothing is left running, and --resume under
    2 processes finishes the run."""
    import psutil

    pairs, out = dpo_runs[1], tmp_path / "out"
    args = ["dpo", str(pairs), "-m", str(tiny_model), "-o", str(out), "--batch-size", "1", "--save-steps", "1",
            "--max-steps", "8", "--grad-accum", "1", "--lora-r", "8", "--lora-alpha", "16", "-q"]
    proc = subprocess.Popen([*launcher(), "-m", "stmed.cli", *args], cwd=ROOT, env={**os.environ, **ENV},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not (out / "checkpoint-1" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    workers = [p for p in _descendants(proc.pid) if "stmed.cli" in " ".join(_cmdline(p))]
    (victim,) = [p for p in workers if _environ(p).get("RANK") == "1"]
    victim.send_signal(signal.SIGKILL)
    try:
        proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, "a run that lost a rank must not report success"
    assert not (out / "adapter_model.safetensors").exists(), "the run finished before it could be killed"
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"processes left running: {alive}"
    resumed = launch(*args, "--resume")
    assert resumed.returncode == 1, resumed.stderr[-3000:]  # the bad pair
    assert json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())["global_step"] == 8
    assert (out / "adapter_model.safetensors").exists()


def test_sft_two_processes_at_batch_1_equal_one_process_at_batch_2(tiny_model, tmp_path):
    """Conversations of different lengths: the Trainer counts supervised tokens across processes,
    so the token-mean loss of 2 x batch 1 is that of 1 x batch 2."""
    imgs = images(6)
    rows = [{"id": f"c{i}", "image": imgs[i % 6], "conversations": [
        {"from": "human", "value": "<image>\n" + QUESTIONS[i % 6]}, {"from": "gpt", "value": ANSWERS[i % 6]},
        {"from": "human", "value": QUESTIONS[(i + 1) % 6]}, {"from": "gpt", "value": ANSWERS[(i + 3) % 6][:8 + i]}]}
        for i in range(8)]
    data = write_jsonl(tmp_path / "conv.jsonl", rows)
    two = launch("sft", data, "-m", tiny_model, "-o", tmp_path / "two", "--batch-size", "1", *TRAIN)
    one = single("sft", data, "-m", tiny_model, "-o", tmp_path / "one", "--batch-size", "2", *TRAIN)
    assert two.returncode == 0 and one.returncode == 0, two.stderr[-3000:] + one.stderr
    assert summary(two.stderr)["processes"] == 2
    a, b = adapter(tmp_path / "two"), adapter(tmp_path / "one")
    assert max_diff(a, b) < 1e-5, f"sft: 2 x batch 1 and 1 x batch 2 ended apart by {max_diff(a, b)}"
    assert [r["step"] for r in logged(tmp_path / "two")] == [1, 2, 3]


@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3", "fsdp"])
def test_accelerate_configs_load_and_fit_the_model(name, tiny_model):
    """Each config in examples/accelerate loads and says what it should. Only DDP runs on CPU here
    (the tests above): DeepSpeed is not installed (ZeRO needs it and GPUs), and accelerate 1.15
    turns an FSDP config into FSDP only on GPU-like devices; on CPU it runs MULTI_CPU, plain DDP.
    So for FSDP this checks that its wrap class is the tiny model's decoder layer."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    cfg = load_config_from_file(str(ROOT / "examples" / "accelerate" / f"{name}.yaml"))
    assert cfg.num_processes == 4 and cfg.num_machines == 1 and cfg.mixed_precision == "bf16"
    want = {"ddp": DistributedType.MULTI_GPU, "zero2": DistributedType.DEEPSPEED, "zero3": DistributedType.DEEPSPEED,
            "fsdp": DistributedType.FSDP}[name]
    assert cfg.distributed_type == want, cfg.distributed_type
    if name.startswith("zero"):
        assert cfg.deepspeed_config["zero_stage"] == int(name[-1])
    if name == "fsdp":
        from transformers import AutoConfig, AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(tiny_model))
        layer = cfg.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
        assert layer in {type(m).__name__ for m in model.modules()}, f"{layer} would wrap nothing"
        assert cfg.fsdp_config["fsdp_version"] == 2


# --- generation, judging, evaluation -------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(tiny_model, tmp_path_factory):
    """gen-questions -> answer -> judge (local) -> eval, each as 1 process and as 2, on the same input."""
    d = tmp_path_factory.mktemp("chain")
    (d / "images").mkdir()
    for p in images(5):
        shutil.copy(p, d / "images")
    runs: dict[str, dict[str, subprocess.CompletedProcess]] = {}

    def both(stage: str, *args, out: str):
        runs[stage] = {}
        for tag, run in (("one", single), ("two", launch)):
            (d / tag).mkdir(exist_ok=True)
            runs[stage][tag] = run(stage, *args, "-o", d / tag / out)

    both("gen-questions", d / "images", "-m", tiny_model, *GEN, "--describe-max-new-tokens", "8", "-n", "2",
         out="questions.jsonl")
    questions = (d / "one" / "questions.jsonl").read_text().splitlines(keepends=True)
    bad = json.dumps({"id": "bad", "image": "missing.jpg", "question": "q"}) + "\n"  # a failed record mid-way
    (d / "questions.jsonl").write_text("".join(questions[:3] + [bad] + questions[3:]))
    both("answer", d / "questions.jsonl", "-m", tiny_model, *GEN, out="answers.jsonl")
    both("judge", d / "one" / "answers.jsonl", "--backend", "local", "--judge-model", tiny_model, "--device", "cpu",
         "--max-tokens", "8", "--policy", "paper", out="pairs.jsonl")
    runs["eval"] = {}
    for tag, run in (("one", single), ("two", launch)):
        runs["eval"][tag] = run("eval", "--bench", "vqa-rad", "--limit", "7", "--bootstrap", "0", "-m", tiny_model, *GEN,
                                "-o", d / tag / "eval.jsonl", "--summary", d / tag / "eval.json")
    return d, runs


@pytest.mark.parametrize("stage,files", [
    ("gen-questions", ["questions.jsonl"]),
    ("answer", ["answers.jsonl", "answers.errors.jsonl"]),
    ("judge", ["pairs.jsonl", "pairs.skipped.jsonl"]),
    ("eval", ["eval.jsonl", "eval.json"]),
])
def test_two_processes_write_what_one_writes(chain, stage, files):
    d, runs = chain
    one, two = runs[stage]["one"], runs[stage]["two"]
    assert one.returncode == two.returncode, f"{stage}: exit {one.returncode} vs {two.returncode}\n{two.stderr[-3000:]}"
    assert one.returncode == (1 if stage == "answer" else 0), one.stderr
    for name in files:
        if (d / "one" / name).exists() or name != "pairs.skipped.jsonl":
            a, b = (d / "one" / name).read_bytes(), (d / "two" / name).read_bytes()
            assert a == b, f"{stage}: {name} differs between 1 and 2 processes"
    assert (d / "one" / files[0]).stat().st_size > 0
    assert not list((d / "two").glob("*.part-*")), "the parts are merged and removed"
    if stage != "eval":
        assert "2 processes:" in two.stderr and "merged into" in two.stderr, two.stderr


def test_judge_meta_counts_every_process(chain):
    d, _ = chain
    one, two = (json.loads((d / t / "pairs.meta.json").read_text()) for t in ("one", "two"))
    assert one["counts"]["done"] == two["counts"]["done"] > 0
    assert one["stats"]["requests"] == two["stats"]["requests"] > 0


# --- a process lost, shards without a launcher ---------------------------------------------------


@pytest.fixture(scope="module")
def many_questions(tiny_model, tmp_path_factory):
    """48 questions and their answers from one process: the reference for runs that lose a rank."""
    d = tmp_path_factory.mktemp("many")
    imgs = images(6)
    q = write_jsonl(d / "q.jsonl", [{"id": f"q{i:02d}", "image": imgs[i % 6], "question": f"What is in region {i}?"}
                                    for i in range(48)])
    ref = d / "ref.jsonl"
    proc = single("answer", q, "-m", tiny_model, *GEN, "--batch-size", "8", "-o", ref)
    assert proc.returncode == 0, proc.stderr
    return q, ref


def _environ(p) -> dict:
    """A process's environment, or {} when it has ended since it was listed (a short-lived child)."""
    import psutil

    try:
        return p.environ()
    except (psutil.Error, ProcessLookupError):
        return {}


def _cmdline(p) -> list[str]:
    import psutil

    try:
        return p.cmdline()
    except (psutil.Error, ProcessLookupError):
        return []


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _wait_for_lines(path: Path, n: int, procs, deadline: float) -> None:
    while time.time() < deadline:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        assert all(p.poll() is None for p in procs), "the run ended before a rank could be killed"
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines")


@pytest.mark.parametrize("how", ["accelerate", "by-hand"])
def test_a_killed_rank_stops_the_run_and_a_rerun_resumes(how, many_questions, tiny_model, tmp_path):
    """SIGKILL rank 1 mid-run. Under accelerate launch the launcher stops rank 0; started by hand
    (no launcher watching), rank 0 finishes its share and stops at the end-of-run meeting, which
    gloo fails at once (exit 130). Either way no process is left and nothing hangs (timeouts),
    and a rerun completes the output byte for byte."""
    import psutil

    q, ref = many_questions
    out = tmp_path / "a.jsonl"
    args = ["-m", "stmed.cli", "answer", str(q), "-m", str(tiny_model), *GEN, "--batch-size", "1", "-o", str(out)]
    env = {**os.environ, **ENV}
    if how == "accelerate":
        procs = [subprocess.Popen([*launcher(), *args], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)]
        deadline = time.time() + 120
        victim = None
        while victim is None and time.time() < deadline:
            victim = next((p for p in _descendants(procs[0].pid) if _environ(p).get("RANK") == "1"
                           and "stmed.cli" in " ".join(_cmdline(p))), None)
            time.sleep(0.05)
        assert victim is not None, "rank 1 never started"
        victims = [victim]
    else:
        port = str(free_port())
        procs = [subprocess.Popen([sys.executable, *args], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                  env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for r in (0, 1)]
        victims = [psutil.Process(procs[1].pid)]
    everyone = [psutil.Process(p.pid) for p in procs] + [c for p in procs for c in _descendants(p.pid)]
    _wait_for_lines(tmp_path / "a.part-1-of-2.jsonl", 1, procs, time.time() + 120)
    for v in victims:
        v.send_signal(signal.SIGKILL)
    first = procs[0]
    try:
        _, err = first.communicate(timeout=90)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert first.returncode != 0, "a run that lost a rank must not report success"
    if how == "by-hand":
        assert first.returncode == 130 and "rerun the same command to resume" in err, err[-2000:]
    gone, alive = psutil.wait_procs(everyone, timeout=30)
    assert not alive, f"processes left running: {alive}"
    assert not out.exists() or out.read_text().count("\n") < 48, "the output cannot be complete"
    assert (tmp_path / "a.part-1-of-2.jsonl").exists(), "the killed rank's part is kept for the rerun"
    again = launch("answer", q, "-m", tiny_model, *GEN, "--batch-size", "8", "-o", out)  # seeds are per record
    assert again.returncode == 0, again.stderr[-3000:]
    assert out.read_bytes() == ref.read_bytes(), "after the rerun the output is what one uninterrupted process writes"
    assert not list(tmp_path.glob("a.part-*")), "parts removed after the merge"


def test_slurm_shards_then_merge_checks_every_shard(many_questions, tiny_model, tmp_path):
    """examples/slurm/shard.sbatch as two array tasks, then merge-shards.sh: it refuses while a
    shard has not finished, then merges every record exactly once."""
    q, ref = many_questions
    out = tmp_path / "answers.jsonl"
    stmed = f"{sys.executable} -m stmed.cli"
    script = ROOT / "examples" / "slurm"

    def task(i: int) -> subprocess.CompletedProcess:
        env = {**os.environ, **ENV, "STMED": stmed, "SLURM_ARRAY_TASK_ID": str(i), "SLURM_ARRAY_TASK_COUNT": "2"}
        return subprocess.run(["bash", str(script / "shard.sbatch"), str(out), "answer", str(q), "-m", str(tiny_model),
                               *GEN, "--batch-size", "8"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    def merge() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(script / "merge-shards.sh"), str(out), "2"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)

    assert task(0).returncode == 0
    early = merge()
    assert early.returncode == 2 and "shard(s) 1 of 2 not finished" in early.stderr, early.stderr
    assert not out.exists() and (tmp_path / "answers.shard-0-of-2.jsonl").exists(), "a refused merge touches nothing"
    assert task(1).returncode == 0
    done = merge()
    assert done.returncode == 0, done.stderr
    assert sorted(out.read_text().splitlines()) == sorted(ref.read_text().splitlines()), \
        "the shards together are the unsharded output, each record once"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl"], "shards and markers removed"


def test_a_merge_killed_halfway_is_finished_by_the_next_one(tmp_path):
    """The main process appends the parts to the output, then removes them: killed in between,
    the output holds some records twice over (in it and in a part) and a torn line; merging
    again must give each record once, in order."""
    from stmed.distributed import merge_parts

    rows = [json.dumps({"id": f"r{i}", "text": "x" * i}) + "\n" for i in range(6)]
    parts = [tmp_path / "o.part-0-of-2.jsonl", tmp_path / "o.part-1-of-2.jsonl"]
    parts[0].write_text("".join(rows[:3]))
    parts[1].write_text("".join(rows[3:]))
    out = tmp_path / "o.jsonl"
    out.write_text("".join(rows[:4]) + rows[4][:7])  # killed while appending r4
    assert merge_parts(out, parts) == 2
    assert out.read_text() == "".join(rows) and not any(p.exists() for p in parts)


def test_rank_without_a_launcher_address_is_one_clear_error(tiny_model, tmp_path):
    q = write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "image": images(1)[0], "question": "What?"}])
    proc = run_stmed("answer", q, "-m", tiny_model, *GEN, "-o", tmp_path / "a.jsonl",
                     env={**ENV, "RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "", "MASTER_PORT": ""})
    assert proc.returncode == 2 and "MASTER_ADDR" in proc.stderr and "--shard" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "a.jsonl").exists()


def test_stdin_input_under_a_launcher_is_refused(tiny_model, tmp_path):
    line = json.dumps({"id": "a", "image": images(1)[0], "question": "What?"}) + "\n"
    proc = run_stmed("answer", "-", "-m", tiny_model, *GEN, "-o", tmp_path / "a.jsonl", input=line,
                     env={**ENV, "RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "9"})
    assert proc.returncode == 2 and "stdin (-) cannot be shared" in proc.stderr, proc.stderr


def test_stdout_output_under_a_launcher_is_refused(tmp_path):
    """Parts live beside -o FILE. (--backend openai: no model to load, no request is ever sent.)"""
    q = write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "image": images(1)[0], "question": "What?"}])
    proc = subprocess.run([*launcher(), "-m", "stmed.cli", "answer", str(q), "-m", "served", "--engine", "openai",
                           "--base-url", "http://127.0.0.1:9/v1"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **ENV, "OPENAI_API_KEY": "unused"}, timeout=300)
    assert proc.returncode != 0 and "needs -o FILE" in proc.stderr, proc.stderr[-2000:]
    assert proc.stdout == ""


def test_selftrain_under_a_launcher(tiny_model, tmp_path):
    """make selftrain LAUNCH=...: every model stage of a round as two processes of one launch."""
    (tmp_path / "images").mkdir()
    for p in images(2):
        shutil.copy(p, tmp_path / "images")
    out = tmp_path / "run"
    launch_cmd = " ".join(launcher())
    env = {**os.environ, **ENV, "MODEL": str(tiny_model), "JUDGE": str(tiny_model), "JUDGE_BACKEND": "local",
           "IMAGES": str(tmp_path / "images"), "ROUNDS": "1", "OUT": str(out), "N_QUESTIONS": "2",
           "STMED": f"{sys.executable} -m stmed.cli", "LAUNCH": launch_cmd, "STMED_HOME": str(tmp_path / "home"),
           "GEN_ARGS": "--max-new-tokens 8 --device cpu", "JUDGE_ARGS": "--policy paper --max-tokens 8 --no-cache --device cpu",
           "DPO_ARGS": "--max-steps 2 --batch-size 1 --grad-accum 1 --lora-r 8 --lora-alpha 16"}
    proc = subprocess.run(["bash", str(ROOT / "examples" / "selftrain.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r1 = out / "round-1"
    for stage in ("questions", "answers", "judge", "dpo"):
        assert (r1 / f".{stage}.done").exists(), f"{stage} did not finish: {proc.stderr[-6000:]}"
    for name, stage in (("questions", "gen-questions"), ("answers", "answer"), ("pairs", "judge")):
        assert f"stmed {stage}: 2 processes" in proc.stderr, f"{stage} did not run as 2 processes"
        assert (r1 / f"{name}.jsonl").read_text().count("\n") == 4
    assert json.loads((r1 / "dpo" / "_meta.json").read_text())["processes"] == 2
    assert (r1 / "dpo" / "merged" / "config.json").exists()
    assert not list(r1.glob("*.part-*")), "parts merged and removed"


TEARDOWN_PROBE = """
import json, os, sys, weakref
import torch.distributed as dist
from stmed.distributed import Parts, world

parts = Parts(world(), [sys.argv[1]], None, overwrite=True)
group = weakref.ref(dist.group.WORLD)
import torch._dynamo  # noqa: E402,F401 - what loading the judge's model does after the first meeting
parts.finish(0)
threads = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")) \\
    if os.path.isdir("/proc/self/task") else []
print(json.dumps({"group_alive": group() is not None, "threads": threads}))
"""


def test_the_group_and_its_threads_are_gone_after_the_last_meeting(tmp_path):
    """destroy_process_group frees the gloo group, whatever was imported after it was made: a group
    kept alive (torch.distributed.nn binds group.WORLD as a default argument when first imported)
    keeps gloo's worker threads into interpreter teardown, where one aborts a finished process."""
    port = str(free_port())
    env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", TEARDOWN_PROBE, str(tmp_path / "out.jsonl")], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for r in (0, 1)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        got = json.loads(out.strip().splitlines()[-1])
        assert not got["group_alive"], "destroy_process_group left the gloo group alive"
        assert not [t for t in got["threads"] if "gloo" in t], f"gloo threads outlive the group: {got['threads']}"
