"""The run report and its records, written under ``{output}/_distetl/`` (ignored by
Parquet dataset readers, like every ``_``-prefixed path).

A run writes three things under ``{output}/_distetl/{pipeline}/``:

* ``runs/<time>-<id>.chunks.parquet``: one row per chunk that ran (stage, key, status,
  rows, bytes, seconds, attempts, worker, task run, error, start time) -- a few tens of
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
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from distetl.execute import BLOCKED, FAILED, NOT_RUN, SKIPPED, WRITTEN, ChunkResult
from distetl.storage import Storage, redact

__all__ = ["RunReport", "manifest_dir", "read_chunks", "FAILED_IN_MANIFEST"]

#: Failed (and blocked) chunks listed in a run's JSON manifest; the rest are counted.
FAILED_IN_MANIFEST = 100

#: Per-chunk columns of ``runs/<time>-<id>.chunks.parquet``.
_CHUNK_COLUMNS = ("stage", "key", "status", "rows", "bytes", "seconds", "attempts", "worker",
                  "task_run_id", "error", "started", "timed_out")


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
    results: list[ChunkResult] = field(default_factory=list)
    seconds: float = 0.0
    plan_seconds: float = 0.0
    flow_run_id: Optional[str] = None
    flow_state: Optional[str] = None
    flow_state_message: Optional[str] = None
    interrupted: Optional[str] = None
    restarted_workers: list[str] = field(default_factory=list)
    prefect_api: Optional[str] = None
    #: The flow run's page in the Prefect UI, and the run's Dask dashboard (distetl.watch).
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
    #: The lease this run took over from a run that was gone (see distetl.lease), if any.
    lease_taken_over_from: Optional[dict[str, Any]] = None
    #: Flow runs of gone runs this run marked Crashed in Prefect.
    crashed_runs_marked: list[str] = field(default_factory=list)
    #: Temp files of killed writes beside this run's targets that it removed.
    leftovers_removed: int = 0

    def _count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def written(self) -> int:
        return self._count(WRITTEN)

    @property
    def skipped(self) -> int:
        """Chunks not computed: committed at plan time, or found committed by a worker."""
        return self.already_committed + self._count(SKIPPED)

    @property
    def failed(self) -> list[ChunkResult]:
        return [r for r in self.results if r.status == FAILED]

    @property
    def blocked(self) -> list[ChunkResult]:
        """Chunks not run because an input chunk failed."""
        return [r for r in self.results if r.status == BLOCKED]

    def stage_summary(self) -> list[dict[str, Any]]:
        """Per stage: total, written, skipped, failed, blocked, not run, rows."""
        out = []
        for counts in self.stages or [{"name": self.pipeline, "total": self.total, "to_run": self.to_run}]:
            mine = [r for r in self.results if (r.stage or self.pipeline) == counts["name"]]
            ran = {s: sum(1 for r in mine if r.status == s) for s in (WRITTEN, SKIPPED, FAILED, BLOCKED, NOT_RUN)}
            out.append({
                "name": counts["name"], "total": counts["total"], "written": ran[WRITTEN],
                "skipped": counts["total"] - counts["to_run"] + ran[SKIPPED], "failed": ran[FAILED],
                "blocked": ran[BLOCKED], "not_run": ran[NOT_RUN],
                "rows": sum(r.rows for r in mine),
            })
        return out

    @property
    def not_run(self) -> int:
        """Chunks left for the rerun because the run was stopped."""
        return self._count(NOT_RUN)

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.results)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.results)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked and not self.interrupted

    def to_dict(self, results: bool = True) -> dict[str, Any]:
        """The report as plain JSON data.

        Args:
            results: Include every chunk's result (``--json`` on the command line);
                without, the failed and blocked chunks only (the first
                :data:`FAILED_IN_MANIFEST`, with ``failed_not_listed`` counting the rest).
        """
        data = asdict(self)
        if not results:
            del data["results"]
            bad = [r for r in self.results if r.status in (FAILED, BLOCKED)]
            data["failed_chunks"] = [
                {k: v for k, v in r.to_dict().items() if k in ("stage", "key", "status", "error", "attempts",
                                                               "worker", "task_run_id", "timed_out")}
                for r in bad[:FAILED_IN_MANIFEST]
            ]
            data["failed_not_listed"] = max(0, len(bad) - FAILED_IN_MANIFEST)
        data["storage_options"] = redact(self.storage_options)
        data["summary"] = {
            "total": self.total, "written": self.written, "skipped": self.skipped,
            "failed": len(self.failed), "blocked": len(self.blocked), "not_run": self.not_run,
            "interrupted": self.interrupted,
            "rows": self.rows, "bytes": self.bytes,
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
        storage.write_atomic(chunks, _chunk_table(self.results))
        self.chunks_path = chunks
        self.manifest_path = path
        data = self.to_dict(results=False)
        storage.write_atomic(path, json.dumps(data, indent=1, default=str).encode())
        pointer = {"pipeline": self.pipeline, "run_id": self.run_id, "started_at": self.started_at,
                   "manifest": path, "chunks": chunks, "summary": data["summary"],
                   "stage_summary": data["stage_summary"], "interrupted": self.interrupted}
        storage.write_atomic(f"{manifest_dir(self.output, self.pipeline)}/latest.json",
                             json.dumps(pointer, indent=1, default=str).encode())
        return path


def _chunk_table(results: list[ChunkResult]) -> bytes:
    """The per-chunk results as compressed Parquet bytes (dictionary-encoded strings)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: [getattr(r, name) for r in results] for name in _CHUNK_COLUMNS}
    table = pa.table({
        "stage": pa.array(columns["stage"], pa.string()).dictionary_encode(),
        "key": pa.array(columns["key"], pa.string()),
        "status": pa.array(columns["status"], pa.string()).dictionary_encode(),
        "rows": pa.array(columns["rows"], pa.int64()),
        "bytes": pa.array(columns["bytes"], pa.int64()),
        "seconds": pa.array(columns["seconds"], pa.float32()),
        "attempts": pa.array(columns["attempts"], pa.int16()),
        "worker": pa.array(columns["worker"], pa.string()).dictionary_encode(),
        "task_run_id": pa.array(columns["task_run_id"], pa.string()).dictionary_encode(),
        "error": pa.array(columns["error"], pa.string()),
        "started": pa.array(columns["started"], pa.float64()),
        "timed_out": pa.array(columns["timed_out"], pa.bool_()),
    })
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", compression_level=9, use_byte_stream_split=["started"])
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
    return pq.read_table(io.BytesIO(raw)).to_pylist()


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
