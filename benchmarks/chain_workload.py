"""The ``chain`` workload: a stage whose every chunk reads its own previous chunk.

* ``chain``: one chunk per day of a :class:`~distetl.DateRange` (with ``values`` > 0, a
  :class:`~distetl.Product` of the days × that many values of ``series``), each one row:
  the day's number ``n`` and the running ``total`` (its predecessor's total + ``n``),
  read from the predecessor's file through ``Input("chain", Previous())`` (with values:
  ``Previous(per="series")``, one chain per value, run side by side).
  ``{output}/chain/date={date}/part-0.parquet`` (with values:
  ``.../date={date}/series={series}/part-0.parquet``).

The per-link function (:func:`link_total`) is the same in every variant: distetl ships it
to Dask workers by reference (``benchmarks/`` is on every worker's ``sys.path``); the
Luigi variant (:func:`run_luigi_chain`) calls it from a task per link that requires the
previous link's task.

**Link latency** of link N+1 = its start − the end (after the commit) of link N, both
wall-clock times: for distetl each chunk result's ``started``/``ended`` from the run's
per-chunk records (:func:`distetl_links`), for Luigi the same two instants written by its
tasks beside their outputs (:func:`luigi_links`).
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import statistics
import time
from typing import Any, Mapping, Optional, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from distetl import ChunkList, DateRange, Input, Pipeline, Previous, Product, Stage

__all__ = [
    "LinkTask", "SCHEMA", "START", "TARGET", "chain_extract", "chain_pipeline", "distetl_links", "end_date",
    "latency_summary", "link_total", "luigi_links", "run_luigi_chain", "totals",
]

#: The first day of every chain.
START = dt.date(2000, 1, 1)

#: One row per link: the day's number and the running total.
SCHEMA = pa.schema([("n", pa.int64()), ("total", pa.int64())])

TARGET = "{output}/chain/date={date}/part-0.parquet"
TARGET_PER_SERIES = "{output}/chain/date={date}/series={series}/part-0.parquet"

#: Folder under a Luigi output root where its tasks leave their start and end times.
TIMES_DIR = "_times"


def _day_number(date: str) -> int:
    return dt.date.fromisoformat(date).toordinal() - START.toordinal() + 1


def link_total(chunk: Any, before: Optional[pd.DataFrame]) -> pd.DataFrame:
    """One link: the day's number ``n`` and ``total`` = the previous link's total + n
    (``before`` is the previous link's rows, None for a chain's first link)."""
    n = _day_number(chunk["date"])
    total = int(before["total"].iloc[0]) if before is not None else 0
    return pd.DataFrame({"n": [n], "total": [total + n]})


def chain_extract(chunk: Any, ctx: Any) -> pd.DataFrame:
    """distetl's extract: the previous link read through the ``before`` input."""
    before = ctx.read_inputs("before", columns=["total"]) if ctx.inputs["before"] else None
    return link_total(chunk, before)


def end_date(days: int) -> dt.date:
    """The last day of a chain of ``days`` links."""
    return START + dt.timedelta(days=days - 1)


def chain_pipeline(days: int, values: int = 0, name: str = "chain") -> Pipeline:
    """One chain of ``days`` links (``values`` = 0), or ``values`` chains of ``days``
    links each, one per value of ``series`` (a Product of the days × the values)."""
    days_plan = DateRange(start=START.isoformat(), end=end_date(days).isoformat())
    if values:
        plan = Product(days_plan, ChunkList([{"series": f"s{i}"} for i in range(values)]))
        previous, target = Previous(per="series"), TARGET_PER_SERIES
    else:
        plan, previous, target = days_plan, Previous(), TARGET
    stage = Stage("chain", plan=plan, extract=chain_extract, inputs={"before": Input("chain", previous)},
                  schema=SCHEMA, target=target)
    what = f"{values} chains" if values else "a chain"
    return Pipeline(name=name, stages=[stage], description=f"{what} of {days} running-total links")


# -- reading an output back ---------------------------------------------------------------------


def totals(output: str) -> dict[str, tuple[int, int]]:
    """Per chain (``""`` for the single chain, else the series), its committed links and
    its last total: ``{series: (links, last total)}``."""
    found: dict[str, list[tuple[str, int]]] = {}
    for path in glob.glob(os.path.join(output, "chain", "date=*", "**", "part-0.parquet"), recursive=True):
        parts = os.path.relpath(path, os.path.join(output, "chain")).split(os.sep)
        date = parts[0][len("date="):]
        series = parts[1][len("series="):] if len(parts) > 2 else ""
        found.setdefault(series, []).append((date, int(pq.read_table(path).column("total")[0].as_py())))
    return {series: (len(rows), max(rows)[1]) for series, rows in found.items()}


def _latencies(links: Mapping[str, list[tuple[str, float, float]]]) -> list[float]:
    """Start of link N+1 − end of link N, seconds, over every chain (links by chain: (day,
    started, ended))."""
    out = []
    for rows in links.values():
        rows = sorted(rows)
        out.extend(b[1] - a[2] for a, b in zip(rows, rows[1:]))
    return out


def latency_summary(latencies: Sequence[float]) -> dict[str, Any]:
    """Median, 90th percentile, max (ms) and count of link latencies, their sum (s), and
    how many took over 50 ms and their mean (ms): for distetl, the hand-offs between
    chain segments (a batch returned to the driver, the next one sent as a Prefect task),
    not links within one."""
    ms = sorted(x * 1000 for x in latencies)
    if not ms:
        return {"links": 0}
    slow = [x for x in ms if x > 50]
    return {"links": len(ms), "median_ms": round(statistics.median(ms), 3),
            "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 3), "max_ms": round(ms[-1], 3),
            "sum_s": round(sum(ms) / 1000, 3), "over_50ms": len(slow),
            "over_50ms_mean_ms": round(statistics.mean(slow), 1) if slow else None}


def distetl_links(output: str, pipeline: str = "chain") -> tuple[dict[str, Any], list[float]]:
    """Link latencies of distetl's last run into ``output``, from its per-chunk records
    (the run's ``.chunks.parquet``: ``started``, and ``seconds``, so a link ended at
    ``started + seconds``: the two clocks of ``ChunkResult.started``/``ended`` read
    microseconds apart), and the run's per-chunk seconds summed.

    Returns:
        (``{"chunks", "compute_s", "workers"}``, latencies in seconds).
    """
    from distetl.state.manifest import read_chunks
    from distetl.storage import Storage

    rows = read_chunks(Storage.for_url(output), os.path.join(output, "_distetl", pipeline, "latest.json"))
    links: dict[str, list[tuple[str, float, float]]] = {}
    for r in rows:
        fields = dict(part.split("=", 1) for part in r["key"].split("/"))
        ended = r["started"] + r["seconds"]
        links.setdefault(fields.get("series", ""), []).append((fields["date"], r["started"], ended))
    info = {"chunks": len(rows), "compute_s": round(sum(r["seconds"] for r in rows), 3),
            "workers": len({r["worker"] for r in rows})}
    return info, _latencies(links)


def luigi_links(output: str) -> tuple[dict[str, Any], list[float]]:
    """Link latencies of the Luigi variant's run into ``output``, from the times its
    tasks wrote, and the links' own seconds summed (start to end of each task's work).

    Returns:
        (``{"chunks", "compute_s"}``, latencies in seconds).
    """
    links: dict[str, list[tuple[str, float, float]]] = {"": []}
    for path in glob.glob(os.path.join(output, TIMES_DIR, "*.json")):
        with open(path) as handle:
            t = json.load(handle)
        links[""].append((t["date"], t["started"], t["ended"]))
    info = {"chunks": len(links[""]), "compute_s": round(sum(e - s for _, s, e in links[""]), 3)}
    return info, _latencies(links)


# -- Luigi ----------------------------------------------------------------------------------------

try:
    import luigi
except ImportError:  # the Luigi variant is optional outside the benchmark session
    luigi = None

if luigi is not None:

    class LinkTask(luigi.Task):
        """One link of the chain: requires the previous day's link; reads its output
        (the ``total`` column, with pyarrow), computes :func:`link_total`, casts to
        :data:`SCHEMA` and writes Parquet through ``LocalTarget.temporary_path()`` (an
        atomic rename) at distetl's target path, then its start and end times."""

        date = luigi.Parameter()
        root = luigi.Parameter()

        def requires(self) -> list["LinkTask"]:
            day = dt.date.fromisoformat(self.date)
            if day <= START:
                return []
            return [LinkTask(date=(day - dt.timedelta(days=1)).isoformat(), root=self.root)]

        def output(self) -> "luigi.LocalTarget":
            return luigi.LocalTarget(TARGET.format(output=self.root, date=self.date))

        def run(self) -> None:
            started = time.time()
            previous = self.input()
            before = pq.read_table(previous[0].path, columns=["total"]).to_pandas() if previous else None
            frame = link_total({"date": self.date}, before)
            table = pa.Table.from_pandas(frame[SCHEMA.names], schema=SCHEMA, preserve_index=False)
            target = self.output()
            target.makedirs()
            with target.temporary_path() as tmp:
                pq.write_table(table, tmp, compression="snappy")
            ended = time.time()
            with open(os.path.join(self.root, TIMES_DIR, f"{self.date}.json"), "w") as handle:
                json.dump({"date": self.date, "started": started, "ended": ended}, handle)
else:  # pragma: no cover
    LinkTask = None  # type: ignore[assignment]


def run_luigi_chain(w: Any, days: int, exclude: Sequence[int] = (), workers: int = 1) -> Any:
    """The chain on Luigi's local scheduler with ``workers`` workers, into a fresh
    output: ``luigi.build([LinkTask(last day)])``. With one worker Luigi runs each task
    in the calling process (its fastest way through a chain, which has no parallelism); with
    more it forks a process per task. Chunks = links; written = outputs present after
    the run."""
    from benchlib import Measurement, _measure

    output = w.output("luigi")
    os.makedirs(os.path.join(output, TIMES_DIR), exist_ok=True)
    sink = LinkTask(date=end_date(days).isoformat(), root=output)

    def body() -> Measurement:
        start = time.perf_counter()
        result = luigi.build([sink], local_scheduler=True, workers=workers, log_level="WARNING",
                             no_lock=True, detailed_summary=True)
        m = Measurement(w.name, "luigi", days, time.perf_counter() - start)
        found = totals(output).get("", (0, 0))
        m.written, m.rows = found[0], found[0]
        m.failed = days - m.written
        m.notes.update(output=output, last_total=found[1], luigi_status=str(result.status),
                       scheduling_succeeded=bool(result.scheduling_succeeded), workers=workers)
        return m

    return _measure(exclude, body)
