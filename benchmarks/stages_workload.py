"""The ``stages`` workload: a graph of tiny day chunks (days → clean → monthly, and a join).

* ``days``: the root stage, one chunk per day of a :class:`~distetl.DateRange`, each
  :data:`~workloads.TINY_ROWS` rows (the tiny workload's extract, keyed by the day), one
  file ``{output}/days/date={date}/part-0.parquet`` per day.
* ``clean``: one chunk per day (:class:`~distetl.Identity`), reading its day's file
  (the default extract of a downstream stage, ``ctx.read_inputs()``) through a tiny
  transform, ``{output}/clean/date={date}/part-0.parquet``.
* ``monthly``: one chunk per calendar month (:class:`~distetl.CalendarWindow`), reading
  that month's ``clean`` days: per day its rows and the sum of ``value``,
  ``{output}/monthly/month={month}/part-0.parquet``.
* ``dim``: a one-chunk dimension (:data:`BUCKETS` bucket names),
  ``{output}/dim/part=all/part-0.parquet``.
* ``joined``: one chunk per day, a join of two partitioned inputs and the dimension:
  its day of ``days`` (Identity), its day of ``clean`` (Identity) and all of ``dim``
  (:class:`~distetl.AllChunks`): per row the raw and clean values and the bucket's name,
  ``{output}/joined/date={date}/part-0.parquet``.

The per-chunk functions are plain module-level functions, so every variant uses the very
same ones: distetl ships them to Dask workers by reference (``benchmarks/`` is on every
worker's ``sys.path``), the Luigi variant (:mod:`luigi_stages`) calls them from its
tasks, and raw Dask runs the root stage's.

This module also holds the variants only this workload has: distetl stage by stage
(:func:`run_by_stage`) and the per-stage breakdown of a run's chunk results
(:func:`stage_breakdown`).
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import time
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from distetl import AllChunks, CalendarWindow, Chunk, ChunkList, DateRange, Identity, Input, Pipeline, Stage

__all__ = [
    "BUCKETS", "CLEAN_SCHEMA", "DAY_ROWS", "DAY_SCHEMA", "DIM_SCHEMA", "JOIN_SCHEMA", "MONTHLY_SCHEMA", "STAGES",
    "START", "TARGETS", "clean_transform", "day_extract", "days_pipeline", "dim_extract", "end_date", "join_extract",
    "month_days", "month_transform", "months", "run_by_stage", "stage_breakdown", "stage_rows", "stages_pipeline",
]

#: The first day of the root stage; the last is ``START + days - 1``.
START = dt.date(2000, 1, 1)

#: The stages, upstream first.
STAGES = ("days", "clean", "monthly", "dim", "joined")

#: Rows per day (the tiny workload's chunk size).
DAY_ROWS = 20

DAY_SCHEMA = pa.schema([("id", pa.int64()), ("value", pa.float64()), ("label", pa.string())])
CLEAN_SCHEMA = pa.schema([("id", pa.int64()), ("value", pa.float64()), ("label", pa.string())])
MONTHLY_SCHEMA = pa.schema([("date", pa.string()), ("rows", pa.int64()), ("value_sum", pa.float64())])
DIM_SCHEMA = pa.schema([("bucket", pa.int64()), ("bucket_name", pa.string())])
JOIN_SCHEMA = pa.schema([("id", pa.int64()), ("bucket_name", pa.string()), ("value_raw", pa.float64()),
                         ("value_clean", pa.float64())])

#: Rows of the one-chunk dimension (row *id* falls in bucket ``id % BUCKETS``).
BUCKETS = 10

#: Target templates, relative to the output root.
TARGETS = {
    "days": "{output}/days/date={date}/part-0.parquet",
    "clean": "{output}/clean/date={date}/part-0.parquet",
    "monthly": "{output}/monthly/month={month}/part-0.parquet",
    "dim": "{output}/dim/part={part}/part-0.parquet",
    "joined": "{output}/joined/date={date}/part-0.parquet",
}


# -- the per-chunk functions (shared by every variant) ------------------------------------


def day_extract(chunk: Chunk) -> pd.DataFrame:
    """A day's :data:`DAY_ROWS` rows (the tiny workload's extract, ids from the day)."""
    first = dt.date.fromisoformat(chunk["date"]).toordinal() * DAY_ROWS
    ids = np.arange(first, first + DAY_ROWS, dtype="int64")
    return pd.DataFrame({"id": ids, "value": ids * 0.5, "label": [f"row-{i}" for i in ids]})


def clean_transform(frame: pd.DataFrame) -> pd.DataFrame:
    """A tiny per-day clean-up: trimmed labels, values rounded to cents."""
    out = frame.copy()
    out["label"] = out["label"].str.strip()
    out["value"] = out["value"].round(2)
    return out


def month_transform(frame: pd.DataFrame) -> pd.DataFrame:
    """Per day of the month (the ``date`` partition column its inputs carry): rows and
    the sum of ``value``."""
    grouped = frame.assign(date=frame["date"].astype(str)).groupby("date", sort=True)
    return pd.DataFrame({"rows": grouped.size(), "value_sum": grouped["value"].sum()}).reset_index()


def dim_extract(chunk: Chunk) -> pd.DataFrame:
    """The dimension: :data:`BUCKETS` bucket names."""
    return pd.DataFrame({"bucket": np.arange(BUCKETS, dtype="int64"),
                         "bucket_name": [f"bucket-{b:02d}" for b in range(BUCKETS)]})


def join_extract(chunk: Chunk, ctx: Any) -> pd.DataFrame:
    """A day's raw rows joined with its clean rows and the bucket names."""
    raw = ctx.read_inputs("days", ["id", "value"])
    clean = ctx.read_inputs("clean", ["id", "value"])
    dim = ctx.read_inputs("dim", ["bucket", "bucket_name"])
    out = raw.merge(clean, on="id", suffixes=("_raw", "_clean"))
    out["bucket"] = out["id"] % BUCKETS
    out = out.merge(dim, on="bucket").sort_values("id")
    return out[JOIN_SCHEMA.names]


# -- the pipelines -------------------------------------------------------------------------


def end_date(days: int) -> dt.date:
    """The last day of a root stage of ``days`` days."""
    return START + dt.timedelta(days=days - 1)


def _days_stage(days: int) -> Stage:
    return Stage(
        name="days",
        plan=DateRange(start=START.isoformat(), end=end_date(days).isoformat()),
        extract=day_extract,
        schema=DAY_SCHEMA,
        target=TARGETS["days"],
    )


def stages_pipeline(days: int, name: str = "stages") -> Pipeline:
    """days → clean (identity) → monthly (calendar month), ``days`` day chunks; dim (one
    chunk); joined (per day: days, clean and all of dim)."""
    days_stage = _days_stage(days)
    clean = Stage(name="clean", upstream=days_stage, mapping=Identity(), transform=clean_transform,
                  schema=CLEAN_SCHEMA, target=TARGETS["clean"])
    monthly = Stage(name="monthly", upstream=clean, mapping=CalendarWindow("month"), transform=month_transform,
                    schema=MONTHLY_SCHEMA, target=TARGETS["monthly"])
    dim = Stage(name="dim", plan=ChunkList(["all"], key_field="part"), extract=dim_extract, schema=DIM_SCHEMA,
                target=TARGETS["dim"])
    joined = Stage(name="joined", inputs={"days": days_stage, "clean": clean, "dim": Input(dim, AllChunks())},
                   extract=join_extract, schema=JOIN_SCHEMA, target=TARGETS["joined"])
    return Pipeline(name=name, stages=[days_stage, clean, monthly, dim, joined],
                    description=f"{days} tiny days → clean → monthly; days + clean + dim → joined")


def days_pipeline(days: int, name: str = "stages_days") -> Pipeline:
    """The root stage alone as a one-stage pipeline (same plan, extract, schema and
    targets), for the variants that run only it (raw Dask)."""
    return Pipeline(
        name=name,
        plan=DateRange(start=START.isoformat(), end=end_date(days).isoformat()),
        extract=day_extract,
        schema=DAY_SCHEMA,
        target=TARGETS["days"],
        description=f"{days} tiny days",
    )


# -- reading an output back -------------------------------------------------------------------


def stage_rows(output: str, stages: Sequence[str] = STAGES) -> dict[str, dict[str, int]]:
    """Per stage, the committed Parquet files under ``{output}/{stage}/`` and their rows
    (from the footers; hidden and temporary files are not counted)."""
    out = {}
    for stage in stages:
        files = [f for f in glob.glob(os.path.join(output, stage, "*", "*.parquet"))
                 if not os.path.basename(f).startswith(".")]
        out[stage] = {"files": len(files), "rows": sum(pq.ParquetFile(f).metadata.num_rows for f in files)}
    return out


# -- per-stage figures of a distetl run ----------------------------------------------------------


def stage_breakdown(results: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Per stage, from a run's chunk results (``ChunkResult.stage``, ``.seconds``,
    ``.started``, ``.ended``, ``.worker``):

    * ``chunks``, ``written``, ``failed``, ``rows``;
    * ``compute_s``: the chunks' own seconds on the worker (extract, transform, cast,
      serialisation and commit): the work every variant does;
    * ``first_start_s``, ``last_end_s``: when the stage's first chunk started and its
      last ended, seconds after the run's first chunk started;
    * ``gap_s``: worker time not spent in any chunk, charged to the chunk that ended
      the wait: on each worker, from the end of its previous chunk (or from the run's
      first chunk start, for its first chunk) to the start of this one. It is what
      it cost to get that chunk running: handing out its batch, waiting for its inputs
      to commit, reading its inputs' records, checking its target.

    The key ``""`` holds the run-wide ``span_s`` (first chunk start to last chunk end),
    ``tail_s`` (worker time idle after its last chunk until the run's last chunk ended)
    and ``workers``.
    """
    timed = [r for r in results if r.started and r.ended]
    t0 = min((r.started for r in timed), default=0.0)
    t1 = max((r.ended for r in timed), default=0.0)
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        s = out.setdefault(r.stage or "?", {"chunks": 0, "written": 0, "failed": 0, "rows": 0, "compute_s": 0.0,
                                            "gap_s": 0.0, "first_start_s": None, "last_end_s": None})
        s["chunks"] += 1
        s["written"] += r.status == "written"
        s["failed"] += r.status == "failed"
        s["rows"] += r.rows
        s["compute_s"] += r.seconds
        if r.started and r.ended:
            begin, end = r.started - t0, r.ended - t0
            s["first_start_s"] = begin if s["first_start_s"] is None else min(s["first_start_s"], begin)
            s["last_end_s"] = end if s["last_end_s"] is None else max(s["last_end_s"], end)
    by_worker: dict[str, list[Any]] = {}
    for r in timed:
        by_worker.setdefault(r.worker, []).append(r)
    tail = 0.0
    for chunks in by_worker.values():
        chunks.sort(key=lambda r: r.started)
        previous = t0
        for r in chunks:
            out[r.stage or "?"]["gap_s"] += max(0.0, r.started - previous)
            previous = max(previous, r.ended)
        tail += t1 - previous
    for s in out.values():
        for key in ("compute_s", "gap_s", "first_start_s", "last_end_s"):
            if s[key] is not None:
                s[key] = round(s[key], 4)
    out[""] = {"span_s": round(t1 - t0, 4), "tail_s": round(tail, 4), "workers": len(by_worker)}
    return out


# -- distetl stage by stage ------------------------------------------------------------------------


def run_by_stage(w: Any, exclude: Sequence[int] = (), stages: Sequence[str] = STAGES,
                 output: Optional[str] = None) -> Any:
    """One ``distetl.run(..., stages=[name])`` per stage, upstream first, into one fresh
    output: the way to run a graph with a barrier after every stage. Wall, cluster and
    phase time are those of the runs together (each starts and closes its own
    LocalCluster); ``notes["runs"]`` has each run's."""
    import distetl

    from benchlib import WORKERS, ClusterTimer, Measurement, _from_results, _measure

    output = output or w.output("distetl_by_stage")
    runs: list[dict[str, Any]] = []
    results: list[Any] = []

    def body() -> Measurement:
        start = time.perf_counter()
        for name in stages:
            with ClusterTimer() as clusters:
                began = time.perf_counter()
                report = distetl.run(w.pipeline, output, runner="local", workers=WORKERS, params=w.params,
                                     storage_options=dict(w.storage_options), stages=[name])
                wall = time.perf_counter() - began
            results.extend(report.results)
            runs.append({"stage": name, "wall_s": round(wall, 4), "cluster_s": round(clusters.seconds, 4),
                         "phase_s": round(wall - clusters.seconds, 4), "to_run": report.to_run,
                         "task_runs": report.task_runs, "task_runs_recorded": report.task_runs_recorded,
                         "stage_summary": report.stage_summary(),
                         "breakdown": stage_breakdown(report.results)})
        m = Measurement(w.name, "distetl_by_stage", len(results), time.perf_counter() - start)
        m.notes.update(runs=runs, output=output, stages=stage_breakdown(results),
                       task_runs=sum(r["task_runs"] for r in runs),
                       task_runs_recorded=sum(r["task_runs_recorded"] for r in runs))
        return _from_results(m, results)

    return _measure(exclude, body)


def month_days(month: str, first: dt.date, last: dt.date) -> list[str]:
    """The ISO days of ``month`` (``YYYY-MM``) between ``first`` and ``last``."""
    year, mon = (int(x) for x in month.split("-"))
    day = max(dt.date(year, mon, 1), first)
    stop = min((dt.date(year + mon // 12, mon % 12 + 1, 1) - dt.timedelta(days=1)), last)
    out = []
    while day <= stop:
        out.append(day.isoformat())
        day += dt.timedelta(days=1)
    return out


def months(first: dt.date, last: dt.date) -> list[str]:
    """Every ``YYYY-MM`` from ``first``'s month to ``last``'s."""
    out, year, mon = [], first.year, first.month
    while (year, mon) <= (last.year, last.month):
        out.append(f"{year:04d}-{mon:02d}")
        year, mon = (year + 1, 1) if mon == 12 else (year, mon + 1)
    return out
