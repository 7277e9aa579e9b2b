"""Where a chunk's time goes: each chunk's phases (extract, transform, check, write,
commit) in the run's per-chunk file, and per stage the median, p95 and max chunk time
with the five slowest chunks in the run's table, the manifest, ``status`` and the
Prefect summary artifact (read back from a real Prefect API)."""

from __future__ import annotations

import json

import httpx

import distetl
from distetl.engine.loader import load_pipeline
from distetl.state.manifest import read_chunks
from distetl.state.results import PHASES
from distetl.storage import Storage

from conftest import cli

FLOW = '''
import time
import pandas as pd
from distetl import ChunkList, Pipeline

def extract(chunk):
    if chunk["n"] == 3:
        time.sleep(0.3)                       # a slow read
    return pd.DataFrame({"n": [chunk["n"]] * 10, "x": range(10)})

def transform(df):
    if df["n"].iloc[0] == 5:
        time.sleep(0.2)                       # a slow transform
    return df

def positive(df):
    return bool((df["x"] >= 0).all())

pipeline = Pipeline(name="times", plan=ChunkList(list(range(8)), key_field="n"), extract=extract,
                    transform=transform, checks=[positive], target="{output}/times/n={n}/part-0.parquet")
'''


def test_each_chunks_phases_and_each_stages_slowest_chunks_are_recorded_and_shown(tmp_path, flow_file, prefect_api):
    path = flow_file(FLOW, "timesflow.py")
    out = tmp_path / "out"
    report = distetl.run(load_pipeline(str(path)), str(out), workers=2, progress=False)
    assert report.ok and report.written == 8

    rows = {r["key"]: r for r in read_chunks(Storage.for_url(str(out)), report.chunks_path)}
    assert set(rows) == {f"n={i}" for i in range(8)}
    for row in rows.values():
        phases = [row[f"{p}_s"] for p in PHASES]
        assert all(v >= 0 for v in phases) and sum(phases) <= row["seconds"] + 0.002, row
        assert row["write_s"] > 0 and row["commit_s"] > 0 and row["check_s"] > 0, row
    assert rows["n=3"]["extract_s"] >= 0.29 and rows["n=3"]["transform_s"] < 0.1
    assert rows["n=5"]["transform_s"] >= 0.19 and rows["n=5"]["extract_s"] < 0.1

    times = report.chunk_times["times"]
    assert times["chunks"] == 8 and [c["key"] for c in times["slowest"][:2]] == ["n=3", "n=5"]
    assert len(times["slowest"]) == 5 and times["max_s"] >= 0.3 > times["median_s"]
    assert times["median_s"] <= times["p95_s"] <= times["max_s"]
    assert set(times["phases"]) == set(PHASES) and times["phases"]["extract"] >= 0.3 / 8

    manifest = json.loads((out / "_distetl" / "times" / "latest.json").read_text())
    assert manifest["chunk_times"]["times"]["slowest"][0]["key"] == "n=3"
    full = json.loads(open(report.manifest_path).read())
    assert full["chunk_times"]["times"]["max_s"] == times["max_s"]

    body = {"artifacts": {"flow_run_id": {"any_": [report.flow_run_id]}}, "limit": 10, "offset": 0}
    artifacts = httpx.post(f"{report.prefect_api}/artifacts/filter", json=body).raise_for_status().json()
    summary = next(a for a in artifacts if a["key"].endswith("-summary"))["data"]
    assert "## Chunk times" in summary and "`n=3`" in summary and "extract (mean)" in summary

    done = cli("status", str(path), "--output", str(out), "--json")
    assert done.returncode == 0, done.stderr
    stage = json.loads(done.stdout)["stages"][0]
    assert stage["chunk_times_last_run"]["slowest"][0]["key"] == "n=3"
    text = cli("status", str(path), "--output", str(out))
    assert "chunk time (last run): median" in text.stderr + text.stdout and "slowest: n=3" in text.stderr + text.stdout

    rerun = cli("run", str(path), "--output", str(out), "--force", "--no-progress")
    assert rerun.returncode == 0, rerun.stderr
    assert "chunk time, times: median" in rerun.stderr and "slowest: n=3 (" in rerun.stderr


def _worker_trim() -> dict:
    import os

    from distributed import Client

    from distetl.engine.runners import local_cluster

    with local_cluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
            Client(lc) as client:
        return client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))


def test_local_workers_start_without_dasks_malloc_trim_unless_configured():
    """Dask's nannies set MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's adaptive
    mmap threshold (a small chunk's buffers are mapped and unmapped every time: ~10 %
    of its cost in the chunk_cost benchmark). distetl's local workers start without it;
    a value the user configured in Dask is kept."""
    import dask

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 65536}):
        assert list(_worker_trim().values()) == [None]
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 1048576}):
        assert list(_worker_trim().values()) == ["1048576"]
