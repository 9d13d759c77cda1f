"""What compare and reproduce share: benchmarks with their settings, steps, and running them.

A step is one stmed command and the files that show it is done. Steps run as
``sys.executable -m stmed.cli ...`` subprocesses: each training and each evaluation gets a fresh
process (its model and memory go when it ends, a crash stops only that step), and the children
run under the same Python and environment as the command that started them, whatever venv that is.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stmed.errors import EXIT_OK, EXIT_SOME_FAILED, InputError, did_you_mean


@dataclass
class Bench:
    """One benchmark's settings in a run."""

    data: str | None = None  # its file or folder (stmed eval --data); None: the carried copy or the Hub's
    limit: int | None = None  # only its first N items (None: the run's limit, else every item)


@dataclass
class Step:
    argv: list[str]  # the stmed command, after "stmed"
    done: tuple[Path, ...] = ()  # all there: the step is done and a rerun skips it (empty: always runs)
    kind: str = ""  # train | eval | convert | report
    name: str = ""  # the run (variant, base) the step belongs to
    folder: Path | None = None  # a training's output folder

    def is_done(self) -> bool:
        return bool(self.done) and all(p.exists() for p in self.done)

    def shell(self) -> str:
        return shlex.join(["stmed", *self.argv])


def names(text: str) -> list[str]:
    """A comma list."""
    return [n.strip() for n in text.split(",") if n.strip()]


def bench_names(text: str) -> dict[str, Bench]:
    """A comma list of benchmarks, each with its default settings."""
    return {n: Bench() for n in names(text)}


def key_values(flag: str):
    """A parser of repeated ``KEY=VALUE`` flags into settings (true and false are switches)."""

    def parse(pairs: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise InputError(f"{flag} {pair!r}: expected KEY=VALUE, for example {flag} max_new_tokens=8")
            value = value.strip()
            out[key.strip().replace("-", "_")] = {"true": True, "false": False}.get(value.lower(), value or None)
        return out

    return parse


def bench_overrides(run, data: list[str] | None, limit: int | None) -> None:
    """``--data NAME=PATH`` (one benchmark's file) and ``--limit N`` (every benchmark's, over the
    file's limits) on a loaded run."""
    for spec in data or []:
        name, sep, where = spec.partition("=")
        if not sep or not where:
            raise InputError(f"--data {spec!r}: expected BENCH=PATH, for example pathvqa=data/pathvqa")
        if name not in run.benchmarks:
            raise InputError(f"--data {spec}: {name!r} is not among the benchmarks "
                             f"({', '.join(run.benchmarks)}){did_you_mean(name, run.benchmarks)}")
        run.benchmarks[name].data = where
    if limit is not None:
        for bench in run.benchmarks.values():
            bench.limit = None


def check_benchmarks(run) -> None:
    from stmed.evaluation.benchmarks import BENCHMARKS

    if not run.benchmarks:
        raise InputError(f"{run.where.get('benchmarks', 'benchmarks')}: no benchmarks")
    for name, bench in run.benchmarks.items():
        at = run.where.get(f"benchmarks.{name}", run.where.get("benchmarks", "benchmarks"))
        if name not in BENCHMARKS:
            raise InputError(f"{at}: unknown benchmark {name!r}{did_you_mean(name, BENCHMARKS)}; "
                             f"choose from {', '.join(BENCHMARKS)}")
        if name == "jsonl" and not bench.data:
            raise InputError(f"{at}: benchmark jsonl needs its data file (data: FILE)")
        if bench.limit is not None and bench.limit < 1:
            raise InputError(f"{at}: limit {bench.limit}: must be at least 1")


def eval_argv(name: str, bench: Bench, limit: int | None) -> list[str]:
    """The eval flags a benchmark's settings give."""
    argv = ["--bench", name]
    if bench.data:
        argv += ["--data", bench.data]
    limit = bench.limit if bench.limit is not None else limit
    return argv + (["--limit", str(limit)] if limit is not None else [])


def settings_flags(settings: dict[str, Any], known: Collection[str] = ()) -> list[str]:
    """``{lr: 5e-3, merge: true, loss: [sigmoid, sft]}`` as ``--lr 5e-3 --merge --loss sigmoid,sft``;
    false is ``--no-NAME`` where the command has it (else the switch is left off)."""
    argv: list[str] = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            negative = "--no-" + key.replace("_", "-")
            argv += [flag] if value else [negative] if negative in known else []
        elif isinstance(value, list):
            argv += [flag, ",".join(map(str, value))]
        else:
            argv += [flag, str(value)]
    return argv


def check_settings(run, key: str, command: str, known: Collection[str], reserved: dict[str, str]) -> None:
    """Every key of ``run.<key>`` (settings for ``stmed COMMAND``) is one of its options and not
    one the run sets itself; one line naming the key where it was declared otherwise."""
    for name, value in getattr(run, key).items():
        at = run.where.get(f"{key}.{name}", run.where.get(key, key))
        flag = "--" + name.replace("_", "-")
        if name in reserved:
            raise InputError(f"{at}: {key}.{name}: the run sets it itself ({reserved[name]})")
        if flag not in known:
            names = sorted(k[2:].replace("-", "_") for k in known if k.startswith("--"))
            raise InputError(f"{at}: {key}.{name}: stmed {command} has no option {flag}"
                             f"{did_you_mean(name.replace('-', '_'), names)}")
        if isinstance(value, dict):
            raise InputError(f"{at}: {key}.{name}: expected a value, got a mapping")


def run_steps(steps: list[Step], *, dry_run: bool = False, after: Callable[[Step], None] | None = None,
              say: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> int:
    """Each step not done yet, in order; ``after`` sees each done one. Dry: the commands on stdout,
    those done already as comments, so the output is a shell script of what is left."""
    code = EXIT_OK
    for i, step in enumerate(steps, 1):
        where = f"[{i}/{len(steps)}]"
        if step.is_done():
            if dry_run:
                print(f"# done: {step.shell()}")
            else:
                say(f"{where} {step.done[0]} is there, skipping: {step.shell()}")
                if after is not None:
                    after(step)
            continue
        if dry_run:
            print(step.shell())
            continue
        say(f"{where} {step.shell()}")
        child = subprocess.Popen([sys.executable, "-m", "stmed.cli", *step.argv])
        try:
            rc = child.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the child too: let it stop its own way (resumable)
            child.wait()
            raise
        if rc not in (EXIT_OK, EXIT_SOME_FAILED):  # 1: finished, with bad records in its errors file
            say(f"stopped: the step above exited {rc}; rerun to resume from it")
            return rc
        code = max(code, rc)
        if after is not None:
            after(step)
    return code


def where_field():
    """The ``where`` field of a run: key -> the file:line or flag it came from (stmed.experiments.declare)."""
    return field(default_factory=dict, init=False, repr=False, compare=False)
