"""A run's per-chunk results, kept off the driver's heap.

Every chunk result of a run goes through a :class:`RunLedger`: it counts them (per stage
and per task run, rows, bytes, seconds), keeps the first failed and blocked ones, and
appends every row to a compressed Parquet spill file in a private temp folder, in row
groups of :data:`ROWS_PER_GROUP`. The driver's memory is therefore the counters plus
one row group, whatever the chunk count; the per-chunk file of the run
(``runs/<time>-<id>.chunks.parquet``) and the stage indexes are written from the spill
at the end, and :meth:`RunLedger.results` reads it back for callers that want every
:class:`~distetl.engine.execute.ChunkResult` of a small run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from typing import Any, Iterator, Optional, Sequence

from distetl.state.results import BLOCKED, FAILED, NOT_RUN, PHASES, SKIPPED, WRITTEN, ChunkResult

__all__ = ["RunLedger", "ROWS_PER_GROUP", "STATUSES", "SLOWEST", "describe_chunk_times"]

#: How many of each stage's slowest chunks :meth:`RunLedger.chunk_times` names.
SLOWEST = 5

#: Rows buffered in memory before they are written to the spill file as a row group.
ROWS_PER_GROUP = 5_000

#: Characters of chunk logs and tracebacks buffered before a row group is written anyway.
MAX_BUFFERED_TEXT = 8_000_000

#: Chunk statuses, in the order counts are shown.
STATUSES = (WRITTEN, SKIPPED, FAILED, BLOCKED, NOT_RUN)

_FIELDS = ("stage", "key", "path", "status", "rows", "bytes", "seconds", "attempts", "storage_retries", "error", "worker",
           "task_run_id", "traceback", "timed_out", "started", "ended", "record", "warnings", "check_failed", "log") + tuple(f"{p}_s" for p in PHASES)


def _schema() -> Any:
    import pyarrow as pa

    text = pa.string()
    return pa.schema([
        ("stage", pa.dictionary(pa.int32(), text)), ("key", text), ("path", text),
        ("status", pa.dictionary(pa.int32(), text)), ("rows", pa.int64()), ("bytes", pa.int64()),
        ("seconds", pa.float64()), ("attempts", pa.int32()), ("storage_retries", pa.int32()), ("error", text),
        ("worker", pa.dictionary(pa.int32(), text)), ("task_run_id", pa.dictionary(pa.int32(), text)),
        ("traceback", text), ("timed_out", pa.bool_()), ("started", pa.float64()), ("ended", pa.float64()),
        ("record", text), ("warnings", text), ("check_failed", pa.bool_()), ("log", text),
        *((f"{p}_s", pa.float32()) for p in PHASES),
    ])


class RunLedger:
    """Counts, the first failures, and a spill file of every chunk result of one run.

    Thread-safe. Call :meth:`close` (or use it as a context manager) to remove the spill.

    Args:
        stages: The run's stage names (counts start at zero for each).
        keep_failed: How many failed and blocked results to keep in memory (the rest
            are counted, and are in the spill).
        folder: Where the spill goes (default: a new temp folder).
    """

    def __init__(self, stages: Sequence[str], keep_failed: int = 100, folder: Optional[str] = None):
        self.counts: dict[str, dict[str, int]] = {s: _zero() for s in stages}
        #: Per task run: stage, first and last key, chunks by status, rows, seconds.
        self.task_runs: dict[str, dict[str, Any]] = {}
        #: The first ``keep_failed`` failed or blocked results.
        self.bad: list[ChunkResult] = []
        #: The first ``keep_failed`` results committed with data check warnings.
        self.warned: list[ChunkResult] = []
        self.bad_total = 0
        self.keep_failed = keep_failed
        self.chunk_seconds = 0.0
        self._folder = folder
        self._own_folder = folder is None
        self._buffer: list[ChunkResult] = []
        self._buffered = 0
        self._writer: Any = None
        self._lock = threading.Lock()
        self._closed = False

    # -- adding ---------------------------------------------------------------------

    def add(self, result: ChunkResult, task_run: bool = True) -> None:
        """Count one chunk's final result and spill it.

        Args:
            result: The result.
            task_run: Count it in its task run's row (False for results the driver
                made up after the flow: blocked, lost, not run).
        """
        with self._lock:
            stage = result.stage
            counts = self.counts.get(stage)
            if counts is None:
                counts = self.counts[stage] = _zero()
            status = result.status if result.status in STATUSES else NOT_RUN
            counts[status] += 1
            counts["rows"] += result.rows
            counts["bytes"] += result.bytes
            counts["storage_retries"] += result.storage_retries
            if result.warnings:
                counts["warned"] += 1
                if len(self.warned) < self.keep_failed:
                    self.warned.append(result)
            counts["check_failed"] += 1 if result.check_failed else 0
            self.chunk_seconds += result.seconds
            if status in (FAILED, BLOCKED):
                self.bad_total += 1
                if len(self.bad) < self.keep_failed:
                    self.bad.append(result)
            if task_run and result.task_run_id:
                row = self.task_runs.get(result.task_run_id)
                if row is None:
                    row = self.task_runs[result.task_run_id] = {
                        "task_run_id": result.task_run_id, "stage": stage, "first": result.key,
                        "last": result.key, "chunks": 0, **{s: 0 for s in STATUSES}, "rows": 0, "seconds": 0.0}
                row["last"] = result.key
                row["chunks"] += 1
                row[status] += 1
                row["rows"] += result.rows
                row["seconds"] = round(row["seconds"] + result.seconds, 3)
            self._buffer.append(result)
            self._buffered += len(result.log or "") + len(result.traceback or "")
            if len(self._buffer) >= ROWS_PER_GROUP or self._buffered > MAX_BUFFERED_TEXT:
                self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _schema()
        columns = {name: [getattr(r, name) for r in self._buffer] for name in _FIELDS}
        table = pa.table({name: pa.array(columns[name], schema.field(name).type if not
                                         pa.types.is_dictionary(schema.field(name).type) else pa.string())
                          for name in _FIELDS})
        table = table.cast(schema)
        if self._writer is None:
            if self._folder is None:
                self._folder = tempfile.mkdtemp(prefix="distetl-ledger-")
                # The spill lives as long as the ledger (a report's results stay readable).
                weakref.finalize(self, shutil.rmtree, self._folder, True)
            self._writer = pq.ParquetWriter(os.path.join(self._folder, "results.parquet"), schema,
                                            compression="zstd")
        self._writer.write_table(table)
        self._buffer = []
        self._buffered = 0

    # -- reading ------------------------------------------------------------------------

    @property
    def total(self) -> int:
        """Results added."""
        return sum(sum(c[s] for s in STATUSES) for c in self.counts.values())

    def count(self, status: str, stage: Optional[str] = None) -> int:
        """Results with ``status`` (in ``stage``, or in every stage)."""
        if stage is not None:
            return self.counts.get(stage, _zero())[status]
        return sum(c[status] for c in self.counts.values())

    def total_of(self, field: str) -> int:
        """Sum of ``rows``, ``bytes`` or ``storage_retries`` over every result."""
        return sum(c[field] for c in self.counts.values())

    def batches(self, columns: Optional[Sequence[str]] = None) -> Iterator[Any]:
        """Every result so far as Arrow record batches (spilled ones first), with only
        ``columns`` (default: all)."""
        import pyarrow.parquet as pq

        with self._lock:
            self._flush()
            if self._writer is not None:
                self._writer.close()
                self._writer = None
                path = os.path.join(self._folder, "results.parquet")
                # Reopen for appends: the closed file becomes the first part.
                part = os.path.join(self._folder, f"part-{len(self._parts())}.parquet")
                os.replace(path, part)
            parts = self._parts()
        for part in parts:
            reader = pq.ParquetFile(part)
            for batch in reader.iter_batches(batch_size=ROWS_PER_GROUP, columns=list(columns) if columns else None):
                yield batch

    def _parts(self) -> list[str]:
        if self._folder is None or not os.path.isdir(self._folder):
            return []
        names = sorted((n for n in os.listdir(self._folder) if n.startswith("part-")),
                       key=lambda n: int(n[5:].split(".")[0]))
        return [os.path.join(self._folder, n) for n in names]

    def chunk_times(self) -> dict[str, dict[str, Any]]:
        """Where the time of each stage's written chunks went, from the spill.

        Returns:
            Per stage: ``chunks`` (written), ``mean_s``, ``median_s``, ``p95_s`` and
            ``max_s`` of their ``seconds`` on the workers, the mean of each phase
            (``phases``: extract, transform, check, write, commit, in seconds) and the
            :data:`SLOWEST` slowest chunks (``slowest``: key and seconds, slowest
            first). Memory: one float per written chunk of a stage while it is read.
        """
        import heapq

        import numpy as np
        import pyarrow.compute as pc

        seconds: dict[str, list[Any]] = {}
        phases: dict[str, dict[str, float]] = {}
        slowest: dict[str, list[tuple[float, str]]] = {}
        columns = ["stage", "key", "status", "seconds"] + [f"{p}_s" for p in PHASES]
        for batch in self.batches(columns):
            # Written chunks whose batch reported them (a chunk known only from its progress
            # event, its batch lost, has no time of its own).
            written = batch.filter(pc.and_(pc.equal(batch.column("status").cast("string"), WRITTEN),
                                           pc.greater(batch.column("seconds"), 0)))
            if not written.num_rows:
                continue
            stages = written.column("stage").cast("string").to_numpy(zero_copy_only=False)
            values = written.column("seconds").to_numpy(zero_copy_only=False)
            keys = written.column("key")
            for stage in np.unique(stages):
                mine = stages == stage
                seconds.setdefault(stage, []).append(values[mine])
                sums = phases.setdefault(stage, dict.fromkeys(PHASES, 0.0))
                for p in PHASES:
                    sums[p] += float(np.sum(written.column(f"{p}_s").to_numpy(zero_copy_only=False)[mine]))
                where = np.flatnonzero(mine)
                top = where[np.argsort(values[where])[-SLOWEST:]]
                heap = slowest.setdefault(stage, [])
                for i in top:
                    item = (float(values[i]), keys[int(i)].as_py())
                    if len(heap) < SLOWEST:
                        heapq.heappush(heap, item)
                    else:
                        heapq.heappushpop(heap, item)
        out: dict[str, dict[str, Any]] = {}
        ordered = [s for s in self.counts if s in seconds] + [s for s in seconds if s not in self.counts]
        for stage in ordered:
            parts = seconds[stage]
            every = np.concatenate(parts)
            n = len(every)
            out[stage] = {
                "chunks": n, "mean_s": round(float(every.mean()), 5),
                "median_s": round(float(np.median(every)), 5),
                "p95_s": round(float(np.percentile(every, 95)), 5), "max_s": round(float(every.max()), 5),
                "phases": {p: round(total / n, 5) for p, total in phases[stage].items()},
                "slowest": [{"key": key, "seconds": round(value, 5)}
                            for value, key in sorted(slowest[stage], reverse=True)],
            }
        return out

    def results(self) -> list[ChunkResult]:
        """Every result, read back from the spill (for small runs and tests: a million
        chunks make a million objects)."""
        out: list[ChunkResult] = []
        for batch in self.batches():
            for row in batch.to_pylist():
                out.append(ChunkResult(**row))
        return out

    def close(self) -> None:
        """Remove the spill file (the counters stay)."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._buffer = []
            self._closed = True
            if self._own_folder and self._folder:
                shutil.rmtree(self._folder, ignore_errors=True)
                self._folder = None

    def __enter__(self) -> "RunLedger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _zero() -> dict[str, int]:
    return {**{s: 0 for s in STATUSES}, "rows": 0, "bytes": 0, "warned": 0, "check_failed": 0, "storage_retries": 0}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def describe_chunk_times(times: dict[str, Any]) -> str:
    """One stage's :meth:`RunLedger.chunk_times` on one line: ``median 4.5 ms, p95 7.1 ms,
    max 26 ms; extract 3.1 ms, write 0.6 ms, commit 0.7 ms (means); slowest:
    date=2024-01-01 (26 ms), …``."""
    phases = ", ".join(f"{p} {_ms(v)}" for p, v in (times.get("phases") or {}).items() if v >= 0.00005)
    slowest = ", ".join(f"{c['key']} ({_ms(c['seconds'])})" for c in times.get("slowest") or ())
    return (f"median {_ms(times['median_s'])}, p95 {_ms(times['p95_s'])}, max {_ms(times['max_s'])}"
            + (f"; {phases} (means)" if phases else "") + (f"; slowest: {slowest}" if slowest else ""))
