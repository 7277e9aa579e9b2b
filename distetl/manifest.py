"""The run report and its manifest, written under ``{output}/_distetl/`` (ignored by
Parquet dataset readers, like every ``_``-prefixed path)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from distetl.execute import BLOCKED, FAILED, NOT_RUN, SKIPPED, WRITTEN, ChunkResult
from distetl.storage import Storage, redact

__all__ = ["RunReport", "manifest_dir"]


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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
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

    def write_manifest(self, storage: Storage) -> str:
        """Write this report as JSON beside the output; returns its path."""
        stamp = self.started_at.replace(":", "").replace("-", "")
        path = f"{manifest_dir(self.output, self.pipeline)}/runs/{stamp}-{self.run_id[:8]}.json"
        data = json.dumps(self.to_dict(), indent=1, default=str).encode()
        storage.write_atomic(path, data)
        storage.write_atomic(f"{manifest_dir(self.output, self.pipeline)}/latest.json", data)
        self.manifest_path = path
        return path


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
