"""End to end on a real LocalCluster: the nycflights backfill, the rerun, the records."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.dataset as ds
import pytest

import distetl
from distetl.engine.loader import load_pipeline

from conftest import REPO

NYC = str(REPO / "flows" / "nycflights.py")


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every committed Parquet file with its inode and mtime (to prove files untouched)."""
    out = {}
    for path in sorted(root.rglob("*.parquet")):
        st = path.stat()
        out[str(path.relative_to(root))] = (st.st_ino, st.st_mtime_ns)
    return out


def test_full_year_on_local_cluster_then_rerun_commits_nothing(tmp_path, prefect_api):
    pipeline = load_pipeline(NYC)
    out = tmp_path / "out"

    report = distetl.run(pipeline, str(out), runner="local", workers=2)

    assert report.ok, report.failed
    assert report.written == 365 and report.total == 365
    table = ds.dataset(str(out / "flights"), format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 336_776
    assert table.schema.field("dep_ts").type == pipeline.schema.field("dep_ts").type
    assert not list(out.rglob("*.tmp")), "no temp file may remain"
    manifest = Path(report.manifest_path)
    assert manifest.exists() and manifest.parts[-4] == "_distetl"
    assert report.task_runs_recorded == report.task_runs > 0
    _assert_every_chunk_recorded_in_prefect(report)

    before = _files(out / "flights")
    again = distetl.run(pipeline, str(out), runner="local", workers=2)
    assert again.ok
    assert again.written == 0 and again.skipped == 365 and again.to_run == 0
    assert again.task_runs == 0, "nothing left to run must start no flow and no cluster"
    assert _files(out / "flights") == before


def _assert_every_chunk_recorded_in_prefect(report):
    """Every chunk's task run is in the API in a final state; the flow run carries a
    table artifact with one row per task run (never one per chunk) and a summary that
    links the per-chunk file, which has one row per chunk with its task run."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    import httpx
    import json

    from distetl.state.manifest import read_chunks
    from distetl.storage import Storage

    task_run_ids = {r.task_run_id for r in report.results}
    assert None not in task_run_ids
    with get_client(sync_client=True) as client:
        for task_run_id in task_run_ids:
            assert client.read_task_run(UUID(task_run_id)).state.is_completed()
    body = {"artifacts": {"flow_run_id": {"any_": [report.flow_run_id]}}, "limit": 10, "offset": 0,
            "sort": "CREATED_DESC"}
    artifacts = httpx.post(f"{report.prefect_api}/artifacts/filter", json=body).raise_for_status().json()
    tables = [a for a in artifacts if a["type"] == "table"]
    assert len(tables) == 1
    data = tables[0]["data"]
    rows = json.loads(data) if isinstance(data, str) else data
    assert {row["task_run_id"] for row in rows} == task_run_ids
    assert sum(row["chunks"] for row in rows) == len(report.results) > len(rows)
    summary = [a for a in artifacts if a["type"] == "markdown"]
    assert len(summary) == 1 and report.chunks_path in summary[0]["data"]
    chunks = read_chunks(Storage.for_url(report.chunks_path), report.chunks_path)
    assert sorted(c["key"] for c in chunks) == sorted(r.key for r in report.results)
    assert {c["task_run_id"] for c in chunks} == task_run_ids
