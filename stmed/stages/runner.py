"""The one runner of every JSONL stage (gen-questions, answer, judge, eval).

A stage is ``run(cfg, engine, records) -> Iterator[Outcome]`` (stmed.records.Outcome): it says
what became of each unit of its input (a record; an image for gen-questions) and touches no
file. The runner owns the rest, the same way for every stage:

- the output (resumed when it exists: ids already there are not redone, and a record is never
  written twice), the skipped file (the judge's ties and inconsistent verdicts) and the errors
  file (the latest run's failures, file:line and reason);
- the progress bar and the closing summary, with the stage's own figures (tokens/s, cost);
- the split across the processes of a launch (stmed.distributed: each writes its parts, the main
  one merges them in rank order) and the sum of every process's counts;
- ``OUTPUT.meta.json`` where the stage asks for one (what made the output, counts, seconds).

It raises the library's own errors (stmed.errors), never the command line's.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stmed import __version__
from stmed.errors import EXIT_OK, EXIT_SOME_FAILED, InputError
from stmed.options import opt
from stmed.records import ErrorSink, Outcome, RecordWriter, default_errors_path, sibling_path, write_json


@dataclass
class Files:
    """Where a stage's records go (the same flags on every JSONL stage)."""

    output: str | None = opt(None, "Output JSONL (resumed when it exists); default stdout.", flags=("-o", "--output"),
                              metavar="FILE")
    errors: str | None = opt(None, "Bad records go here (default OUTPUT.errors.jsonl, or stderr).", metavar="FILE")
    overwrite: bool = opt(False, "Start fresh instead of resuming an existing output.", flags="--overwrite")
    quiet: bool = opt(False, "No progress bar or summary.", flags=("-q", "--quiet"))
    skipped: str | None = None  # the judge's skipped records (None: the stage makes no skips)


@dataclass
class Result:
    """How the run went, for the command: exit code, counts summed over every process, and
    each process's ``info`` (its counts and the stage's own figures)."""

    code: int
    counts: dict
    infos: list[dict] = field(default_factory=list)
    main: bool = True  # False in a launcher's other processes, which merge and report nothing
    output: str | None = None
    errors: Path | None = None


def pending_by_id(records: list, done: set[str]) -> list:
    """The records whose id is not in the output yet (what most stages redo on resume)."""
    return [r for r in records if r["id"] not in done]


def run_stage(name: str, work: Callable[[list], Iterable[Outcome]], records: list, files: Files, *,
              unit: str = "records", pending: Callable[[list, set[str]], list] = pending_by_id,
              figures: Callable[[], dict] | None = None, progress: Callable[[Any], None] | None = None,
              meta: Callable[[dict, list[dict], float], dict] | None = None, resumed: str = "skipped") -> Result:
    """Drive ``work(todo)`` over the records not done yet and route every Outcome to its file.

    ``resumed``: the count the units already done go under ("resumed" for a stage that makes
    skips of its own, whose "skipped" means something else).
    ``figures()``: this process's own numbers (judge spend), gathered with its counts.
    ``progress(tracker)``: called after each outcome (to refresh the bar's extra fields).
    ``meta(counts, infos, seconds)``: the OUTPUT.meta.json to write once every process is done."""
    from stmed.distributed import Parts, summary_line, world

    w = world()
    skipped = files.skipped
    parts = Parts(w, [files.output, skipped], files.errors, overwrite=files.overwrite) if w.active else None
    output, errors, overwrite = files.output, files.errors, files.overwrite
    if parts is not None:  # this process writes its parts; the main one merges them
        output, skipped, errors, overwrite = parts.part(output), parts.part(skipped), parts.errors, False
    started = time.perf_counter()
    counts = _drive(f"{name} {w.label}" if parts else name, work, records, output, skipped, errors, overwrite,
                    files.quiet, unit, pending, parts.done if parts else set(), progress, resumed)
    code = EXIT_SOME_FAILED if counts.get("failed") else EXIT_OK
    info = {"counts": counts, **({"figures": figures()} if figures else {})}
    final_errors = Path(errors) if errors not in (None, "-") else default_errors_path(output)
    if parts is None:
        result = Result(code, counts, [info], True, files.output, final_errors)
    else:
        code, infos = parts.finish(code, info)
        result = Result(code, _sum([i["counts"] for i in infos]), infos, w.main, files.output, parts.final_errors)
        if w.main and not files.quiet:
            print(summary_line(name, parts.finals[0], infos, parts.added[0]), file=sys.stderr)
    if not result.main:
        return result
    if meta is not None and (path := sibling_path(files.output, ".meta.json")) is not None:
        write_json(path, {"_meta": f"stmed {name}", "stmed": __version__, **meta(result.counts, result.infos,
                                                                                  time.perf_counter() - started),
                          "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    failed = result.counts.get("failed", 0)
    if failed and result.errors is not None and not files.quiet:
        print(f"stmed {name}: {failed} failed record(s) listed in {result.errors}", file=sys.stderr)
    return result


def _drive(label, work, records, output, skipped, errors, overwrite, quiet, unit, pending, done_elsewhere,
           progress, resumed) -> dict:
    from stmed.progress import track

    writer = RecordWriter(output, overwrite=overwrite)
    skips = RecordWriter(skipped, overwrite=overwrite) if skipped else None
    sink = ErrorSink(errors if errors is not None else default_errors_path(output))
    done = writer.done | (skips.done if skips else set()) | done_elsewhere
    todo = pending(records, done)
    try:
        with track(label, len(todo), quiet=quiet, unit=unit) as tracker:
            tracker.counts[resumed] = len(records) - len(todo)
            for o in work(todo):
                _route(o, writer, skips, sink, done, tracker)
                if progress is not None:
                    progress(tracker)
            return dict(tracker.counts)
    finally:
        writer.close()
        if skips is not None:
            skips.close()
        sink.close()


def _route(o: Outcome, writer: RecordWriter, skips: RecordWriter | None, sink: ErrorSink, done: set[str],
           tracker) -> None:
    if o.kind == "done":
        for rec in o.records:
            if str(rec.get("id")) not in done:  # a unit redone on resume writes only what is missing
                writer.write(rec)
        tracker.advance(kind="done", tokens=o.tokens)
    elif o.kind == "skipped":
        for rec in o.records:
            if skips is not None:
                skips.write(rec)
            else:
                print(f"stmed: {rec.get('id')}: skipped ({rec.get('skip')})", file=sys.stderr)
        tracker.advance(kind="skipped")
    elif o.kind == "failed":
        sink.add(o.record, o.error or "failed", **({"raw": o.raw} if o.raw else {}))
        tracker.advance(kind="failed", tokens=o.tokens)
    else:
        raise InputError(f"a stage yielded an outcome of unknown kind {o.kind!r}")


def _sum(dicts: list[dict]) -> dict:
    """Counts of several processes added up, key by key (nested dicts too)."""
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = _sum([out.get(k, {}), v]) if isinstance(v, dict) else out.get(k, 0) + v
    return out


def sum_figures(infos: list[dict]) -> dict:
    return _sum([i.get("figures", {}) for i in infos])
