"""Partition columns: a ``name=value`` directory is a column that lives in the path, not
the file, so every output reads back with ``pyarrow.dataset(…, partitioning="hive")``."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import distetl
from distetl import ChunkError, ChunkList, DateRange, FileList, IdRange, PlanError, Product
from distetl.engine.loader import load_pipeline
from distetl.model.partitions import (
    HIVE_NULL, check_schema, convert_path_values, dataset_root, partition_layout, partition_values,
    strip_partition_columns,
)
from distetl.model.targets import Targets

from conftest import REPO, cli

BIRTHS = "{output}/births/date={date}/part-0.parquet"


# --- parsing templates and paths -------------------------------------------------------

@pytest.mark.parametrize("template, names, root", [
    (BIRTHS, ("date",), "/o/births"),
    ("{output}/tpch/lineitem_priced/part={part}/part-0.parquet", ("part",), "/o/tpch/lineitem_priced"),
    ("{output}/x/region=eu/y={year}/m={month}/f-{chunk:03d}.parquet", ("region", "y", "m"), "/o/x"),
    ("{output}/t/part-{first}.parquet", (), "/o/t"),
    ("{output}/t/{year}/date={date}/f.parquet", ("date",), "/o/t"),
    ("{output}/t/name=x.parquet", (), "/o/t"),  # a file name is not a directory
])
def test_partition_segments_are_the_name_value_directories(template, names, root):
    layout = partition_layout(template)
    assert layout.names == names
    assert dataset_root(template, "/o") == root


def test_a_field_that_renders_name_value_is_found_in_the_rendered_path():
    template = "{output}/t/{key}/part-0.parquet"
    assert partition_layout(template).dynamic
    assert partition_values(template, "/o/t/date=2013-01-03/part-0.parquet", "/o") == {"date": "2013-01-03"}


def test_values_of_a_rendered_path_are_decoded_as_hive_readers_decode_them():
    template = "{output}/x/region=eu/city={city}/day={date}/part-0.parquet"
    path = "s3://b/p=1/x/region=eu/city=New%20York/day=2013-01-03/part-0.parquet"
    assert partition_values(template, path, "s3://b/p=1") == {
        "region": "eu", "city": "New York", "day": "2013-01-03"}  # not p, part of the output
    assert partition_values(template, path.replace("New%20York", HIVE_NULL), "s3://b/p=1")["city"] is None


# --- converting path values -------------------------------------------------------------

@pytest.mark.parametrize("value, kind, expected", [
    ("2013-01-03", pa.date32(), dt.date(2013, 1, 3)),
    ("2013-01-03", pa.date64(), dt.date(2013, 1, 3)),
    ("2013-01-03", pa.timestamp("ms"), dt.datetime(2013, 1, 3)),
    ("2013-01-03", pa.timestamp("ns"), pd.Timestamp("2013-01-03")),
    ("2013-01-03T06:30:00", pa.timestamp("s"), dt.datetime(2013, 1, 3, 6, 30)),
    ("2013-01-03", pa.timestamp("us", tz="UTC"), dt.datetime(2013, 1, 3, tzinfo=dt.timezone.utc)),
    ("007", pa.int16(), 7),
    ("-12", pa.int64(), -12),
    ("1.5", pa.float64(), 1.5),
    ("true", pa.bool_(), True),
    ("false", pa.bool_(), False),
    ("2013-01-03", pa.string(), "2013-01-03"),
    ("eu", pa.large_string(), "eu"),
    ("eu", pa.dictionary(pa.int32(), pa.string()), "eu"),
])
def test_path_values_convert_to_the_column_type(value, kind, expected):
    converted = convert_path_values([value], kind)[0]
    assert converted.as_py() == expected


def test_a_date_in_a_timezone_aware_column_is_local_midnight():
    kind = pa.timestamp("us", tz="America/New_York")
    converted = convert_path_values(["2013-01-03"], kind)
    assert converted.type == kind
    assert converted[0].value == pd.Timestamp("2013-01-03", tz="America/New_York").value // 1000


def test_a_value_that_does_not_convert_is_named():
    with pytest.raises(ValueError) as err:
        convert_path_values(["2013-01-01", "2013-02-30", "x"], pa.date32())
    assert err.value.args[1] == "2013-02-30"


# --- checking and dropping the columns of one chunk ------------------------------------

def _births(day: str, n: int = 4, unit: str = "ms") -> pa.Table:
    frame = pd.DataFrame({"date": pd.to_datetime([day] * n).astype(f"datetime64[{unit}]"),
                          "births": range(n)})
    return pa.Table.from_pandas(frame, preserve_index=False)


def test_equal_values_are_dropped():
    table = _births("2013-01-03")
    out = strip_partition_columns(table, {"date": "2013-01-03"}, "date=2013-01-03", "/o/date=2013-01-03/p")
    assert out.column_names == ["births"] and out.num_rows == 4


@pytest.mark.parametrize("column, value", [
    (pa.array(["eu", "eu"]), "eu"),
    (pa.array(["eu", "eu"]).dictionary_encode(), "eu"),
    (pa.array([7, 7], pa.int32()), "007"),
    (pa.array([dt.date(2013, 1, 3)] * 2, pa.date32()), "2013-01-03"),
    (pa.array([True, True]), "true"),
    (pa.array([pd.Timestamp("2013-01-03", tz="Europe/Paris")] * 2, pa.timestamp("ns", tz="Europe/Paris")),
     "2013-01-03"),
])
def test_equal_values_of_any_natural_type_are_dropped(column, value):
    table = pa.table({"k": column, "v": [1, 2]})
    assert strip_partition_columns(table, {"k": value}, "c", "/o/k=x/p").column_names == ["v"]


def test_columns_not_in_the_path_are_kept():
    table = _births("2013-01-03")
    assert strip_partition_columns(table, {"region": "eu"}, "c", "p") is table


def test_unequal_value_names_chunk_column_path_value_and_offending_value():
    table = _births("2013-01-03")
    table = table.set_column(0, "date", pa.array(
        [dt.datetime(2013, 1, 3)] * 2 + [dt.datetime(2013, 1, 3, 6)] * 2, pa.timestamp("ms")))
    with pytest.raises(ChunkError) as err:
        strip_partition_columns(table, {"date": "2013-01-03"}, "date=2013-01-03",
                                "/o/births/date=2013-01-03/part-0.parquet")
    text = str(err.value)
    assert text.startswith("chunk date=2013-01-03: Expected partition column 'date' equal to its path value '2013-01-03'")
    assert "got 2013-01-03 06:00:00.000 in row 2 (2 of 4 rows differ" in text
    assert "Fix: drop or rename 'date' in the transform" in text and "rename the path segment" in text


def test_nulls_offend():
    table = pa.table({"region": pa.array(["eu", None, "eu"])})
    with pytest.raises(ChunkError, match=r"got null in row 1 \(1 of 3 rows differ"):
        strip_partition_columns(table, {"region": "eu"}, "region=eu", "/o/region=eu/p")


def test_hive_null_path_value_wants_every_row_null():
    table = pa.table({"region": pa.array([None, None], pa.string()), "v": [1, 2]})
    assert strip_partition_columns(table, {"region": None}, "c", "p").column_names == ["v"]
    with pytest.raises(ChunkError, match="'eu' in row 1"):
        strip_partition_columns(pa.table({"region": [None, "eu"]}), {"region": None}, "c", "p")


def test_a_path_value_that_does_not_convert_fails_the_chunk():
    table = pa.table({"part": pa.array([1, 1], pa.int64())})
    with pytest.raises(ChunkError) as err:
        strip_partition_columns(table, {"part": "eu"}, "part=eu", "/o/part=eu/p")
    assert "chunk part=eu" in str(err.value) and "'eu'" in str(err.value) and "int64" in str(err.value)


def test_a_million_rows_are_checked_without_a_python_loop():
    n = 1_000_000
    table = pa.table({"date": pa.array([dt.date(2013, 1, 3)] * n, pa.date32()), "v": pa.array(range(n))})
    assert strip_partition_columns(table, {"date": "2013-01-03"}, "c", "p").num_rows == n


# --- the plan-time check with a declared schema ----------------------------------------

def test_schema_check_names_the_first_chunk_whose_value_does_not_convert(tmp_path):
    targets = Targets("{output}/t/id={first}/part-0.parquet", str(tmp_path))
    chunks = IdRange(start=0, stop=1000, size=1).chunks()
    paths = targets.render(chunks)
    check_schema(targets.template, pa.schema([("id", pa.int64())]), chunks, paths, targets.output)
    with pytest.raises(PlanError) as err:
        check_schema(targets.template, pa.schema([("id", pa.date32())]), chunks, paths, targets.output)
    text = str(err.value)
    assert text.startswith("chunk ids=000-000: Expected path value '0' of partition column 'id'")
    assert "date32" in text and "Fix: declare 'id' with a type" in text


def test_schema_check_is_skipped_when_no_declared_column_is_a_partition(tmp_path):
    targets = Targets(BIRTHS, str(tmp_path))
    chunks = DateRange(start="2013-01-01", end="2013-01-03").chunks()
    paths = targets.render(chunks)
    check_schema(targets.template, pa.schema([("births", pa.int64())]), chunks, paths, targets.output)
    check_schema(targets.template, None, chunks, paths, targets.output)
    check_schema(targets.template, pa.schema([("date", pa.timestamp("ms"))]), chunks, paths, targets.output)
    with pytest.raises(PlanError, match="path value '2013-01-01' of partition column 'date'"):
        check_schema(targets.template, pa.schema([("date", pa.int64())]), chunks, paths, targets.output)


def test_schema_check_reads_dynamic_segments_from_the_paths(tmp_path):
    targets = Targets("{output}/t/{key}/part-0.parquet", str(tmp_path))
    chunks = ChunkList(items=["eu", "us"], key_field="region").chunks()
    paths = targets.render(chunks)
    check_schema(targets.template, pa.schema([("region", pa.string())]), chunks, paths, targets.output)
    with pytest.raises(PlanError, match="chunk region=eu: Expected path value 'eu' of partition column 'region'"):
        check_schema(targets.template, pa.schema([("region", pa.int32())]), chunks, paths, targets.output)


# --- end to end through the command line -----------------------------------------------

FLOW = """
import os
import pandas as pd
import pyarrow as pa
from distetl import DateRange, Pipeline

def extract(chunk):
    day = pd.Timestamp(chunk["date"])
    stamps = [day] * 4
    if chunk["date"] == os.environ.get("BAD_DAY"):
        stamps[3] = day + pd.Timedelta(hours=6)
    return pd.DataFrame({"date": pd.Series(stamps).astype("datetime64[ms]"), "births": range(4)})

pipeline = Pipeline(
    name="births",
    plan=DateRange(start="2013-01-01", end="2013-01-05"),
    extract=extract,
    target="{output}/births/date={date}/part-0.parquet",
    SCHEMA
)
"""


def _flow(flow_file, schema: str = "") -> Path:
    return flow_file(FLOW.replace("SCHEMA", f"schema={schema}," if schema else ""))


def test_date_column_equal_to_the_path_reads_back_with_hive_partitioning(tmp_path, flow_file, prefect_api):
    out = tmp_path / "out"
    proc = cli("run", str(_flow(flow_file)), "--output", str(out), "--runner", "sequential",
               "--no-progress", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["summary"]["written"] == 5
    table = ds.dataset(str(out / "births"), partitioning="hive").to_table()
    assert table.num_rows == 20 and table.schema.names.count("date") == 1
    assert sorted(set(table.column("date").to_pylist())) == [f"2013-01-0{d}" for d in range(1, 6)]
    assert pq.read_schema(out / "births" / "date=2013-01-03" / "part-0.parquet").names == ["births"]


def test_declared_partition_column_is_cast_then_left_to_the_path(tmp_path, flow_file, prefect_api):
    flow = _flow(flow_file, 'pa.schema([("date", pa.timestamp("us")), ("births", pa.int32())])')
    out = tmp_path / "out"
    proc = cli("run", str(flow), "--output", str(out), "--runner", "sequential", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert pq.read_schema(out / "births" / "date=2013-01-01" / "part-0.parquet").names == ["births"]
    assert ds.dataset(str(out / "births"), partitioning="hive").to_table().num_rows == 20


def test_a_day_with_a_wrong_date_fails_that_chunk_only(tmp_path, flow_file, prefect_api):
    out = tmp_path / "out"
    proc = cli("run", str(_flow(flow_file)), "--output", str(out), "--runner", "sequential",
               "--no-progress", "--json", env={"BAD_DAY": "2013-01-03"})
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    failed = [r for r in report["results"] if r["status"] == "failed"]
    assert [r["key"] for r in failed] == ["date=2013-01-03"]
    error = failed[0]["error"]
    assert "chunk date=2013-01-03" in error and "partition column 'date'" in error
    assert "path value '2013-01-03'" in error and "2013-01-03 06:00:00.000 in row 3" in error
    assert report["summary"]["written"] == 4
    assert not (out / "births" / "date=2013-01-03" / "part-0.parquet").exists()
    assert ds.dataset(str(out / "births"), partitioning="hive").to_table().num_rows == 16


def test_declared_type_the_path_values_cannot_convert_to_fails_at_plan_time(tmp_path, flow_file):
    flow = _flow(flow_file, 'pa.schema([("date", pa.int64()), ("births", pa.int64())])')
    out = tmp_path / "out"
    proc = cli("run", str(flow), "--output", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "chunk date=2013-01-01: Expected path value '2013-01-01' of partition column 'date'" in proc.stderr
    assert "int64" in proc.stderr and "Fix:" in proc.stderr
    assert not out.exists()


# --- every flow in flows/ reads back with hive partitioning ----------------------------

FLOWS = sorted((REPO / "flows").glob("*.py"))


def _small_params(flow: Path, plan: distetl.Plan) -> dict:
    """Plan parameters that keep a flow to a few small chunks."""
    if isinstance(plan, DateRange):
        days = 2 if plan.freq == "day" else 40
        return {"end": (dt.date.fromisoformat(plan.start) + dt.timedelta(days=days)).isoformat()}
    if isinstance(plan, IdRange):
        return {"stop": min(plan.stop, plan.start + 3 * plan.size)}
    if isinstance(plan, ChunkList):
        return {"items": tuple(plan.items)[:3]}
    if isinstance(plan, FileList):
        return {"paths": tuple(c["path"] for c in plan.chunks()[:3])}
    if isinstance(plan, Product):  # each plan's parameters are the product's
        params: dict = {}
        for factor in plan.plans:
            params.update(_small_params(flow, factor))
        return params
    if plan.kind == "tpch":
        return {"sf": 0.01, "parts": 2}
    pytest.fail(f"Expected a way to run a small slice of {flow.name}; got plan {type(plan).__name__} "
                "that tests/test_partitions.py does not know. Fix: add it to _small_params there.")


def test_there_are_flows():
    assert {p.name for p in FLOWS} >= {"nycflights.py", "nycflights_rollups.py", "tpch.py", "tpch_graph.py"}


@pytest.mark.parametrize("flow", FLOWS, ids=[p.stem for p in FLOWS])
def test_every_flow_reads_back_with_hive_partitioning(flow, tmp_path, prefect_api):
    """Every stage of every flow, run on a small slice, reads back as one dataset with
    hive partitioning: each partition column once, one value per chunk."""
    pipeline = load_pipeline(str(flow))
    roots = [s for s in pipeline.all_stages if s.plan is not None]
    params: dict = {}
    for stage in roots:
        params.update(_small_params(flow, stage.plan))
    report = distetl.run(pipeline, str(tmp_path), runner="sequential", params=params)
    assert report.ok, report.failed
    assert report.written == report.total > 0

    partitioned = 0
    for stage in pipeline.all_stages:
        layout = partition_layout(stage.target)
        rows = sum(r.rows for r in report.results if r.stage == stage.name)
        chunks = sum(1 for r in report.results if r.stage == stage.name)
        table = ds.dataset(dataset_root(stage.target, str(tmp_path)), format="parquet",
                           partitioning="hive" if layout.names else None).to_table()
        assert table.num_rows == rows > 0, (flow.name, stage.name)
        for name in layout.names:
            assert table.schema.names.count(name) == 1, (flow.name, stage.name, name, table.schema.names)
        if layout.names:
            partitioned += 1
            # One partition (a value of each name: two for a date x origin key) per chunk.
            values = set(zip(*(table.column(name).to_pylist() for name in layout.names)))
            assert len(values) == chunks, (flow.name, stage.name)
    assert partitioned, f"{flow.name}: no stage's target has a name=value directory"
