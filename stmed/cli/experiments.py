"""compare and reproduce: runs of many stmed commands, declared in one YAML file.

Each option of a run's dataclass (stmed.experiments) is also a flag that, when given, replaces
the file's value; the steps themselves are stmed commands (stmed.experiments.common).
"""

from __future__ import annotations

import functools
import inspect
import sys
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from stmed.cli import common as c
from stmed.cli.app import app
from stmed.errors import EXIT_USAGE
from stmed.experiments.compare import CompareRun
from stmed.experiments.reproduce import ReproduceRun
from stmed.options import flag_type, option_fields

RunFile = Annotated[Optional[Path], typer.Argument(
    help="The run declared in YAML (keys: the options below, with _ for -; benchmarks may be a mapping "
         "of name to {data, limit}). Flags override it.", metavar="RUN.yaml", show_default=False)]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the steps left as a shell script (those done as "
                                      "comments), note missing inputs, and stop.")]
BenchData = Annotated[Optional[list[str]], typer.Option("--data", metavar="BENCH=PATH", help="That benchmark's "
                                                        "file or folder (repeatable).")]


def overridable(cls):
    """Every option field of ``cls`` as a flag that is unset unless given; the command gets
    ``given``: (the given values parsed into field values, each one's flag)."""

    def decorate(fn):
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)  # typer reads resolved annotations
        names = [f.name for f, _, _ in option_fields(cls)]
        own = [p.replace(annotation=hints[name]) for name, p in sig.parameters.items() if name != "given"]
        generated = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                       annotation=flag_type(cls, name)) for name in names]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            values, flags = {}, {}
            for f, option, _ in option_fields(cls):
                value = kwargs.pop(f.name, None)
                if value is None or value == [] or value == ():
                    continue
                values[f.name] = option.parse(list(value) if isinstance(value, tuple) else value) \
                    if option.parse is not None else value
                flags[f.name] = next((x for x in option.flags if x.startswith("--")), "--" + f.name.replace("_", "-"))
            return fn(*args, given=(values, flags), **kwargs)

        wrapper.__signature__ = sig.replace(parameters=own + generated)
        return wrapper

    return decorate


def _known(*commands: str) -> dict[str, set[str]]:
    """Each command's option strings, read from the commands themselves."""
    group = typer.main.get_command(app)
    return {name: {o for p in group.commands[name].params for o in (*p.opts, *p.secondary_opts)} for name in commands}


def _load(cls, run_file, given, data):
    from stmed.experiments.common import bench_overrides
    from stmed.experiments.declare import load

    values, flags = given
    run = load(cls, run_file, values, flags)
    bench_overrides(run, data, values.get("limit"))
    return run


def _inputs(prog: str, lacks: list[str], dry_run: bool) -> bool:
    """Missing inputs: notes under --dry-run, else one error line each (and no step runs)."""
    for line in lacks:
        print(f"{prog}: missing: {line}" if dry_run else f"stmed: error: {line}", file=sys.stderr)
    return dry_run or not lacks


def _say(prog: str):
    return lambda line: print(f"{prog}: {line}", file=sys.stderr)


@app.command("compare")
@c.command
@overridable(CompareRun)
def compare(run_file: RunFile = None, data: BenchData = None, dry_run: DryRun = False, *, given) -> int:
    """Preference variants side by side: each trained from the same pairs and seed, the base and
    every variant evaluated on the same benchmarks, one report. A rerun skips each step whose output
    is there and resumes a stopped training.

    Example: stmed compare examples/compare.yaml --variants dpo,weighted --dry-run
    """
    from stmed.experiments import compare as lib
    from stmed.experiments.common import run_steps

    run = _load(CompareRun, run_file, given, data)
    known = _known("dpo", "eval")
    lib.check(run, known)
    if not _inputs("compare", lib.missing(run), dry_run):
        return EXIT_USAGE
    say = _say("compare")

    def warn(step) -> None:
        if step.kind == "train" and (line := lib.training_warning(step)):
            say(line)

    if not dry_run:
        from stmed.records import write_json

        Path(run.output).mkdir(parents=True, exist_ok=True)
        write_json(Path(run.output) / "compare.json", lib.resolved(run))  # what made the report
    return run_steps(lib.plan(run, known), dry_run=dry_run, after=warn, say=say)


@app.command("reproduce")
@c.command
@overridable(ReproduceRun)
def reproduce(run_file: RunFile = None, data: BenchData = None, dry_run: DryRun = False, *, given) -> int:
    """The paper's table: convert the STLLaVA-Med release and evaluate it on VQA-RAD, SLAKE and
    PathVQA, next to the paper's numbers. A rerun skips each step whose output is there.

    Example: stmed reproduce examples/reproduce.yaml --dry-run
    """
    from stmed.experiments import reproduce as lib
    from stmed.experiments.common import run_steps

    run = _load(ReproduceRun, run_file, given, data)
    known = _known("eval")
    lib.check(run, known)
    say = _say("reproduce")
    say(lib.paper_line())
    if not _inputs("reproduce", lib.missing(run), dry_run):
        return EXIT_USAGE
    return run_steps(lib.plan(run, known), dry_run=dry_run, say=say)
