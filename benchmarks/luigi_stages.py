"""The ``stages`` workload on Luigi: the same graph, the same per-chunk functions.

One Luigi task per chunk: ``DayTask(date)`` → ``CleanTask(date)`` (requires its
``DayTask``) → ``MonthTask(month)`` (requires the ``CleanTask`` of each of its days);
``DimTask()`` (one); ``JoinTask(date)`` (requires its ``DayTask``, its ``CleanTask`` and
the ``DimTask``).
Each task's output is a ``LocalTarget`` at the path distetl's target template gives
the chunk, so the two outputs have the same layout. Each task calls the very functions
the distetl stages use (:mod:`stages_workload`):

* ``DayTask``: ``day_extract(chunk)``;
* ``CleanTask``: ``read_inputs(chunk, ctx)`` (distetl's default extract of a downstream
  stage: the input files as one DataFrame, ``date`` restored from the path) with a
  :class:`~distetl.ChunkContext` naming its day's file, then ``clean_transform``;
* ``MonthTask``: the same ``read_inputs`` over the month's clean files, then
  ``month_transform``;
* ``DimTask``: ``dim_extract(chunk)``;
* ``JoinTask``: ``join_extract(chunk, ctx)`` with a context naming its three inputs'
  files (``days``, ``clean``, ``dim``), as distetl's;

then casts to the stage's schema and writes Parquet with pyarrow (snappy, as distetl)
through ``LocalTarget.temporary_path()`` (an atomic rename; distetl's commit also
fsyncs, which Luigi's does not).

Run as ``luigi.build(month_tasks + join_tasks, local_scheduler=True, workers=2)``:
Luigi's own scheduler in the driver, two worker processes (Luigi forks one process per
task when it has more than one worker).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Sequence

import luigi
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from distetl import Chunk, ChunkContext
from distetl.engine.execute import InputFiles
from distetl.model.stages import read_inputs

import stages_workload as sw

__all__ = ["CleanTask", "DayTask", "DimTask", "JoinTask", "MonthTask", "run_luigi"]


def _write(frame: pd.DataFrame, schema: pa.Schema, target: luigi.LocalTarget) -> None:
    """Cast to the schema (its columns, in order; partition columns live in the path)
    and write one Parquet file atomically."""
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    target.makedirs()
    with target.temporary_path() as tmp:
        pq.write_table(table, tmp, compression="snappy")


def _day_chunk(date: str) -> Chunk:
    day = dt.date.fromisoformat(date)
    return Chunk(key=f"date={date}", fields={"date": date, "year": f"{day.year:04d}",
                                            "month": f"{day.year:04d}-{day.month:02d}", "day": f"{day.day:02d}"},
                 index=day.toordinal() - sw.START.toordinal())


class DayTask(luigi.Task):
    """One day of the root stage."""

    date = luigi.Parameter()
    root = luigi.Parameter()

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(sw.TARGETS["days"].format(output=self.root, date=self.date))

    def run(self) -> None:
        _write(sw.day_extract(_day_chunk(self.date)), sw.DAY_SCHEMA, self.output())


class CleanTask(luigi.Task):
    """One day of the clean stage, from its day."""

    date = luigi.Parameter()
    root = luigi.Parameter()

    def requires(self) -> DayTask:
        return DayTask(date=self.date, root=self.root)

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(sw.TARGETS["clean"].format(output=self.root, date=self.date))

    def run(self) -> None:
        chunk = _day_chunk(self.date)
        ctx = ChunkContext(chunk=chunk, output=self.root, inputs=[self.input().path],
                           input_root=f"{self.root}/days", stage="clean")
        _write(sw.clean_transform(read_inputs(chunk, ctx)), sw.CLEAN_SCHEMA, self.output())


class MonthTask(luigi.Task):
    """One month of the monthly stage, from its days of the clean stage (those between
    ``first`` and ``last``)."""

    month = luigi.Parameter()
    first = luigi.Parameter()
    last = luigi.Parameter()
    root = luigi.Parameter()

    def requires(self) -> list[CleanTask]:
        days = sw.month_days(self.month, dt.date.fromisoformat(self.first), dt.date.fromisoformat(self.last))
        return [CleanTask(date=day, root=self.root) for day in days]

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(sw.TARGETS["monthly"].format(output=self.root, month=self.month))

    def run(self) -> None:
        chunk = Chunk(key=f"month={self.month}", fields={"month": self.month}, index=0)
        ctx = ChunkContext(chunk=chunk, output=self.root, inputs=[t.path for t in self.input()],
                           input_root=f"{self.root}/clean", stage="monthly")
        _write(sw.month_transform(read_inputs(chunk, ctx)), sw.MONTHLY_SCHEMA, self.output())


class DimTask(luigi.Task):
    """The one-chunk dimension."""

    root = luigi.Parameter()

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(sw.TARGETS["dim"].format(output=self.root, part="all"))

    def run(self) -> None:
        chunk = Chunk(key="part=all", fields={"part": "all"}, index=0)
        _write(sw.dim_extract(chunk), sw.DIM_SCHEMA, self.output())


class JoinTask(luigi.Task):
    """One day of the joined stage, from its day, its clean day and the dimension."""

    date = luigi.Parameter()
    root = luigi.Parameter()

    def requires(self) -> dict[str, luigi.Task]:
        return {"days": DayTask(date=self.date, root=self.root), "clean": CleanTask(date=self.date, root=self.root),
                "dim": DimTask(root=self.root)}

    def output(self) -> luigi.LocalTarget:
        return luigi.LocalTarget(sw.TARGETS["joined"].format(output=self.root, date=self.date))

    def run(self) -> None:
        chunk = _day_chunk(self.date)
        inputs = InputFiles({name: [target.path] for name, target in self.input().items()})
        ctx = ChunkContext(chunk=chunk, output=self.root, inputs=inputs, input_root=f"{self.root}/days",
                           input_roots={name: f"{self.root}/{name}" for name in inputs.by_name}, stage="joined")
        _write(sw.join_extract(chunk, ctx), sw.JOIN_SCHEMA, self.output())


def join_tasks(days: int, root: str) -> list[JoinTask]:
    """One JoinTask per day of a root stage of ``days`` days."""
    first = sw.START
    return [JoinTask(date=(first + dt.timedelta(days=d)).isoformat(), root=root) for d in range(days)]


def month_tasks(days: int, root: str) -> list[MonthTask]:
    """The graph's sinks: one MonthTask per month of a root stage of ``days`` days."""
    first, last = sw.START, sw.end_date(days)
    return [MonthTask(month=m, first=first.isoformat(), last=last.isoformat(), root=root)
            for m in sw.months(first, last)]


def run_luigi(w: Any, days: int, exclude: Sequence[int] = (), workers: int = 2) -> Any:
    """The whole graph on Luigi's local scheduler with ``workers`` worker processes, into
    a fresh output. Chunks = tasks of the graph; written = output files present after
    the run; failed = tasks whose output is missing."""
    from benchlib import Measurement, _measure

    output = w.output("luigi")
    sinks = month_tasks(days, output) + join_tasks(days, output)
    chunks = len(sinks) + 2 * days + 1  # + the days, the clean days and the dimension

    def body() -> Measurement:
        start = time.perf_counter()
        result = luigi.build(sinks, local_scheduler=True, workers=workers, log_level="WARNING",
                             no_lock=True, detailed_summary=True)
        m = Measurement(w.name, "luigi", chunks, time.perf_counter() - start)
        rows = sw.stage_rows(output)
        m.written = sum(s["files"] for s in rows.values())
        m.failed = chunks - m.written
        m.rows = sum(s["rows"] for s in rows.values())
        m.notes.update(output=output, stage_rows=rows, luigi_status=str(result.status),
                       scheduling_succeeded=bool(result.scheduling_succeeded), workers=workers)
        return m

    return _measure(exclude, body)
