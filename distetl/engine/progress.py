"""Live progress on the terminal (rich) and the final summary table."""

from __future__ import annotations

import sys
import threading
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from distetl.engine.execute import BLOCKED, FAILED, SKIPPED, WRITTEN
from distetl.state.manifest import RunReport

__all__ = ["LiveProgress", "summary_table"]


class LiveProgress:
    """Per stage: done / skipped / failed / blocked / remaining and rows written,
    updated per chunk.

    Thread-safe: chunk events may arrive from the Dask client's thread.

    Args:
        console: Where the display goes.
        stages: Per stage, ``{"name", "total", "to_run"}`` (from the plan).
        enabled: Show the display.
    """

    def __init__(self, console: Console, stages: list[dict[str, Any]], enabled: bool = True):
        self.console = console
        self.counts: dict[str, dict[str, int]] = {}
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
            console=console, transient=False, disable=not enabled,
            refresh_per_second=4,
        )
        self.tasks: dict[str, Any] = {}
        self.first = stages[0]["name"] if stages else ""
        for stage in stages:
            counts = {"total": stage["total"], "done": 0, "skipped": stage["total"] - stage["to_run"],
                      "failed": 0, "blocked": 0, "rows": 0}
            self.counts[stage["name"]] = counts
            self.tasks[stage["name"]] = self.progress.add_task(
                stage["name"], total=stage["total"], completed=counts["skipped"], stats=self._stats(counts))

    @staticmethod
    def _stats(c: dict[str, int]) -> str:
        remaining = c["total"] - c["done"] - c["skipped"] - c["failed"] - c["blocked"]
        trouble = "".join(f" · {name} {c[name]}" for name in ("failed", "blocked") if c[name])
        return f"done {c['done']} · skipped {c['skipped']}{trouble} · left {remaining} · rows {c['rows']:,}"

    def chunk(self, event: dict[str, Any], remember: bool = True) -> None:
        """Count one chunk's outcome as its worker reports it (first report per stage and
        key wins). ``remember`` keeps the key until :meth:`settle` sees the chunk's
        result, so the result is not counted twice: only chunks in flight are kept."""
        with self._lock:
            stage = event.get("stage") or self.first
            key = (stage, event.get("key"))
            if key in self._seen or stage not in self.counts:
                return
            if self._count(stage, event.get("status"), event.get("rows")) and remember:
                self._seen.add(key)

    def settle(self, result: Any) -> None:
        """A chunk's final result (its batch is back): counted unless its worker's event
        was, and forgotten either way."""
        with self._lock:
            stage = result.stage or self.first
            key = (stage, result.key)
            if key in self._seen:
                self._seen.discard(key)
            elif stage in self.counts:
                self._count(stage, result.status, result.rows)

    def _count(self, stage: str, status: Any, rows: Any) -> bool:
        c = self.counts[stage]
        if status == WRITTEN:
            c["done"] += 1
            c["rows"] += int(rows or 0)
        elif status == SKIPPED:
            c["skipped"] += 1
        elif status == FAILED:
            c["failed"] += 1
        elif status == BLOCKED:
            c["blocked"] += 1
        else:
            return False
        self.progress.update(self.tasks[stage], completed=c["done"] + c["skipped"] + c["failed"] + c["blocked"],
                             stats=self._stats(c))
        return True

    def __enter__(self) -> "LiveProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()


def summary_table(report: RunReport) -> Table:
    """The final table: one row per stage (and one for the whole run when there are
    several) with counts and rows; the caption has MB, seconds and rows/s."""
    table = Table(title=f"distetl · {report.pipeline} · {report.runner}", show_header=True)
    summary = report.stage_summary()
    rows = list(summary)
    if len(summary) > 1:
        rows.append({"name": "all", "total": report.total, "written": report.written, "skipped": report.skipped,
                     "failed": report.failed_count, "blocked": report.blocked_count, "not_run": report.not_run,
                     "not_needed": sum(row["not_needed"] for row in summary), "rows": report.rows, **{k: sum(row[k] for row in summary) for k in ("check_failed", "warned")}})
    # "blocked" and "not run" only when some chunk was: a plain run's table fits 80 columns.
    # The same for the chunks that failed a data check or committed with a warning.
    columns = ["total", "written", "skipped", "failed"] + [
        name for name in ("check_failed", "warned", "blocked", "not_run", "not_needed") if any(row[name] for row in rows)] + ["rows"]
    table.add_column("stage", justify="left", no_wrap=True)
    for name in columns:
        table.add_column(name.replace("_", " "), justify="right")
    for row in rows:
        table.add_row(row["name"], *(f"{row[name]:,}" if name == "rows" else str(row[name]) for name in columns))
    rate = report.rows / report.seconds if report.seconds else 0.0
    table.caption = f"{report.bytes / 1e6:.1f} MB in {report.seconds:.2f} s · {rate:,.0f} rows/s"
    if report.storage_retries:
        table.caption += f" · {report.storage_retries} storage request(s) retried"
    if report.leftovers_removed:
        table.caption += f" · removed {report.leftovers_removed} stale temp file(s) left by killed writes"
    return table


def is_tty() -> bool:
    return sys.stderr.isatty()
