"""What every command shares: error handling, input, and the flags no config owns.

The stages' own flags are generated from their config dataclasses (stmed.options); the few
flags declared here (-m, the input argument, --limit, --shard) read the same everywhere.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from stmed.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, InputError, StmedError
from stmed.options import flag_type
from stmed.stages.questions import QuestionsConfig
from stmed.stages.runner import Files

Model = Annotated[str, typer.Option("-m", "--model", help="Hugging Face model id or local folder.")]
Input = Annotated[str, typer.Argument(metavar="INPUT", help="Input JSONL file, or - for stdin.")]
Limit = Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the first N input records.")]
Shard = Annotated[Optional[str], typer.Option("--shard", help="I/N: this process takes shard I of N (stable split by id).")]
# Flags whose help lives on a config field, for a command that takes them one by one (view)
ImageRoot = flag_type(QuestionsConfig, "image_root")
Quiet = flag_type(Files, "quiet", default_none=False)


def fail(message: str) -> None:
    """A usage error raised from a command: one line, exit 2."""
    raise InputError(message)


def command(fn):
    """Wrap a command: user errors become one line and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        raise typer.Exit(_exit_code(fn, args, kwargs))

    return wrapper


def _exit_code(fn, args, kwargs) -> int:
    try:
        return fn(*args, **kwargs) or EXIT_OK
    except StmedError as e:
        print(f"stmed: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("stmed: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        sys.stderr.close()  # downstream closed the pipe (e.g. `| head`): stop quietly
        return EXIT_OK


def exit_code(failed: int) -> int:
    return EXIT_SOME_FAILED if failed else EXIT_OK


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        fail(f"--shard {shard!r}: expected I/N, for example 0/4")
    if not (n >= 1 and 0 <= i < n):
        fail(f"--shard {shard}: I must be in 0..N-1")
    return i, n


def open_input(source: str, *, folder_ok: bool = False, nonempty: bool = False):
    """Records from a JSONL file, stdin (-), or (where allowed) a folder of images. ``nonempty``:
    an input without a single record is a mistake (a truncated file, an upstream stage that
    wrote nothing), said as such rather than finished "complete" with an empty output."""
    from stmed.distributed import world
    from stmed.records import read_records

    if source == "-" and world().active:
        fail("input from stdin (-) cannot be shared by the processes of a launch: give a file")
    if folder_ok and source != "-" and Path(source).is_dir():
        from stmed.stages.questions import image_records

        records = image_records(Path(source))
    else:
        records = read_records(source)
    if nonempty and not records:
        fail(f"{'<stdin>' if source == '-' else source}: no records (empty input)")
    return records


def select(records: list, *, shard: str | None = None, limit: int | None = None) -> list:
    """``--limit``, then ``--shard I/N``, then this process's share when a launcher started
    several (stmed.distributed): the records this process works on."""
    from stmed.distributed import share
    from stmed.records import select as pick

    return share(pick(records, shard=parse_shard(shard), limit=limit))


def run(name: str, stage, cfg, engine, records: list, files: Files, **kwargs) -> int:
    """A stage module's ``run(cfg, engine, records)`` through the one runner; the exit code."""
    from stmed.stages.runner import run_stage

    return run_stage(name, lambda todo: stage.run(cfg, engine, todo), records, files, **kwargs).code
