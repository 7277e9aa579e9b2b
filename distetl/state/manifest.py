"""The run report and its records, written under ``{output}/_distetl/`` (ignored by
Parquet dataset readers, like every ``_``-prefixed path).

A run writes three things under ``{output}/_distetl/{pipeline}/``:

* ``runs/<time>-<id>.chunks.parquet``: one row per chunk that ran (stage, key, status,
  rows, bytes, seconds, attempts, storage retries, worker, task run, error, start time) -- a few tens of
  bytes per chunk, compressed;
* ``runs/<time>-<id>.json``: the summary, per-stage counts, the failed chunks (the first
  :data:`FAILED_IN_MANIFEST`, with a count of the rest) and where the per-chunk file is;
* ``latest.json``: a pointer to the newest run's manifest (with its summary), not a copy.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from distetl.state.results import BLOCKED, FAILED, NOT_RUN, PHASES, SKIPPED, WRITTEN, ChunkResult
from distetl.state.ledger import RunLedger
from distetl.storage import Storage, redact

__all__ = ["RunReport", "manifest_dir", "read_chunks", "FAILED_IN_MANIFEST"]

#: Failed (and blocked) chunks listed in a run's JSON manifest; the rest are counted.
FAILED_IN_MANIFEST = 100

#: Per-chunk columns of ``runs/<time>-<id>.chunks.parquet``.
_CHUNK_COLUMNS = ("stage", "key", "status", "rows", "bytes", "seconds", "attempts", "storage_retries", "worker",
                  "task_run_id", "error", "started", "timed_out", "log") + tuple(f"{p}_s" for p in PHASES)


def manifest_dir(output: str, pipeline_name: str) -> str:
    """Where a pipeline's run manifests go under an output root."""
    return f"{output.rstrip('/')}/_distetl/{pipeline_name}"


@dataclass
class RunReport:
    """Everything about one run: counts, per-chunk results, timings, where things are."""

    pipeline: str
    output: str
    runner: str
    run_id: str
    started_at: str
    plan: dict[str, Any] = field(default_factory=dict)
    total: int = 0
    to_run: int = 0
    already_committed: int = 0
    seconds: float = 0.0
    plan_seconds: float = 0.0
    flow_run_id: Optional[str] = None
    flow_state: Optional[str] = None
    flow_state_message: Optional[str] = None
    interrupted: Optional[str] = None
    restarted_workers: list[str] = field(default_factory=list)
    prefect_api: Optional[str] = None
    #: The flow run's page in the Prefect UI, and the run's Dask dashboard (distetl.engine.watch).
    flow_run_url: Optional[str] = None
    dashboard_url: Optional[str] = None
    task_runs: int = 0
    task_runs_recorded: Optional[int] = None
    dry_run: bool = False
    manifest_path: Optional[str] = None
    #: The per-chunk results file (Parquet) of this run, once written.
    chunks_path: Optional[str] = None
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    #: Per stage at plan time: name, total, committed, fresh, stale, missing, to_run.
    stages: list[dict[str, Any]] = field(default_factory=list)
    #: Per stage, the stale chunks this run left as they were (no ``--stale``), by cause.
    stale_left: dict[str, dict[str, int]] = field(default_factory=dict)
    #: The lease this run took over from a run that was gone (see distetl.state.lease), if any.
    lease_taken_over_from: Optional[dict[str, Any]] = None
    #: Flow runs of gone runs this run marked Crashed in Prefect.
    crashed_runs_marked: list[str] = field(default_factory=list)
    #: Temp files of killed writes beside this run's targets that it removed.
    leftovers_removed: int = 0
    #: Targets that were not readable Parquet files, moved aside before their chunks ran
    #: again (where each went: ``{output}/_distetl/{pipeline}/corrupt/{stage}/``).
    corrupt_moved: list[str] = field(default_factory=list)
    #: Per stage, where its written chunks' time went (:meth:`RunLedger.chunk_times`:
    #: mean, median, p95 and max seconds, mean per phase, the slowest chunks); filled
    #: in when the manifest is written.
    chunk_times: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Set when the run's Dask scheduler went away mid-run (naming it): the run ended
    #: there, its committed chunks stay, the rest are not run (exit code 1).
    scheduler_lost: Optional[str] = None

    #: Every chunk result of the run, counted and spilled to disk (see distetl.state.ledger).
    ledger: RunLedger = field(default_factory=lambda: RunLedger(()), repr=False, compare=False)

    @property
    def results(self) -> list[ChunkResult]:
        """Every chunk's result, read back from the run's ledger (one object per chunk:
        for small runs; counts and the first failures are in the ledger's counters)."""
        return self.ledger.results()

    @results.setter
    def results(self, results: list[ChunkResult]) -> None:
        self.ledger = RunLedger([s["name"] for s in self.stages])
        for result in results:
            self.ledger.add(result)

    @property
    def written(self) -> int:
        return self.ledger.count(WRITTEN)

    @property
    def skipped(self) -> int:
        """Chunks not computed: committed at plan time, or found committed by a worker."""
        return self.already_committed + self.ledger.count(SKIPPED)

    @property
    def failed(self) -> list[ChunkResult]:
        """The failed chunks (the first :data:`FAILED_IN_MANIFEST`; :attr:`failed_count`
        counts them all)."""
        return [r for r in self.ledger.bad if r.status == FAILED]

    @property
    def blocked(self) -> list[ChunkResult]:
        """Chunks not run because an input chunk failed (the first ones, see :attr:`failed`)."""
        return [r for r in self.ledger.bad if r.status == BLOCKED]

    @property
    def failed_count(self) -> int:
        return self.ledger.count(FAILED)

    @property
    def blocked_count(self) -> int:
        return self.ledger.count(BLOCKED)

    def stage_summary(self) -> list[dict[str, Any]]:
        """Per stage: total, written, skipped (committed already), failed, blocked, not
        run, not needed (missing, and needed by no chunk this run does: an upstream
        stage's chunks outside the range its readers ran), rows, and the chunks that
        failed a data check (counted in failed too) or committed with a warning-level one
        (``check_failed``, ``warned``)."""
        out = []
        for counts in self.stages or [{"name": self.pipeline, "total": self.total, "to_run": self.to_run}]:
            ran = dict(self.ledger.counts.get(counts["name"]) or {})
            if counts["name"] == self.pipeline:  # results without a stage are the pipeline's
                for name, value in (self.ledger.counts.get("") or {}).items():
                    ran[name] = ran.get(name, 0) + value
            left = counts["total"] - counts["to_run"]  # not run: committed, or not needed
            kept = counts.get("committed", left) - counts.get("committed_to_run", 0)
            out.append({
                "name": counts["name"], "total": counts["total"], "written": ran.get(WRITTEN, 0),
                "skipped": kept + ran.get(SKIPPED, 0), "failed": ran.get(FAILED, 0),
                "blocked": ran.get(BLOCKED, 0), "not_run": ran.get(NOT_RUN, 0), "not_needed": left - kept,
                "rows": ran.get("rows", 0), "check_failed": ran.get("check_failed", 0),
                "warned": ran.get("warned", 0),
            })
        return out

    @property
    def not_run(self) -> int:
        """Chunks left for the rerun because the run was stopped."""
        return self.ledger.count(NOT_RUN)

    @property
    def rows(self) -> int:
        return self.ledger.total_of("rows")

    @property
    def storage_retries(self) -> int:
        """Storage requests of the chunks that failed transiently and were tried again
        (S3: 5xx, throttled, connection resets, timeouts), over the whole run."""
        return self.ledger.total_of("storage_retries")

    @property
    def bytes(self) -> int:
        return self.ledger.total_of("bytes")

    @property
    def ok(self) -> bool:
        return not self.failed_count and not self.blocked_count and not self.interrupted and not self.scheduler_lost

    def to_dict(self, results: bool = True) -> dict[str, Any]:
        """The report as plain JSON data.

        Args:
            results: Include every chunk's result (``--json`` on the command line);
                without, the failed and blocked chunks only (the first
                :data:`FAILED_IN_MANIFEST`, with ``failed_not_listed`` counting the rest).
        """
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "ledger"}
        data = asdict_plain(data)
        if results:
            data["results"] = [r.to_dict() for r in self.results]
        else:
            data["failed_chunks"] = [
                {k: v for k, v in r.to_dict().items() if k in ("stage", "key", "status", "error", "attempts",
                                                               "storage_retries", "worker", "task_run_id",
                                                               "timed_out")}
                for r in self.ledger.bad[:FAILED_IN_MANIFEST]
            ]
            data["failed_not_listed"] = max(0, self.ledger.bad_total - len(data["failed_chunks"]))
        data["storage_options"] = redact(self.storage_options)
        data["summary"] = {
            "total": self.total, "written": self.written, "skipped": self.skipped,
            "failed": self.failed_count, "blocked": self.blocked_count, "not_run": self.not_run,
            "interrupted": self.interrupted,
            "rows": self.rows, "bytes": self.bytes, "storage_retries": self.storage_retries,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows / self.seconds, 1) if self.seconds else None,
        }
        data["stage_summary"] = self.stage_summary()
        data["host"] = {"python": platform.python_version(), "cpus": os.cpu_count()}
        return data

    def record_paths(self) -> tuple[str, str]:
        """Where this run's JSON manifest and per-chunk Parquet file go (known before the
        run ends, so the Prefect artifact can link them)."""
        stamp = self.started_at.replace(":", "").replace("-", "")
        base = f"{manifest_dir(self.output, self.pipeline)}/runs/{stamp}-{self.run_id[:8]}"
        return f"{base}.json", f"{base}.chunks.parquet"

    def write_manifest(self, storage: Storage) -> str:
        """Write the per-chunk Parquet file, the JSON manifest and the ``latest.json``
        pointer; returns the manifest's path."""
        path, chunks = self.record_paths()
        storage.write_atomic(chunks, _chunk_table(self.ledger))
        if not self.chunk_times:
            self.chunk_times = self.ledger.chunk_times()
        self.chunks_path = chunks
        self.manifest_path = path
        data = self.to_dict(results=False)
        storage.write_atomic(path, json.dumps(data, indent=1, default=str).encode())
        pointer = {"pipeline": self.pipeline, "run_id": self.run_id, "started_at": self.started_at,
                   "manifest": path, "chunks": chunks, "summary": data["summary"],
                   "stage_summary": data["stage_summary"], "interrupted": self.interrupted,
                   "chunk_times": self.chunk_times}
        storage.write_atomic(f"{manifest_dir(self.output, self.pipeline)}/latest.json",
                             json.dumps(pointer, indent=1, default=str).encode())
        return path


def _chunk_table(ledger: RunLedger) -> bytes:
    """The per-chunk results as compressed Parquet bytes (dictionary-encoded strings),
    written from the ledger's spill one record batch at a time."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("stage", pa.dictionary(pa.int32(), pa.string())), ("key", pa.string()),
        ("status", pa.dictionary(pa.int32(), pa.string())), ("rows", pa.int64()), ("bytes", pa.int64()),
        ("seconds", pa.float32()), ("attempts", pa.int16()), ("storage_retries", pa.int32()),
        ("worker", pa.dictionary(pa.int32(), pa.string())),
        ("task_run_id", pa.dictionary(pa.int32(), pa.string())), ("error", pa.string()),
        ("started", pa.float64()), ("timed_out", pa.bool_()), ("log", pa.string()),
        *((f"{p}_s", pa.float32()) for p in PHASES),
    ])
    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, schema, compression="zstd", compression_level=9,
                          use_byte_stream_split=["started", *(f"{p}_s" for p in PHASES)]) as writer:
        for batch in ledger.batches(_CHUNK_COLUMNS):
            writer.write_table(pa.Table.from_batches([batch]).select(list(_CHUNK_COLUMNS)).cast(schema))
    return buffer.getvalue()


def read_chunks(storage: Storage, path: str) -> list[dict[str, Any]]:
    """The per-chunk results of a run, from its ``.chunks.parquet`` file (or from a
    manifest's or ``latest.json``'s path: the file is found from it)."""
    import io

    import pyarrow.parquet as pq

    if path.endswith(".json"):
        data = json.loads(storage.read_bytes(path) or b"{}")
        path = data.get("chunks") or data.get("chunks_path") or path[:-len(".json")] + ".chunks.parquet"
    raw = storage.read_bytes(path)
    if raw is None:
        return []
    return pq.read_table(io.BytesIO(raw), use_threads=False).to_pylist()


def asdict_plain(data: dict[str, Any]) -> dict[str, Any]:
    """Dataclass values in ``data`` as plain dicts (as :func:`dataclasses.asdict` would)."""
    import copy
    import dataclasses

    return {k: asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else copy.deepcopy(v)
            for k, v in data.items()}


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
