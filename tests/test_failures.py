"""One failing chunk never blocks the others; a killed chunk leaves nothing at its target;
bad input fails before any compute and writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq

from conftest import cli, last_run

FLOW = """
import os
import pandas as pd
import pyarrow as pa
from distetl import IdRange, Pipeline

def extract(chunk):
    bad = os.environ.get("BAD_CHUNKS", "")
    if chunk.key in bad.split(","):
        raise ValueError(f"source for {chunk.key} is corrupt")
    lo, hi = chunk["start"], chunk["stop"]
    return pd.DataFrame({"id": range(lo, hi), "value": [float(i) * 2 for i in range(lo, hi)]})

pipeline = Pipeline(
    name="ids",
    plan=IdRange(start=0, stop=100, size=10),
    extract=extract,
    target="{output}/ids/part-{first}.parquet",
    schema=pa.schema([("id", pa.int64()), ("value", pa.float64())]),
    retries=1,
)
"""


def _committed(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "ids").glob("*.parquet")) if (out / "ids").exists() else []


def test_failing_chunk_is_isolated_and_the_rerun_fixes_it(tmp_path, flow_file, prefect_api):
    flow = flow_file(FLOW)
    out = tmp_path / "out"
    proc = cli("run", str(flow), "--output", str(out), "--workers", "2", "--no-progress",
               env={"BAD_CHUNKS": "ids=30-39"})
    assert proc.returncode == 1, proc.stderr
    assert "ids=30-39" in proc.stderr and "corrupt" in proc.stderr
    assert len(_committed(out)) == 9 and "part-30.parquet" not in _committed(out)
    manifest, chunks = last_run(out, "ids")
    failed = [r for r in chunks if r["status"] == "failed"]
    assert [r["key"] for r in manifest["failed_chunks"]] == ["ids=30-39"]
    assert [r["key"] for r in failed] == ["ids=30-39"]
    assert failed[0]["attempts"] == 2  # retries=1
    assert "ValueError: source for ids=30-39 is corrupt" in failed[0]["error"]

    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "ids").glob("*.parquet")}
    rerun = cli("run", str(flow), "--output", str(out), "--workers", "2", "--no-progress", "--json")
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["summary"]["written"] == 1 and report["summary"]["skipped"] == 9
    assert [r["key"] for r in report["results"]] == ["ids=30-39"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "ids").glob("*.parquet") if p.name in mtimes} == mtimes
    assert pq.read_table(out / "ids" / "part-30.parquet").column("id").to_pylist() == list(range(30, 40))


def test_chunk_killed_mid_write_leaves_no_file_and_rerun_completes(tmp_path, flow_file, prefect_api):
    flow = flow_file(FLOW)
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os, signal
        real_replace = os.replace
        def replace(src, dst):
            if dst.endswith("part-50.parquet"):
                assert os.path.getsize(src) > 0
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)
        os.replace = replace
        import distetl
        from distetl.engine.loader import load_pipeline
        distetl.run(load_pipeline({str(flow)!r}), {str(out)!r}, runner="sequential")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert not (out / "ids" / "part-50.parquet").exists()
    assert "part-40.parquet" in _committed(out)  # earlier chunks did commit
    assert "part-60.parquet" not in _committed(out)

    rerun = cli("run", str(flow), "--output", str(out), "--runner", "sequential", "--no-progress", "--json")
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["summary"]["written"] == 5  # 50, 60, 70, 80, 90
    assert len(_committed(out)) == 10
    for name in _committed(out):
        pq.read_table(out / "ids" / name)  # every file is a complete Parquet file


def test_unknown_template_field_fails_before_compute(tmp_path, flow_file):
    flow = flow_file(FLOW.replace("part-{first}", "part-{frist}"))
    out = tmp_path / "out"
    proc = cli("run", str(flow), "--output", str(out))
    assert proc.returncode == 2
    assert "{frist}" in proc.stderr and "Fix:" in proc.stderr and "first" in proc.stderr
    assert not out.exists()


def test_bad_range_and_unknown_option_fail_with_usage_code(tmp_path, flow_file):
    flow = flow_file(FLOW)
    out = tmp_path / "out"
    proc = cli("run", str(flow), "--output", str(out), "--start", "50", "--stop", "10")
    assert proc.returncode == 2 and "Expected --start below --stop" in proc.stderr
    proc = cli("run", str(flow), "--output", str(out), "--stat", "5")
    assert proc.returncode == 2 and "--stat" in proc.stderr
    assert not out.exists()


def test_unsafe_key_value_fails_before_compute(tmp_path, flow_file):
    source = FLOW.replace("IdRange(start=0, stop=100, size=10)", 'ChunkList(items=["eu", "../us"], key_field="region")')
    source = source.replace("from distetl import IdRange", "from distetl import ChunkList")
    source = source.replace("part-{first}", "region={region}/part-0")
    flow = flow_file(source)
    out = tmp_path / "out"
    proc = cli("run", str(flow), "--output", str(out))
    assert proc.returncode == 2
    assert "'../us'" in proc.stderr and "region" in proc.stderr
    assert not out.exists()


def test_schema_mismatch_fails_that_chunk_only_naming_the_column(tmp_path, flow_file, prefect_api):
    source = FLOW.replace(
        'return pd.DataFrame({"id": range(lo, hi), "value": [float(i) * 2 for i in range(lo, hi)]})',
        'frame = pd.DataFrame({"id": range(lo, hi), "value": [float(i) * 2 for i in range(lo, hi)]})\n'
        '    if lo == 20:\n'
        '        frame["value"] = "n/a"\n'
        '    return frame',
    )
    flow = flow_file(source)
    out = tmp_path / "out"
    proc = cli("run", str(flow), "--output", str(out), "--runner", "sequential", "--no-progress", "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    failed = [r for r in report["results"] if r["status"] == "failed"]
    assert [r["key"] for r in failed] == ["ids=20-29"]
    assert "chunk ids=20-29" in failed[0]["error"] and "'value'" in failed[0]["error"]
    assert "part-20.parquet" not in _committed(out) and len(_committed(out)) == 9
