"""One generation stage across the processes of one launch (accelerate launch, torchrun).

A launcher starts N copies of the same command and tells each its place through the
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Each process takes one
contiguous share of the input, loads its own model (on GPU LOCAL_RANK) and writes its records
to a part file beside the output, ``OUT.part-R-of-N.jsonl``, with the same resumable writer a
single process uses. When every process has finished, the main process appends the parts to
the output in rank order, which is input order, so the output is byte for byte what one
process writes, and removes the parts. A rerun with the same N resumes each part; records
already in the output are skipped by every process.

The processes meet twice on a small gloo group (CPU, whatever the GPUs run): once before any
work, so the main process can clear or repair the output before the others read it, and once
at the end, to collect exit codes and counts. gloo reports a dead peer at once ("connection
closed by peer"), so a killed process stops the others with exit 130 and the parts kept,
rather than a hang. Jobs that share no launcher use ``--shard I/N`` (examples/slurm).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from stmed.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, InputError, StmedError
from stmed.records import STDIO, default_errors_path, scan_output, sibling_path

# How long the end-of-run meeting waits for the slowest process (seconds). Shares are equal in
# records, not in time; a dead process is noticed at once, whatever this says.
WAIT_SECONDS = float(os.environ.get("STMED_RANK_TIMEOUT", 48 * 3600))


class RankLost(StmedError):
    """Another process of the run stopped before finishing: the parts are kept for a rerun."""

    exit_code = EXIT_INTERRUPTED


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def label(self) -> str:
        return f"(rank {self.rank}/{self.size})"


def world() -> World:
    """This process's place in the launch, from the launcher's environment (one process: 0 of 1)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise InputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if size > 1 and not 0 <= rank < size:
        raise InputError(f"RANK={rank} is outside WORLD_SIZE={size}")
    if size > 1 and not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
        raise InputError(f"WORLD_SIZE={size} without MASTER_ADDR/MASTER_PORT: start the processes with "
                         "accelerate launch or torchrun, or give each job its own --shard I/N")
    return World(rank, max(size, 1), local)


def share(items: list, w: World | None = None) -> list:
    """This process's contiguous share of ``items`` (sizes differ by at most one)."""
    w = w or world()
    n = len(items)
    return items[w.rank * n // w.size:(w.rank + 1) * n // w.size]


def part_path(path: str | Path, rank: int, size: int) -> Path:
    """``answers.jsonl`` -> ``answers.part-R-of-N.jsonl`` beside it."""
    return sibling_path(path, f".part-{rank}-of-{size}.jsonl")


def _group(w: World):
    # torch.distributed.nn binds group.WORLD as a default argument of its functions when it is first
    # imported, and torch._dynamo imports it (transformers loads dynamo with the model, which the
    # local judge does after this meeting). Imported after init_process_group it would hold the
    # group past destroy_process_group, so gloo's worker threads would outlive the run, and one of
    # them, freeing the last collective's tensors once interpreter teardown has begun, aborts the
    # finished process ("terminate called without an active exception"). Imported first, it binds None.
    import torch.distributed as dist
    import torch.distributed.nn  # noqa: F401

    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=w.rank, world_size=w.size, timeout=timedelta(seconds=WAIT_SECONDS))
    return dist


class Parts:
    """This process's part of each output of a stage run by N processes, merged by the main one.

    ``outputs`` are the JSONL files keyed by ``id`` that the stage writes (the judge also writes
    its skipped file); ``errors`` is the errors file (None: beside the first output; ``-``: stderr).
    Construct it after the input has been checked (a bad input stops every process alike) and
    before any record is written: construction is the first meeting of the processes.
    """

    def __init__(self, w: World, outputs: list[str | Path | None], errors: str | Path | None, *, overwrite: bool):
        if outputs[0] in (None, STDIO):
            raise InputError(f"running as {w.size} processes needs -o FILE: each process writes a part beside it")
        self.w = w
        self.finals = [Path(p) for p in outputs if p not in (None, STDIO)]
        err = errors if errors is not None else default_errors_path(outputs[0])
        self.final_errors = None if err in (None, STDIO) else Path(err)
        self.errors = STDIO if self.final_errors is None else str(part_path(self.final_errors, w.rank, w.size))
        self.dist = _group(w)
        if w.main:
            self._prepare(overwrite)
        self._meet()
        # Records already merged into an output count as done in every process (read only:
        # the main process repaired a torn last line before the meeting).
        self.done: set[str] = set()
        if not overwrite:
            for final in self.finals:
                self.done |= scan_output(final, repair=False)

    def part(self, final: str | Path | None) -> str | None:
        return None if final in (None, STDIO) else str(part_path(final, self.w.rank, self.w.size))

    def _prepare(self, overwrite: bool) -> None:
        for final in self.finals:
            if overwrite:
                final.unlink(missing_ok=True)
                for r in range(self.w.size):
                    part_path(final, r, self.w.size).unlink(missing_ok=True)
            else:
                scan_output(final)  # repairs a torn last line left by a kill during a merge
            pattern = sibling_path(final, ".part-*-of-*.jsonl").name
            stale = sorted(p.name for p in final.parent.glob(pattern) if not p.name.endswith(f"-of-{self.w.size}.jsonl"))
            if stale:
                print(f"stmed: note: {', '.join(stale)} belong to a run with another number of processes; "
                      "rerun with that number to resume them, or delete them", file=sys.stderr)

    def _meet(self) -> None:
        try:
            self.dist.barrier()
        except RuntimeError as e:
            raise self._lost(e) from None

    def _lost(self, e: Exception) -> RankLost:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return RankLost(f"another process of this {self.w.size}-process run stopped ({first[:160]}); its part "
                        f"files beside {self.finals[0]} are kept: rerun the same command to resume")

    def finish(self, code: int, info: dict | None = None) -> tuple[int, list[dict]]:
        """Wait for every process; the main one merges the parts. Returns (exit code, each rank's info)."""
        mine = {"code": code, **(info or {})}
        gathered: list[Any] = [None] * self.w.size if self.w.main else None
        try:
            self.dist.gather_object(mine, gathered, dst=0)
        except RuntimeError as e:
            raise self._lost(e) from None
        finally:
            self.dist.destroy_process_group()
        if not self.w.main:  # the main process reports failed records for the run; a launcher reads
            return (EXIT_OK if code == EXIT_SOME_FAILED else code), [mine]  # any other exit as a crash
        self.added = [merge_parts(f, [part_path(f, r, self.w.size) for r in range(self.w.size)]) for f in self.finals]
        if self.final_errors is not None:
            _concat(self.final_errors, [part_path(self.final_errors, r, self.w.size) for r in range(self.w.size)])
        return max(g["code"] for g in gathered), gathered


def merge_parts(final: Path, parts: list[Path]) -> int:
    """Append each part's records to ``final`` in the order given, skipping ids already there (a
    merge that was killed halfway is simply done again); then remove the parts. Returns how many
    records were added. Lines are copied as they are, so the merge adds no bytes of its own."""
    final.parent.mkdir(parents=True, exist_ok=True)
    done = scan_output(final)
    added = 0
    with open(final, "a", encoding="utf-8") as out:
        for part in parts:
            if not part.exists():
                continue
            scan_output(part)  # a torn last line (a killed writer) is not a record
            with open(part, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    key = str(json.loads(line).get("id"))
                    if key not in done:
                        out.write(line)
                        done.add(key)
                        added += 1
            out.flush()
    for part in parts:
        part.unlink(missing_ok=True)
    return added


def _concat(final: Path, parts: list[Path]) -> None:
    """The errors of this run: every part's lines, in rank order (no file when there are none)."""
    lines = [line for p in parts if p.exists() for line in p.read_text(encoding="utf-8").splitlines(keepends=True)]
    if lines:
        final.write_text("".join(lines), encoding="utf-8")
    else:
        final.unlink(missing_ok=True)
    for p in parts:
        p.unlink(missing_ok=True)


def summary_line(name: str, final: Path, infos: list[dict], added: int) -> str:
    totals = {k: sum((i.get("counts") or {}).get(k, 0) for i in infos) for k in ("done", "failed")}
    return (f"stmed {name}: {len(infos)} processes: done {totals['done']}, failed {totals['failed']}; "
            f"{added} record(s) merged into {final}")
