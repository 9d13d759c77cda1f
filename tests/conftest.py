"""Shared fixtures: the tiny random model (built once per session), real data, the CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH_DATA = ROOT / "examples" / "data"  # real VQA-RAD and SLAKE files carried in the project
EXAMPLE_IMAGES = ROOT / "examples" / "images"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # one worker per core: a tiny model gains nothing from intra-op threads, and each worker
    # (and every stmed process it starts) spreading over every core makes them all wait
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

# The longest files first, so that under `make test` (whole files per worker) none starts last.
HEAVY_FIRST = ("test_families.py", "test_multiprocess.py", "test_vllm.py", "test_reliability.py", "test_prefill.py",
               "test_full_run.py", "test_convert.py", "test_dpo.py", "test_sft.py")


def run_root(tmp_path_factory) -> Path:
    """A folder the whole run shares: under pytest-xdist every worker has its own base temp
    folder inside the run's, so the parent is common to them all."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` run once per test run, whichever worker gets there first; the others wait
    for it and share the folder (tests only read it). Built beside and renamed, so a worker never
    sees half a model."""
    from filelock import FileLock

    root = run_root(tmp_path_factory) / "shared"
    root.mkdir(exist_ok=True)
    target = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not target.exists():
            part = root / f"{name}.part"
            build(part)
            os.rename(part, target)
    return target


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random LLaVA saved to disk by tools/make_tiny_model.py, as users would build it."""
    sys.path.insert(0, str(ROOT / "tools"))
    from make_tiny_model import build

    return built_once(tmp_path_factory, "tiny-llava", lambda folder: build(folder, seed=0))


@pytest.fixture(scope="session")
def bench_data() -> Path:
    return BENCH_DATA


def run_stmed(*args: str, input: str | bytes | None = None, cwd: Path | None = None, env: dict | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real command line in a subprocess; returns the completed process (text mode)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run([sys.executable, "-m", "stmed.cli", *map(str, args)], input=data, capture_output=True,
                          cwd=cwd or ROOT, env=full_env, timeout=timeout)
    proc.stdout, proc.stderr = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    return proc


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true",
                     help="tests/test_fuzz.py: 20 times the examples, not derandomized (a deeper local run)")
