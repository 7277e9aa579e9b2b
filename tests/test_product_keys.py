"""Two-dimensional keys: the Product plan, the Along and Collapse mappings, their
plan-time errors, and a real two-stage run over date × origin."""

from __future__ import annotations

import pickle
import tracemalloc

import pandas as pd
import pyarrow.dataset as ds
import pytest

import distetl
from distetl import (AllToOne, Along, CalendarWindow, ChunkList, Collapse, ConfigError, DateRange, Identity,
                     IdRange, Pipeline, PlanError, Product, Stage, TrailingDays)
from distetl.model.chunkseq import DimFields, ProductChunks
from distetl.model.mappings import UpstreamKeys, resolve_inputs
from distetl.model.partitions import partition_values
from distetl.model.targets import Targets

from conftest import cli

ORIGINS = ChunkList([{"origin": "EWR"}, {"origin": "JFK"}])


def _product(start: str = "2024-01-30", end: str = "2024-02-02") -> Product:
    return Product(DateRange(start, end), ORIGINS)


def _keys(chunks) -> list[str]:
    return [c.key for c in chunks]


# -- the plan ------------------------------------------------------------------------------


def test_product_keys_fields_and_order():
    chunks = _product().chunks()
    assert isinstance(chunks, ProductChunks) and len(chunks) == 8
    assert _keys(chunks)[:3] == ["date=2024-01-30/origin=EWR", "date=2024-01-30/origin=JFK",
                                 "date=2024-01-31/origin=EWR"]
    last = chunks[-1]
    assert last.key == "date=2024-02-02/origin=JFK" and last.index == 7
    assert dict(last.fields) == {"date": "2024-02-02", "year": "2024", "month": "2024-02", "day": "02",
                                 "origin": "JFK"}
    assert last.origin == "JFK" and last["date"] == "2024-02-02"
    assert list(chunks) == [chunks[i] for i in range(8)]  # iteration agrees with indexing
    assert chunks.find("date=2024-01-31/origin=JFK") == 3
    assert chunks.find("date=2024-01-31/origin=LGA") is None and chunks.find("date=2024-01-31") is None
    assert chunks.template_values(3) == {**chunks[3].template_fields()}


def test_product_sugar_flattening_and_chunklist_field_inference():
    days = DateRange("2024-01-01", "2024-01-02")
    assert days * ORIGINS == Product(days, ORIGINS)
    three = days * ORIGINS * ChunkList(["a", "b", "c"], key_field="carrier")
    assert len(three.plans) == 3
    assert _keys(three.chunks())[:2] == ["date=2024-01-01/origin=EWR/carrier=a",
                                         "date=2024-01-01/origin=EWR/carrier=b"]
    assert len(three.chunks()) == 12
    # a ChunkList of one-field mappings is keyed by that field without key_field
    assert _keys(ORIGINS.chunks()) == ["origin=EWR", "origin=JFK"]
    with pytest.raises(PlanError, match="field 'item' in every item"):
        ChunkList([{"origin": "EWR"}, {"dest": "JFK"}]).chunks()
    with pytest.raises(ConfigError, match="at least two plans"):
        Product(days)


def test_product_parameters_narrow_their_dimension():
    plan = _product("2024-01-01", "2024-12-31")
    assert plan.param_names() == ["start", "end", "freq", "items", "key_field"]
    assert plan.start == "2024-01-01"  # the command line shows the defaults
    narrowed = plan.with_params(start="2024-03-01", end="2024-03-03")
    assert len(narrowed.chunks()) == 6 and narrowed.chunks()[0].key == "date=2024-03-01/origin=EWR"
    assert narrowed.describe() == {"plan": "Product", "plans": [
        {"plan": "DateRange", "start": "2024-03-01", "end": "2024-03-03", "freq": "day"},
        {"plan": "ChunkList", "items": str(ORIGINS.items), "key_field": "item"}]}
    with pytest.raises(ConfigError, match="--start in DateRange and IdRange"):
        Product(DateRange("2024-01-01", "2024-01-02"), IdRange(0, 10, 5)).with_params(start="5")
    with pytest.raises(ConfigError, match="--stop"):
        plan.with_params(stop="5")
    assert pickle.loads(pickle.dumps(narrowed)) == narrowed


def test_product_params_through_distetl_plan(tmp_path):
    stage = Stage(name="daily", plan=_product("2024-01-01", "2024-12-31"), extract=lambda c: pd.DataFrame(),
                  target="{output}/daily/date={date}/origin={origin}/part-0.parquet")
    planned = distetl.plan(Pipeline(name="p", stages=[stage]), str(tmp_path / "out"),
                           params={"start": "2024-02-28", "end": "2024-03-01"})
    assert _keys(planned.stages[0].chunks) == [f"date={d}/origin={o}" for d in ("2024-02-28", "2024-02-29",
                                                                              "2024-03-01") for o in ("EWR", "JFK")]


def test_product_stays_compact():
    plan = Product(DateRange("2015-01-01", "2024-12-31"),
                   ChunkList([f"r{i:03d}" for i in range(100)], key_field="region"))
    tracemalloc.start()
    try:
        chunks = plan.chunks()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(chunks) == 365_300
    assert peak < 2_000_000, peak  # the 100 regions and a few integers, not 365,300 chunks
    assert chunks[365_299].key == "date=2024-12-31/region=r099"
    assert chunks.find("date=2020-02-29/region=r042") == (dt_days("2015-01-01", "2020-02-29")) * 100 + 42


def dt_days(a: str, b: str) -> int:
    import datetime as dt

    return (dt.date.fromisoformat(b) - dt.date.fromisoformat(a)).days


def test_product_targets_are_two_partition_columns(tmp_path):
    template = "{output}/t/date={date}/origin={origin}/part-0.parquet"
    targets = Targets(template, str(tmp_path))
    chunks = _product().chunks()
    assert chunks.safe_values
    paths, committed = targets.plan(chunks)
    assert not committed and len(paths) == 8
    assert paths[3] == f"{tmp_path}/t/date=2024-01-31/origin=JFK/part-0.parquet"
    assert partition_values(template, paths[3], str(tmp_path)) == {"date": "2024-01-31", "origin": "JFK"}


def test_unsafe_field_values_turn_off_the_fast_path_and_are_caught_by_the_template(tmp_path):
    plan = Product(DateRange("2024-01-01", "2024-01-02"),
                   ChunkList([{"origin": "EWR", "url": "s3://x/ewr"}, {"origin": "JFK", "url": "s3://x/jfk"}],
                             key_field="origin"))
    chunks = plan.chunks()
    assert not chunks.safe_values  # the url holds '/'
    Targets("{output}/t/{origin}/{date}.parquet", str(tmp_path)).plan(chunks)  # unused: fine
    with pytest.raises(PlanError, match="safe in one path segment"):
        Targets("{output}/t/{url}/{date}.parquet", str(tmp_path)).plan(chunks)


@pytest.mark.parametrize("plan, words", [
    (Product(DateRange("2024-01-01", "2024-01-02"), ChunkList([{"origin": "EWR", "month": "x"}], key_field="origin")),
     ["field 'month'", "DateRange (dimension 'date')", "ChunkList (dimension 'origin')", "Fix: rename 'month'"]),
    (Product(ChunkList(["a"], key_field="origin"), ChunkList(["b"], key_field="origin")),
     ["dimension 'origin' in two plans", "Fix:"]),
    (Product(DateRange("2024-01-01", "2024-01-02"), ChunkList(["EWR", "A/B"], key_field="origin")),
     ["dimension origin", "'A/B'", "Fix:"]),
    (Product(DateRange("2024-01-01", "2024-01-02"), ChunkList(["EWR", ".."], key_field="origin")),
     ["dimension origin", "'..'", "Fix:"]),
    (Product(DateRange("2024-01-01", "2024-01-02"), ChunkList(["EWR", "a=b"], key_field="origin")),
     ["dimension origin", "'a=b'", "Fix:"]),
])
def test_bad_products_are_plan_errors(plan, words):
    with pytest.raises(PlanError) as exc:
        plan.chunks()
    for word in words:
        assert word in str(exc.value), (word, str(exc.value))


# -- mappings ------------------------------------------------------------------------------


def test_along_calendar_window_derives_month_by_origin():
    upstream = _product().chunks()
    keys = UpstreamKeys.from_chunks(upstream)
    mapping = Along("date", CalendarWindow("month"))
    down = mapping.downstream_chunks(upstream)
    assert _keys(down) == ["month=2024-01/origin=EWR", "month=2024-01/origin=JFK",
                           "month=2024-02/origin=EWR", "month=2024-02/origin=JFK"]
    assert [c.index for c in down] == [0, 1, 2, 3]
    assert dict(down[1].fields) == {"origin": "JFK", "month": "2024-01", "year": "2024",
                                    "start": "2024-01-01", "end": "2024-01-31"}
    assert isinstance(down[1].fields, DimFields) and down[1].fields.of(0)["month"] == "2024-01"
    assert mapping.upstream_keys(down[1], keys) == ["date=2024-01-30/origin=JFK", "date=2024-01-31/origin=JFK"]
    assert resolve_inputs(mapping, down, keys, "monthly", "daily") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    # a stage with its own plan of months × origins reads the same
    own = Product(DateRange("2024-01-01", "2024-02-29", freq="month"), ORIGINS).chunks()
    assert _keys(own) == _keys(down)
    assert resolve_inputs(mapping, own, keys, "monthly", "daily") == [[0, 2], [1, 3], [4, 6], [5, 7]]


def test_along_other_inner_mappings():
    upstream = _product().chunks()
    keys = UpstreamKeys.from_chunks(upstream)
    trailing = Along("date", TrailingDays(1))
    down = trailing.downstream_chunks(upstream)
    assert _keys(down) == _keys(upstream)
    assert resolve_inputs(trailing, down, keys, "a", "b")[:4] == [[0], [1], [0, 2], [1, 3]]
    # a position-based inner mapping goes through keys, per origin
    every = Along("date", AllToOne("dates=all"))
    down = every.downstream_chunks(upstream)
    assert _keys(down) == ["dates=all/origin=EWR", "dates=all/origin=JFK"]
    assert resolve_inputs(every, down, keys, "a", "b") == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert pickle.loads(pickle.dumps(every)) == every and "_memo" not in pickle.loads(pickle.dumps(every)).__dict__


def test_collapse_reads_every_origin_of_a_day():
    upstream = _product().chunks()
    keys = UpstreamKeys.from_chunks(upstream)
    mapping = Collapse("origin")
    down = mapping.downstream_chunks(upstream)
    assert _keys(down) == ["date=2024-01-30", "date=2024-01-31", "date=2024-02-01", "date=2024-02-02"]
    assert dict(down[0].fields) == {"date": "2024-01-30", "year": "2024", "month": "2024-01", "day": "30"}
    assert resolve_inputs(mapping, down, keys, "days", "daily") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    # the collapsed chunks are plain day chunks: calendar mappings apply downstream
    months = CalendarWindow("month").downstream_chunks(down)
    assert _keys(months) == ["month=2024-01", "month=2024-02"]
    # collapsing the first dimension keeps the second
    by_origin = Collapse("date")
    down = by_origin.downstream_chunks(upstream)
    assert _keys(down) == ["origin=EWR", "origin=JFK"]
    assert resolve_inputs(by_origin, down, keys, "o", "daily") == [[0, 2, 4, 6], [1, 3, 5, 7]]


def test_identity_keeps_product_keys():
    upstream = _product().chunks()
    down = Identity().downstream_chunks(upstream)
    assert _keys(down) == _keys(upstream) and dict(down[5].fields) == dict(upstream[5].fields)
    assert resolve_inputs(Identity(), down, UpstreamKeys.from_chunks(upstream), "a", "b") == [[i] for i in range(8)]


def test_mapping_errors_name_the_dimension_and_fix():
    upstream = _product().chunks()
    keys = UpstreamKeys.from_chunks(upstream)
    with pytest.raises(PlanError, match=r"dimension 'day' for Along.*got dimensions \['date', 'origin'\].*Fix"):
        Along("day", CalendarWindow("month")).downstream_chunks(upstream)
    with pytest.raises(PlanError, match=r"dimension 'carrier' for Collapse"):
        Collapse("carrier").downstream_chunks(upstream)
    with pytest.raises(PlanError, match="AllToOne"):
        Collapse("date").downstream_chunks(DateRange("2024-01-01", "2024-01-02").chunks())
    # a downstream plan whose dimensions are in another order than the upstream's
    swapped = Product(ORIGINS, DateRange("2024-01-01", "2024-02-29", freq="month")).chunks()
    with pytest.raises(PlanError, match="order the plans"):
        resolve_inputs(Along("date", CalendarWindow("month")), swapped, keys, "monthly", "daily")
    with pytest.raises(ConfigError):
        Along("date", "month")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Collapse("a/b")


# -- a real run, and the command line ---------------------------------------------------------


def _daily(chunk):
    day = int(chunk.day)
    return pd.DataFrame({"origin": [chunk.origin] * 2, "flights": [day, 100 if chunk.origin == "JFK" else 10]})


def _monthly(frame: pd.DataFrame) -> pd.DataFrame:
    return (frame.groupby("origin", as_index=False)
            .agg(flights=("flights", "sum"), days=("date", "nunique")))


def test_two_stage_run_date_by_origin_to_month_by_origin(tmp_path, prefect_api):
    daily = Stage(name="daily", plan=_product("2024-01-30", "2024-02-02"), extract=_daily,
                  target="{output}/daily/date={date}/origin={origin}/part-0.parquet")
    monthly = Stage(name="monthly", upstream=daily, mapping=Along("date", CalendarWindow("month")),
                    transform=_monthly, target="{output}/monthly/month={month}/origin={origin}/part-0.parquet")
    out = tmp_path / "out"
    report = distetl.run(Pipeline(name="routes", stages=[daily, monthly]), str(out), runner="sequential")
    assert report.ok, report.failed[:3]
    assert [(s["name"], s["written"]) for s in report.stage_summary()] == [("daily", 8), ("monthly", 4)]
    days = ds.dataset(str(out / "daily"), format="parquet", partitioning="hive").to_table().to_pandas()
    assert sorted(days.columns) == ["date", "flights", "origin"] and len(days) == 16
    got = (ds.dataset(str(out / "monthly"), format="parquet", partitioning="hive").to_table().to_pandas()
           .sort_values(["month", "origin"]).reset_index(drop=True))
    assert got[["month", "origin"]].astype(str).values.tolist() == [
        ["2024-01", "EWR"], ["2024-01", "JFK"], ["2024-02", "EWR"], ["2024-02", "JFK"]]
    # January: days 30 and 31; February: days 1 and 2; plus 10 (EWR) or 100 (JFK) per day
    assert got["flights"].tolist() == [30 + 31 + 20, 30 + 31 + 200, 1 + 2 + 20, 1 + 2 + 200]
    assert got["days"].tolist() == [2, 2, 2, 2]


BAD_FLOWS = {
    "shared field": ("Product(DateRange('2024-01-01', '2024-01-03'), ChunkList([{'origin': 'EWR', 'day': 'x'}], key_field='origin'))",
                     "Identity()", ["stage daily", "field 'day'", "dimension 'origin'", "Fix:"]),
    "unsafe value": ("Product(DateRange('2024-01-01', '2024-01-03'), ChunkList(['EWR', 'A/B'], key_field='origin'))",
                     "Identity()", ["stage daily", "dimension origin", "'A/B'", "Fix:"]),
    "missing dimension": ("Product(DateRange('2024-01-01', '2024-01-03'), ChunkList(['EWR'], key_field='origin'))",
                          "Along('region', CalendarWindow('month'))",
                          ["stage monthly", "dimension 'region'", "['date', 'origin']", "Fix:"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FLOWS))
def test_bad_products_exit_2_before_any_compute(case, tmp_path, flow_file):
    plan, mapping, words = BAD_FLOWS[case]
    source = f"""
import pandas as pd
from distetl import Along, CalendarWindow, ChunkList, DateRange, Identity, Pipeline, Product, Stage
daily = Stage(name="daily", plan={plan}, extract=lambda c: pd.DataFrame({{"n": [1]}}),
              target="{{output}}/daily/date={{date}}/origin={{origin}}/part-0.parquet")
monthly = Stage(name="monthly", upstream=daily, mapping={mapping},
                target="{{output}}/monthly/{{index}}.parquet")
pipeline = Pipeline(name="p", stages=[daily, monthly])
"""
    out = tmp_path / "out"
    proc = cli("run", str(flow_file(source)), "--output", str(out), "--runner", "sequential")
    assert proc.returncode == 2, proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)
    assert not out.exists()
