"""What every command shares: option types, error handling, stage I/O.

Options are declared once here so each flag reads the same everywhere (DESIGN.md section 4).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from stmed.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, InputError, StmedError

Model = Annotated[str, typer.Option("-m", "--model", help="Hugging Face model id or local folder.")]
Adapter = Annotated[Optional[str], typer.Option("--adapter", help="peft adapter folder applied on the model.")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N")]
DType = Annotated[str, typer.Option("--dtype", help="auto | bfloat16 | float16 | float32 (auto: bf16 on a GPU that has it).")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Generation batch size (halved on out-of-memory).")]
Seed = Annotated[int, typer.Option("--seed", help="Base seed; every sample records its own seed.")]
TrustRemote = Annotated[bool, typer.Option("--trust-remote-code", help="Allow the model repo's own Python code.")]
Output = Annotated[Optional[str], typer.Option("-o", "--output", help="Output JSONL (resumed when it exists); default stdout.")]
Errors = Annotated[Optional[str], typer.Option("--errors", help="Bad records go here (default OUTPUT.errors.jsonl, or stderr).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Start fresh instead of resuming an existing output.")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar or summary.")]
ImageRoot = Annotated[Optional[Path], typer.Option("--image-root", help="Folder that relative image paths resolve against.")]
Limit = Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the first N input records.")]
Shard = Annotated[Optional[str], typer.Option("--shard", help="I/N: this process takes shard I of N (stable split by id).")]
Input = Annotated[str, typer.Argument(help="Input JSONL file, or - for stdin.")]


def fail(message: str) -> None:
    """A usage error raised from a command: one line, exit 2."""
    raise InputError(message)


def command(fn):
    """Wrap a command: user errors become one line and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            code = fn(*args, **kwargs)
        except StmedError as e:
            print(f"stmed: error: {e}", file=sys.stderr)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            print("stmed: interrupted; rerun the same command to resume", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            sys.stderr.close()  # downstream closed the pipe (e.g. `| head`): stop quietly
            raise typer.Exit(EXIT_OK) from None
        raise typer.Exit(code or EXIT_OK)

    return wrapper


def exit_code(failed: int) -> int:
    return EXIT_SOME_FAILED if failed else EXIT_OK


@dataclass
class ModelFlags:
    model: str
    adapter: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False

    def spec(self):
        from stmed.core.model import ModelSpec

        return ModelSpec(self.model, self.adapter, self.device, self.dtype, self.trust_remote_code)


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


def parse_ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"{flag} {text!r}: expected comma-separated integers, for example 40,42")
        raise
