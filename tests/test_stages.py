"""Multi-stage pipelines end to end: ``flows/nycflights_rollups.py`` on real Dask
processes, checked against pandas over the raw data; pruning, isolation of a failed
chunk, no barrier between stages, plan-time errors, and the same outputs on every
runner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

import distetl
from distetl.engine.loader import load_pipeline

from cluster_helpers import DaskProcesses, clean_env
from conftest import REPO, cli, last_run

ROLLUPS = str(REPO / "flows" / "nycflights_rollups.py")
SUMS = ["flights", "cancelled", "dep_delay_sum", "dep_delay_n", "arr_delay_sum", "arr_delay_n", "arr_delayed_15"]


@pytest.fixture(scope="module")
def raw_flights() -> pd.DataFrame:
    """Every 2013 flight, transformed as the flights stage does, computed directly."""
    nyc = load_pipeline(str(REPO / "flows" / "nycflights.py"))
    module = __import__(nyc.extract.__module__)
    frame = pd.read_csv(os.path.join(module.data_dir(), "flights.csv.zip"), dtype={"tailnum": "string"})
    out = nyc.transform(frame)
    out["date"] = pd.to_datetime(out[["year", "month", "day"]]).dt.strftime("%Y-%m-%d")
    out["month_key"] = out["date"].str[:7]
    return out


def _expected(raw: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    grouped = raw.groupby(by + ["carrier"])
    out = pd.DataFrame({
        "flights": grouped.size(),
        "cancelled": grouped["cancelled"].sum(),
        "dep_delay_sum": grouped["dep_delay"].sum(),
        "dep_delay_n": grouped["dep_delay"].count(),
        "arr_delay_sum": grouped["arr_delay"].sum(),
        "arr_delay_n": grouped["arr_delay"].count(),
        "arr_delayed_15": grouped["arr_delayed_15"].sum(),
    }).reset_index()
    out["arr_delay_mean"] = out["arr_delay_sum"] / out["arr_delay_n"]
    return out.sort_values(by + ["carrier"]).reset_index(drop=True)


def _read(root: Path, by: list[str]) -> pd.DataFrame:
    table = ds.dataset(str(root), format="parquet", partitioning="hive").to_table().to_pandas()
    for name in by:
        table[name] = table[name].astype(str)
    return table.sort_values(by + ["carrier"]).reset_index(drop=True)


def _assert_same(got: pd.DataFrame, want: pd.DataFrame, by: list[str]) -> None:
    assert len(got) == len(want)
    assert got[by + ["carrier"]].astype(str).values.tolist() == want[by + ["carrier"]].astype(str).values.tolist()
    for column in SUMS + ["arr_delay_mean"]:
        assert np.allclose(got[column].astype(float), want[column].astype(float), equal_nan=True), column


def _files(root: Path) -> dict[str, int]:
    """Every committed data file (not distetl's own records under _distetl/) with its mtime."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*.parquet"))
            if "_distetl" not in p.parts}


def test_rollups_match_pandas_prune_and_start_without_a_barrier(tmp_path, prefect_api, raw_flights):
    out = tmp_path / "out"
    report = distetl.run(load_pipeline(ROLLUPS), str(out), workers=2)
    assert report.ok, report.failed[:3]
    assert [(s["name"], s["written"]) for s in report.stage_summary()] == [
        ("flights", 365), ("carrier_daily", 365), ("carrier_monthly", 12), ("carrier_year", 1)]

    _assert_same(_read(out / "carrier_daily", ["date"]), _expected(raw_flights, ["date"]), ["date"])
    _assert_same(_read(out / "carrier_monthly", ["month"]),
                 _expected(raw_flights.assign(month=raw_flights["month_key"]), ["month"]), ["month"])
    year = pd.read_parquet(out / "carrier_year" / "part-0.parquet").sort_values("carrier").reset_index(drop=True)
    want = _expected(raw_flights.assign(all="all"), ["all"])
    assert year["carrier"].tolist() == want["carrier"].tolist()
    for column in SUMS + ["arr_delay_mean"]:
        assert np.allclose(year[column].astype(float), want[column].astype(float)), column
    assert int(year["flights"].sum()) == 336_776

    # No barrier: some downstream chunk started before the last flights chunk ended.
    ends = {s: max(r.ended for r in report.results if r.stage == s) for s in ("flights", "carrier_daily")}
    first_daily = min(r.started for r in report.results if r.stage == "carrier_daily")
    first_monthly = min(r.started for r in report.results if r.stage == "carrier_monthly")
    assert first_daily < ends["flights"], "carrier_daily waited for the whole flights stage"
    assert first_monthly < ends["carrier_daily"], "carrier_monthly waited for the whole carrier_daily stage"

    # The manifest and task-run names carry the stage of every chunk.
    manifest, chunks = last_run(out, "nycflights_rollups")
    assert manifest["run_id"] == report.run_id
    assert {r["stage"] for r in chunks} == {"flights", "carrier_daily", "carrier_monthly", "carrier_year"}
    assert len(chunks) == 743
    assert [s["name"] for s in manifest["stage_summary"]] == ["flights", "carrier_daily", "carrier_monthly",
                                                              "carrier_year"]
    _assert_task_runs_named_by_stage(report)

    # Pruning: a deleted raw day whose carrier_daily exists is not recomputed ...
    (out / "flights" / "date=2013-03-05" / "part-0.parquet").unlink()
    before = _files(out)
    again = cli("run", ROLLUPS, "--output", str(out), "--workers", "2", "--no-progress", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["summary"]["written"] == 0
    assert _files(out) == before
    # ... and a deleted month is rebuilt from its committed days, alone.
    (out / "carrier_monthly" / "month=2013-06" / "part-0.parquet").unlink()
    again = cli("run", ROLLUPS, "--output", str(out), "--workers", "2", "--no-progress", "--json")
    assert again.returncode == 0, again.stderr
    written = [(r["stage"], r["key"]) for r in json.loads(again.stdout)["results"] if r["status"] == "written"]
    assert written == [("carrier_monthly", "month=2013-06")]
    assert {k: v for k, v in _files(out).items() if "2013-06" not in k} == \
        {k: v for k, v in before.items() if "2013-06" not in k}


def _assert_task_runs_named_by_stage(report):
    from uuid import UUID

    from prefect.client.orchestration import get_client

    ids = {r.task_run_id for r in report.results}
    with get_client(sync_client=True) as client:
        names = {client.read_task_run(UUID(i)).name for i in ids}
    assert {n.split("[")[0] for n in names} == {"flights", "carrier_daily", "carrier_monthly", "carrier_year"}


FAILING = """
import os
from distetl import Pipeline
from distetl.engine.loader import load_pipeline

R = load_pipeline({rollups!r})

def extract(chunk):
    if chunk["date"] == os.environ.get("BAD_DAY"):
        raise ValueError(f"source of {{chunk.key}} is corrupt")
    return R.stage("flights").extract(chunk)

pipeline = Pipeline(name="rollups_failing", stages=[
    R.stage("flights").with_options(extract=extract),
    R.stage("carrier_daily"), R.stage("carrier_monthly"), R.stage("carrier_year"),
])
"""


def test_a_failed_day_blocks_exactly_its_dependants_and_the_rerun_fixes_it(tmp_path, flow_file, prefect_api):
    flow = flow_file(FAILING.format(rollups=ROLLUPS))
    out = tmp_path / "out"
    args = ["run", str(flow), "--output", str(out), "--workers", "2", "--no-progress", "--json",
            "--start", "2013-01-01", "--end", "2013-02-28"]
    proc = cli(*args, env={"BAD_DAY": "2013-02-10"})
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    by_status: dict[str, set] = {}
    for r in report["results"]:
        by_status.setdefault(r["status"], set()).add((r["stage"], r["key"]))
    assert by_status["failed"] == {("flights", "date=2013-02-10")}
    assert by_status["blocked"] == {("carrier_daily", "date=2013-02-10"), ("carrier_monthly", "month=2013-02"),
                                    ("carrier_year", "year=2013")}
    blocked = [r for r in report["results"] if r["status"] == "blocked"]
    assert all("flights:date=2013-02-10" in r["error"] for r in blocked)
    assert len(by_status["written"]) == 58 + 58 + 1
    assert report["flow_state"] == "FAILED"

    rerun = cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    written = {(r["stage"], r["key"]) for r in json.loads(rerun.stdout)["results"] if r["status"] == "written"}
    assert written == {("flights", "date=2013-02-10"), ("carrier_daily", "date=2013-02-10"),
                       ("carrier_monthly", "month=2013-02"), ("carrier_year", "year=2013")}


def test_stage_selection_dry_run_and_status_per_stage(tmp_path, prefect_api):
    out = tmp_path / "out"
    dry = cli("run", ROLLUPS, "--output", str(out), "--dry-run", "--stage", "carrier_daily",
              "--start", "2013-01-01", "--end", "2013-01-10")
    assert dry.returncode == 0, dry.stderr
    assert "stage flights: total 10, committed 0, to run 10" in dry.stderr
    assert "stage carrier_daily: total 10, committed 0, to run 10" in dry.stderr
    assert "carrier_monthly" not in dry.stderr
    run = cli("run", ROLLUPS, "--output", str(out), "--stage", "carrier_daily", "--runner", "sequential",
              "--no-progress", "--json", "--start", "2013-01-01", "--end", "2013-01-10")
    assert run.returncode == 0, run.stderr
    assert {r["stage"] for r in json.loads(run.stdout)["results"]} == {"flights", "carrier_daily"}
    status = cli("status", ROLLUPS, "--output", str(out), "--json", "--start", "2013-01-01", "--end", "2013-01-10")
    assert status.returncode == 1  # the months and the year are missing
    stages = {s["name"]: s for s in json.loads(status.stdout)["stages"]}
    assert (stages["carrier_daily"]["committed"], stages["carrier_monthly"]["missing"]) == (10, 1)
    assert stages["carrier_year"]["total"] == 1 and stages["flights"]["committed"] == 10
    bad = cli("run", ROLLUPS, "--output", str(out), "--stage", "carrier_dialy")
    assert bad.returncode == 2 and "carrier_dialy" in bad.stderr and "carrier_daily" in bad.stderr


PLAN_ERRORS = {
    "missing upstream chunk": ("""
from distetl import DateRange, FromFunction, Pipeline, Stage
import pandas as pd
raw = Stage(name="raw", plan=DateRange(start="2013-01-01", end="2013-01-03"), extract=lambda c: pd.DataFrame(),
            target="{output}/raw/date={date}/part-0.parquet")
prev = Stage(name="prev", upstream=raw, plan=DateRange(start="2013-01-01", end="2013-01-03"),
             mapping=FromFunction(lambda c: ["date=2012-12-31"] if c["date"] == "2013-01-01" else [c.key]),
             target="{output}/prev/date={date}/part-0.parquet")
pipeline = Pipeline(name="p", stages=[raw, prev])
""", ["prev", "date=2012-12-31", "Fix:"]),
    "same path": ("""
from distetl import DateRange, Identity, Pipeline, Stage
import pandas as pd
raw = Stage(name="raw", plan=DateRange(start="2013-01-01", end="2013-01-03"), extract=lambda c: pd.DataFrame(),
            target="{output}/t/date={date}/part-0.parquet")
copy = Stage(name="copy", upstream=raw, mapping=Identity(), target="{output}/t/date={date}/part-0.parquet")
pipeline = Pipeline(name="p", stages=[raw, copy])
""", ["raw", "copy", "date=2013-01-01", "Fix:"]),
    "cycle": ("""
from distetl import DateRange, Pipeline, Stage
import pandas as pd
raw = Stage(name="raw", plan=DateRange(start="2013-01-01", end="2013-01-03"), extract=lambda c: pd.DataFrame(),
            target="{output}/raw/{date}.parquet")
a = Stage(name="a", upstream="b", target="{output}/a/{date}.parquet")
b = Stage(name="b", upstream="a", target="{output}/b/{date}.parquet")
pipeline = Pipeline(name="p", stages=[raw, a, b])
""", ["cycle", "Fix:"]),
    "duplicate names": ("""
from distetl import DateRange, Identity, Pipeline, Stage
import pandas as pd
raw = Stage(name="raw", plan=DateRange(start="2013-01-01", end="2013-01-03"), extract=lambda c: pd.DataFrame(),
            target="{output}/raw/{date}.parquet")
pipeline = Pipeline(name="p", stages=[raw, Stage(name="raw", upstream="raw", target="{output}/x/{date}.parquet")])
""", ["raw", "Fix:"]),
}


@pytest.mark.parametrize("case", sorted(PLAN_ERRORS))
def test_plan_time_errors_exit_2_before_any_compute(case, tmp_path, flow_file):
    source, words = PLAN_ERRORS[case]
    out = tmp_path / "out"
    proc = cli("run", str(flow_file(source)), "--output", str(out))
    assert proc.returncode == 2, proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)
    assert not out.exists()


def test_the_same_outputs_on_the_local_remote_and_sequential_runners(tmp_path, prefect_api):
    pipeline = load_pipeline(ROLLUPS)
    params = {"start": "2013-05-01", "end": "2013-06-30"}
    tables = {}
    with DaskProcesses(tmp_path / "dask", env=clean_env()) as procs:
        procs.start(n_workers=2)
        for name, options in {"local": {"workers": 2}, "remote": {"scheduler": procs.address},
                              "sequential": {"runner": "sequential"}}.items():
            out = tmp_path / name
            report = distetl.run(pipeline, str(out), params=params, **options)
            assert report.ok and report.written == 61 + 61 + 2 + 1, (name, report.failed[:2])
            tables[name] = {s: _read(out / s, by) for s, by in (("carrier_daily", ["date"]),
                                                                ("carrier_monthly", ["month"]))}
    for stage in ("carrier_daily", "carrier_monthly"):
        pd.testing.assert_frame_equal(tables["local"][stage], tables["remote"][stage])
        pd.testing.assert_frame_equal(tables["local"][stage], tables["sequential"][stage])
