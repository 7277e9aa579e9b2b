"""The TPC-H flow: its output equals a direct single-process computation (small SF)."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

import distetl
from distetl.engine.loader import load_pipeline

from conftest import REPO, cli, last_run

TPCH = str(REPO / "flows" / "tpch.py")
SF, PARTS = 0.05, 3


@pytest.fixture(scope="module")
def tpch_cache(tmp_path_factory):
    """A private cache for the generated data (generated once for the module)."""
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("tpch-cache")
        mp.setenv("DISTETL_TPCH_CACHE", str(cache))
        yield cache


def test_output_rows_and_charge_equal_direct_pandas(tmp_path, tpch_cache, prefect_api):
    pipeline = load_pipeline(TPCH)
    module = __import__(pipeline.extract.__module__)
    out = tmp_path / "out"

    report = distetl.run(pipeline, str(out), runner="sequential", params={"sf": SF, "parts": PARTS})

    assert report.ok, report.failed
    assert report.written == PARTS == report.total
    assert sorted(r.key for r in report.results) == ["part=001", "part=002", "part=003"]
    table = ds.dataset(str(out / "tpch" / "lineitem_priced"), format="parquet", partitioning="hive").to_table()
    expected = module.expected_totals(SF, PARTS, tpch_cache)
    assert table.num_rows == expected["rows"] == report.rows
    assert pc.sum(table["charge"]).as_py() == pytest.approx(expected["charge"], rel=1e-9)
    assert table.schema.field("charge").type == pipeline.schema.field("charge").type
    assert table.schema.field("returnflag").type == pipeline.schema.field("returnflag").type  # not string_view
    assert table.schema.field("shipdate").type == pipeline.schema.field("shipdate").type


def test_generated_once_into_the_cache(tpch_cache):
    pipeline = load_pipeline(TPCH)
    plan = pipeline.plan.with_params(sf="0.05", parts="3")
    first = plan.chunks()
    folders = sorted(p.name for p in tpch_cache.iterdir())
    again = plan.chunks()
    assert [c.key for c in again] == [c.key for c in first]
    assert sorted(p.name for p in tpch_cache.iterdir()) == folders == ["sf0_05-p3"]


def test_cli_takes_scale_factor_and_parts(tmp_path, tpch_cache):
    proc = cli("run", TPCH, "--output", str(tmp_path / "out"), "--sf", "0.05", "--parts", "3",
               "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["total"] == 3 and report["plan"]["sf"] == 0.05 and report["plan"]["parts"] == 3


def test_batched_on_a_cluster_every_chunk_still_reports(tmp_path, tpch_cache, prefect_api, monkeypatch):
    """Two Prefect tasks for three chunks on two Dask workers: the live feed still gets
    one event per chunk from the workers, and the manifest one row per chunk."""
    import distetl.engine.flow

    events = []
    real = distetl.engine.flow.run_flow

    def spy(pipeline, jobs, task_runner, on_result, on_chunk, flow_run_name, **options):
        def chunk(event):
            events.append(event)
            on_chunk(event)

        return real(pipeline, jobs, task_runner, on_result, chunk, flow_run_name, **options)

    monkeypatch.setattr(distetl.engine.flow, "run_flow", spy)
    out = tmp_path / "out"
    report = distetl.run(load_pipeline(TPCH), str(out), runner="local", workers=2,
                         params={"sf": SF, "parts": PARTS}, chunks_per_task=2)

    assert report.ok, report.failed
    assert report.task_runs == report.task_runs_recorded == 2
    assert sorted(e["key"] for e in events) == ["part=001", "part=002", "part=003"]
    assert {e["status"] for e in events} == {"written"}
    assert sum(e["rows"] for e in events) == report.rows > 0
    assert all(r.worker.startswith("tcp://") for r in report.results)  # ran on Dask workers
    _, chunks = last_run(out, "tpch")
    assert sorted(r["key"] for r in chunks) == ["part=001", "part=002", "part=003"]
