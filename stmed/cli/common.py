"""What every command shares: option types, error handling, stage I/O.

Options are declared once here so each flag reads the same everywhere (DESIGN.md section 4).
"""

from __future__ import annotations

import functools
import os
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
ChatTemplate = Annotated[Optional[str], typer.Option("--chat-template", help="Jinja chat template file (or a chat_template.json) replacing the model's own.")]
MaxPixels = Annotated[Optional[int], typer.Option("--max-pixels", min=784, help="Downscale each image to at most N pixels: bounds the image tokens of dynamic-resolution models (Qwen2-VL); recorded in outputs.")]
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
        code = _exit_code(fn, args, kwargs)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # One of a launcher's processes, its work written and merged: leave now. Interpreter
            # teardown after torch.distributed can abort a finished process ("terminate called
            # without an active exception"), which the launcher reports as the run's failure.
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(code)
        raise typer.Exit(code)

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


@dataclass
class ModelFlags:
    model: str
    adapter: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    chat_template: str | None = None

    def spec(self):
        from stmed.core.model import ModelSpec

        return ModelSpec(self.model, self.adapter, self.device, self.dtype, self.trust_remote_code, self.chat_template)


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


def open_input(source: str, *, image_root: Path | None = None, folder_ok: bool = False):
    """Records from a JSONL file, stdin (-), or (where allowed) a folder of images."""
    from stmed.distributed import world
    from stmed.records import read_records

    if source == "-" and world().active:
        fail("input from stdin (-) cannot be shared by the processes of a launch: give a file")
    if folder_ok and source != "-" and Path(source).is_dir():
        from stmed.stages.questions import image_records

        return image_records(Path(source))
    return read_records(source)


def select(records: list, *, shard: str | None = None, limit: int | None = None) -> list:
    """``--limit``, then ``--shard I/N``, then this process's share when a launcher started
    several (stmed.distributed): the records this process works on."""
    from stmed.distributed import share
    from stmed.records import select as pick

    return share(pick(records, shard=parse_shard(shard), limit=limit))


def run_stage(name: str, produce, *, output: str | None, errors: str | None, overwrite: bool, quiet: bool,
              total: int, unit: str = "records") -> int:
    """Open the resumable output and the errors file, drive ``produce(writer.done, errors, tracker)``,
    write what it yields, print the summary; returns the exit code. Under a launcher of N
    processes each writes its part and the main process merges them (stmed.distributed)."""
    from stmed.distributed import Parts, summary_line, world

    w = world()
    if not w.active:
        return _run_stage(name, produce, output=output, errors=errors, overwrite=overwrite, quiet=quiet, total=total,
                          unit=unit)
    parts = Parts(w, [output], errors, overwrite=overwrite)
    counts: dict = {}
    code = _run_stage(f"{name} {w.label}", produce, output=parts.part(output), errors=parts.errors, overwrite=False,
                      quiet=quiet, total=total, unit=unit, done=parts.done, counts=counts)
    code, infos = parts.finish(code, {"counts": counts})
    if w.main and not quiet:
        print(summary_line(name, parts.finals[0], infos, parts.added[0]), file=sys.stderr)
        failed = sum(i["counts"].get("failed", 0) for i in infos)
        if failed and parts.final_errors is not None:
            print(f"stmed {name}: {failed} failed record(s) listed in {parts.final_errors}", file=sys.stderr)
    return code


def _run_stage(name: str, produce, *, output, errors, overwrite: bool, quiet: bool, total: int, unit: str,
               done: set[str] = frozenset(), counts: dict | None = None) -> int:
    from stmed.progress import track
    from stmed.records import ErrorSink, RecordWriter, default_errors_path

    writer = RecordWriter(output, overwrite=overwrite)
    writer.done |= done
    sink = ErrorSink(errors if errors is not None else default_errors_path(output))
    try:
        with track(name, total, quiet=quiet, unit=unit) as tracker:
            tracker.counts["skipped"] = len(writer.done)
            for record in produce(writer.done, sink, tracker):
                writer.write(record)
            tracker.counts["failed"] = sink.count
            if counts is not None:
                counts.update(tracker.counts)
    finally:
        writer.close()
        sink.close()
    if sink.count and sink.path is not None and not quiet and counts is None:  # with counts: the caller says it
        print(f"stmed {name}: {sink.count} failed record(s) listed in {sink.path}", file=sys.stderr)
    return exit_code(sink.count)


BackendName = Annotated[str, typer.Option("--backend", help="hf (in-process model) | openai (OpenAI-compatible server).")]
BaseUrl = Annotated[Optional[str], typer.Option("--base-url", help="Server URL for --backend openai, e.g. http://127.0.0.1:8000/v1.")]
ApiKeyEnv = Annotated[str, typer.Option("--api-key-env", help="Environment variable holding the API key.")]
Concurrency = Annotated[int, typer.Option("--concurrency", min=1, help="Requests in flight (--backend openai).")]
StaticCache = Annotated[bool, typer.Option("--static-cache", help="GPU: static KV cache with compiled decode (fixed batch shapes).")]


def make_backend(backend: str, flags: ModelFlags, *, batch_size: int, base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 16, static_cache: bool = False):
    """The generation backend a command asked for (the model loads here, after input checks)."""
    if backend == "hf":
        from stmed.core.backend import HFBackend

        # A record the model fails on becomes that record's error (the stages report it), as with openai.
        return HFBackend(flags.spec(), batch_size=batch_size, static_cache=static_cache, isolate_failures=True)
    if backend == "openai":
        if not base_url and not flags.model:
            fail("--backend openai needs -m MODEL (the served model's name)")
        from stmed.backends.openai_backend import OpenAIBackend

        # A request that fails after its retries becomes that record's error, not the run's.
        return OpenAIBackend(flags.model, base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
                             on_error="yield")
    fail(f"--backend {backend!r}: expected hf or openai")
