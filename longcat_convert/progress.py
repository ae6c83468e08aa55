"""Progress on stderr (bytes, bytes/s, ETA) or nothing with --quiet."""
from __future__ import annotations

from typing import Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)


class Reporter:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._progress: Progress | None = None
        self.console = Console(stderr=True, highlight=False, quiet=quiet)

    def __enter__(self) -> "Reporter":
        if not self.quiet:
            self._progress = Progress(
                TextColumn("{task.description:<14}"), BarColumn(), TaskProgressColumn(), DownloadColumn(),
                TransferSpeedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console, transient=False, refresh_per_second=5)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def task(self, description: str, total: int) -> Callable[[int], None] | None:
        if self._progress is None:
            return None
        progress = self._progress
        tid = progress.add_task(description, total=max(total, 1))
        return lambda n: progress.advance(tid, n)

    def note(self, text: str) -> None:
        self.console.print(escape(text), soft_wrap=True)

    def warn(self, text: str) -> None:
        # warnings are shown even with --quiet
        Console(stderr=True, highlight=False).print(f"[yellow]warning:[/] {escape(text)}", soft_wrap=True)
