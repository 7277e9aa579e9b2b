"""Live progress on the terminal (rich) and the final summary table."""

from __future__ import annotations

import sys
import threading
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from distetl.execute import FAILED, SKIPPED, WRITTEN
from distetl.manifest import RunReport

__all__ = ["LiveProgress", "summary_table"]


class LiveProgress:
    """done / skipped / failed / remaining and rows written, updated per chunk.

    Thread-safe: chunk events may arrive from the Dask client's thread.
    """

    def __init__(self, console: Console, total: int, already: int, enabled: bool = True):
        self.console = console
        self.total = total
        self.done = 0
        self.skipped = already
        self.failed = 0
        self.rows = 0
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
            console=console, transient=False, disable=not enabled,
            refresh_per_second=4,
        )
        self.task = self.progress.add_task("chunks", total=total, completed=already, stats=self._stats())

    def _stats(self) -> str:
        remaining = self.total - self.done - self.skipped - self.failed
        return (f"done {self.done} · skipped {self.skipped} · failed {self.failed} · "
                f"remaining {remaining} · rows {self.rows:,}")

    def chunk(self, event: dict[str, Any]) -> None:
        """Count one chunk's outcome (first report per key wins)."""
        with self._lock:
            key = event.get("key")
            if key in self._seen:
                return
            self._seen.add(key)
            status = event.get("status")
            if status == WRITTEN:
                self.done += 1
                self.rows += int(event.get("rows") or 0)
            elif status == SKIPPED:
                self.skipped += 1
            elif status == FAILED:
                self.failed += 1
            self.progress.update(self.task, completed=self.done + self.skipped + self.failed, stats=self._stats())

    def __enter__(self) -> "LiveProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()


def summary_table(report: RunReport) -> Table:
    """The final table: counts, rows, bytes, seconds, rows/s, and failed chunks."""
    table = Table(title=f"distetl · {report.pipeline} · {report.runner}", show_header=True)
    for name in ("total", "written", "skipped", "failed", "rows", "MB", "seconds", "rows/s"):
        table.add_column(name, justify="right")
    rate = report.rows / report.seconds if report.seconds else 0.0
    table.add_row(
        str(report.total), str(report.written), str(report.skipped), str(len(report.failed)),
        f"{report.rows:,}", f"{report.bytes / 1e6:.1f}", f"{report.seconds:.2f}", f"{rate:,.0f}",
    )
    return table


def is_tty() -> bool:
    return sys.stderr.isatty()
