"""Progress bars and one-line summaries, always on stderr so stdout stays pure JSONL."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from collections.abc import Iterator

from rich.console import Console

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class Tracker:
    """Counts what a stage did; ``advance`` moves the bar, ``line`` is the closing summary."""

    def __init__(self, bar=None, task=None):
        self._bar, self._task = bar, task
        self.start = time.perf_counter()
        self.counts: dict[str, int] = {"done": 0, "skipped": 0, "failed": 0}
        self.tokens = 0
        self.extra: dict[str, str] = {}

    def advance(self, n: int = 1, *, kind: str = "done", tokens: int = 0) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n
        self.tokens += tokens
        if self._bar is not None:
            rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
            self._bar.update(self._task, advance=n, rate=f"{rate:,.0f} tok/s" if self.tokens else "")

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def line(self, name: str) -> str:
        parts = [f"{k} {v}" for k, v in self.counts.items()]
        if self.tokens:
            parts.append(f"{self.tokens / max(self.seconds, 1e-9):,.1f} tokens/s")
        parts += [f"{k} {v}" for k, v in self.extra.items()]
        parts.append(f"{self.seconds:.1f}s")
        return f"stmed {name}: " + ", ".join(parts)


@contextmanager
def track(name: str, total: int | None, *, quiet: bool = False, unit: str = "records") -> Iterator[Tracker]:
    """A rich bar with rate and ETA when stderr is a terminal; a summary line at the end."""
    show = not quiet and sys.stderr.isatty()
    if not show:
        tracker = Tracker()
        try:
            yield tracker
        finally:
            if not quiet:
                err_console.print(tracker.line(name), markup=False)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.progress import TimeRemainingColumn

    columns = (
        TextColumn(f"[bold]{name}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[rate]}"),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(name, total=total, rate="")
        tracker = Tracker(bar, task)
        try:
            yield tracker
        finally:
            bar.stop()
            err_console.print(tracker.line(name), markup=False)
