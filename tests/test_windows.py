"""Windows between calendar units: CalendarWindow from any nesting unit to a coarser
window, with offsets and refusals; hour, week, quarter and year plans; one real run
hour → day → month → year (and a month-and-the-month-before stage) checked in Parquet."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pandas as pd
import pytest

from distetl.errors import ConfigError, PlanError
from distetl.model.chunks import Chunk
from distetl.model.chunkseq import HourChunks
from distetl.model.mappings import CalendarWindow, UpstreamKeys, resolve_inputs
from distetl.model.plans import ChunkList, DateRange

UNITS = ["hour", "day", "week", "month", "quarter", "year"]
NESTS = {
    "hour": {"hour", "day", "week", "month", "quarter", "year"},
    "day": {"day", "week", "month", "quarter", "year"},
    "week": {"week"},
    "month": {"month", "quarter", "year"},
    "quarter": {"quarter", "year"},
    "year": {"year"},
}
NESTING = [(up, down) for up in UNITS for down in UNITS if down in NESTS[up]]
REFUSED = [(up, down) for up in UNITS for down in UNITS if down not in NESTS[up]]


def plan(start: str, end: str, freq: str):
    return DateRange(start=start, end=end, freq=freq).chunks()


def keys(chunks) -> list[str]:
    return [c.key for c in chunks]


def view(chunks) -> UpstreamKeys:
    return UpstreamKeys.from_chunks(chunks)


def resolve(mapping, chunks, upstream, stage="down", upstream_stage="up"):
    """resolve_inputs, checked against upstream_keys chunk by chunk."""
    up = view(upstream)
    resolved = resolve_inputs(mapping, chunks, up, stage, upstream_stage)
    for chunk, indexes in zip(chunks, resolved):
        assert [up.index_of(k) for k in mapping.upstream_keys(chunk, up)] == indexes, chunk.key
        assert indexes == sorted(indexes)
    return resolved


def first_moment(chunk: Chunk) -> dt.datetime:
    """When an upstream chunk starts, from its plan fields (not from distetl's arithmetic)."""
    f = chunk.fields
    if "hour" in f:
        return dt.datetime.strptime(f["hour"], "%Y-%m-%dT%H")
    if "day" in f:
        return dt.datetime.strptime(f["date"], "%Y-%m-%d")
    if "week" in f:
        return dt.datetime.strptime(f["week"] + "-1", "%G-W%V-%u")
    if "quarter" in f:
        year, q = f["quarter"].split("-Q")
        return dt.datetime(int(year), 3 * int(q) - 2, 1)
    if "month" in f:
        return dt.datetime.strptime(f["month"], "%Y-%m")
    return dt.datetime(int(f["year"]), 1, 1)


def label(unit: str, moment: dt.datetime) -> str:
    """The key of the ``unit`` window holding ``moment``, written out with strftime."""
    if unit == "hour":
        return moment.strftime("hour=%Y-%m-%dT%H")
    if unit == "day":
        return moment.strftime("date=%Y-%m-%d")
    if unit == "week":
        return moment.strftime("week=%G-W%V")
    if unit == "month":
        return moment.strftime("month=%Y-%m")
    if unit == "quarter":
        return f"quarter={moment.year:04d}-Q{(moment.month - 1) // 3 + 1}"
    return f"year={moment.year:04d}"


# --- every unit pair ----------------------------------------------------------------


def test_the_pairs_cover_every_unit_pair():
    assert len(NESTING) == 6 + 5 + 1 + 3 + 2 + 1 and len(NESTING) + len(REFUSED) == 36


@pytest.mark.parametrize("up, down", NESTING)
def test_every_nesting_pair_reads_exactly_the_upstream_chunks_inside_each_window(up, down):
    start, end = ("2023-12-30", "2024-01-02") if up == "hour" else ("2022-11-20", "2024-02-10")
    upstream = plan(start, end, up)
    mapping = CalendarWindow(down)
    chunks = mapping.downstream_chunks(upstream)
    wanted = sorted({label(down, first_moment(c)) for c in upstream},
                    key=lambda k: first_moment(plan_chunk(k)))
    assert keys(chunks) == wanted
    assert [c.index for c in chunks] == list(range(len(chunks)))
    resolved = resolve(mapping, chunks, upstream)
    for chunk, indexes in zip(chunks, resolved):
        assert indexes == [i for i, c in enumerate(upstream) if label(down, first_moment(c)) == chunk.key]
    # Derived chunks have the fields of the unit's own plan.
    own = DateRange(start="2024-01-01", end="2024-01-01", freq=down).chunks()[0]
    assert list(chunks[-1].fields) == list(own.fields)


def plan_chunk(key: str) -> Chunk:
    """The plan chunk of a window key (to order expected keys by time)."""
    name, value = key.split("=")
    if name == "hour":
        return Chunk(key, {"hour": value})
    if name == "date":
        return Chunk(key, {"date": value, "day": value[8:]})
    return Chunk(key, {name: value, "year": value[:4]})


@pytest.mark.parametrize("up, down", REFUSED)
def test_every_pair_that_does_not_nest_is_refused_naming_the_stage_and_fix(up, down):
    upstream = plan("2023-11-20", "2024-02-10", up)
    mapping = CalendarWindow(down)
    chunks = mapping.downstream_chunks(upstream)  # derived; the refusal comes with the stage
    with pytest.raises(PlanError) as err:
        resolve_inputs(mapping, chunks, view(upstream), "rollup", "source")
    text = str(err.value)
    assert text.startswith("stage rollup (upstream source): Expected upstream chunks that nest")
    assert f"got {up} chunks" in text and "Fix:" in text
    if up == "week" and down in ("month", "quarter", "year"):
        assert f"a week can straddle two {down}s" in text and "CalendarWindow('week')" in text
    else:
        assert "longer than" in text and "WindowDays()" in text


def test_week_to_month_is_refused_at_plan_time_naming_the_stage(tmp_path):
    import distetl

    days = distetl.Stage(name="days", plan=DateRange(start="2024-01-01", end="2024-02-29"),
                         extract=lambda c: pd.DataFrame({"v": [1]}), target="{output}/d/date={date}/p.parquet")
    weeks = distetl.Stage(name="weeks", upstream=days, mapping=CalendarWindow("week"),
                          target="{output}/w/week={week}/p.parquet")
    months = distetl.Stage(name="months", upstream=weeks, mapping=CalendarWindow("month"),
                           target="{output}/m/month={month}/p.parquet")
    pipeline = distetl.Pipeline(name="weeks_to_months", stages=[days, weeks, months])
    with pytest.raises(PlanError) as err:
        distetl.plan(pipeline, str(tmp_path / "out"))
    text = str(err.value)
    assert text.startswith("stage months (upstream weeks): Expected upstream chunks that nest in the month")
    assert "'week=2024-W01'" in text and "make this stage read the day (or hour) stage" in text
    assert err.value.exit_code == 2


# --- behaviour kept for day → week / month / year ----------------------------------


def test_day_windows_keep_their_keys_fields_and_reads():
    upstream = plan("2013-01-15", "2013-03-10", "day")
    months = CalendarWindow("month").downstream_chunks(upstream)
    assert keys(months) == ["month=2013-01", "month=2013-02", "month=2013-03"]
    assert months[0].fields == {"month": "2013-01", "year": "2013", "start": "2013-01-01", "end": "2013-01-31"}
    assert resolve(CalendarWindow("month"), months, upstream) == [
        list(range(0, 17)), list(range(17, 45)), list(range(45, 55))]
    weeks = CalendarWindow("week").downstream_chunks(plan("2014-12-27", "2015-01-05", "day"))
    assert weeks[1].fields == {"week": "2015-W01", "year": "2015", "start": "2014-12-29", "end": "2015-01-04"}
    assert CalendarWindow("month").describe() == "CalendarWindow(unit='month'): each month reads its upstream days"


def test_year_over_month_chunks_now_works_and_over_clipped_month_plans_too():
    months = plan("2013-03-15", "2014-02-10", "month")  # clipped first and last months
    years = CalendarWindow("year").downstream_chunks(months)
    assert [c.fields for c in years] == [
        {"year": "2013", "start": "2013-01-01", "end": "2013-12-31"},
        {"year": "2014", "start": "2014-01-01", "end": "2014-12-31"}]
    assert resolve(CalendarWindow("year"), years, months) == [list(range(10)), [10, 11]]
    quarters = CalendarWindow("quarter").downstream_chunks(months)
    assert keys(quarters) == ["quarter=2013-Q1", "quarter=2013-Q2", "quarter=2013-Q3", "quarter=2013-Q4",
                              "quarter=2014-Q1"]
    assert resolve(CalendarWindow("quarter"), quarters, months) == [[0], [1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11]]


def test_own_clipped_plans_read_their_clipped_range():
    days = plan("2024-01-01", "2024-06-30", "day")
    q = plan("2024-02-10", "2024-05-05", "quarter")
    assert [(c["start"], c["end"]) for c in q] == [("2024-02-10", "2024-03-31"), ("2024-04-01", "2024-05-05")]
    reads = resolve(CalendarWindow("quarter"), q, days)
    assert [days[i].key for i in (reads[0][0], reads[0][-1], reads[1][0], reads[1][-1])] == [
        "date=2024-02-10", "date=2024-03-31", "date=2024-04-01", "date=2024-05-05"]
    hours = plan("2024-01-01", "2024-01-03", "hour")
    own_days = ChunkList(items=["2024-01-02"], key_field="date").chunks()  # label only
    assert resolve(CalendarWindow("day"), own_days, hours) == [list(range(24, 48))]


def test_upstream_keys_of_mixed_units_and_unreadable_windows_are_plan_errors():
    mixed = [Chunk("month=2024-01", {}, 0), Chunk("quarter=2024-Q1", {}, 1)]
    with pytest.raises(PlanError, match=r"upstream chunks all keyed month=.*'quarter=2024-Q1'.*Fix:"):
        CalendarWindow("year").downstream_chunks(mixed)
    bad = [Chunk("month=2024-13", {}, 0)]
    with pytest.raises(PlanError, match="'month=2024-13'"):
        CalendarWindow("year").downstream_chunks(bad)
    hours = plan("2024-01-01", "2024-01-01", "hour")
    with pytest.raises(PlanError, match=r"a day chunk with a 'date' field like '2013-01-03'.*'x=1'"):
        CalendarWindow("day").upstream_keys(Chunk("x=1", {"x": 1}), view(hours))
    with pytest.raises(PlanError, match=r"'quarter' field like '2013-Q1'.*'quarter=2024-Q5'"):
        CalendarWindow("quarter").upstream_keys(Chunk("quarter=2024-Q5", {}), view(hours))


# --- offsets ------------------------------------------------------------------------


def test_the_month_and_the_month_before_from_days():
    days = plan("2023-12-01", "2024-03-31", "day")
    mapping = CalendarWindow("month", start_offset=-1)
    months = plan("2024-01-01", "2024-03-31", "month")
    reads = resolve(mapping, months, days)
    assert [len(r) for r in reads] == [31 + 31, 31 + 29, 29 + 31]
    assert days[reads[0][0]].key == "date=2023-12-01" and days[reads[2][-1]].key == "date=2024-03-31"
    assert "from 1 month before through its own" in mapping.describe()


def test_offsets_like_dagster_same_unit_and_across_units():
    # Dagster's example: start_offset=-1 maps "2022-07-04" to "2022-07-03" and "2022-07-04".
    days = plan("2022-07-01", "2022-07-10", "day")
    assert CalendarWindow("day", start_offset=-1).upstream_keys(days[3], view(days)) == [
        "date=2022-07-03", "date=2022-07-04"]
    # Offsets count downstream windows: hourly upstream, daily downstream → 48 hours.
    hours = plan("2024-01-01", "2024-01-03", "hour")
    own = plan("2024-01-02", "2024-01-03", "day")
    assert [len(r) for r in resolve(CalendarWindow("day", start_offset=-1), own, hours)] == [48, 48]
    months = plan("2023-10-01", "2024-03-31", "month")
    quarters = plan("2023-10-01", "2023-12-31", "quarter")
    assert resolve(CalendarWindow("quarter", end_offset=1), quarters, months) == [[0, 1, 2, 3, 4, 5]]
    # The previous month only; the next hour only.
    assert CalendarWindow("month", start_offset=-1, end_offset=-1).upstream_keys(months[2], view(months)) == [
        "month=2023-11"]
    assert CalendarWindow("hour", start_offset=1, end_offset=1).upstream_keys(hours[5], view(hours)) == [
        "hour=2024-01-01T06"]


def test_offsets_across_year_ends_and_leap_days():
    days = plan("2023-12-01", "2024-03-31", "day")
    jan = plan("2024-01-01", "2024-01-31", "month")
    assert CalendarWindow("month", start_offset=-1).upstream_keys(jan[0], view(days))[0] == "date=2023-12-01"
    feb_week = plan("2024-02-26", "2024-03-03", "week")  # 2024-W09: Feb 26 .. Mar 3
    assert len(CalendarWindow("week", start_offset=-1).upstream_keys(feb_week[0], view(days))) == 14
    # A clipped window keeps its clipped end; the offset moves the start to a full window's.
    clipped = plan("2024-02-26", "2024-02-27", "week")
    assert CalendarWindow("week", start_offset=-1).upstream_keys(clipped[0], view(days)) == [
        f"date=2024-02-{d}" for d in range(19, 28)]


def test_an_offset_reaching_before_the_upstream_start_is_refused_naming_stage_and_fix():
    days = plan("2024-01-15", "2024-06-10", "day")
    mapping = CalendarWindow("month", start_offset=-1)
    months = mapping.downstream_chunks(days)
    with pytest.raises(PlanError) as err:
        resolve_inputs(mapping, months, view(days), "two_months", "daily")
    text = str(err.value)
    assert text.startswith("stage two_months (upstream daily), chunk month=2024-01: Expected the windows")
    assert "before the first upstream chunk" in text and "start by 2023-12-01" in text
    assert "its own plan starting at month=2024-03" in text and "allow_partial=True" in text
    # ... and after the end, with end offsets.
    with pytest.raises(PlanError, match=r"after the last upstream chunk.*ending at month=2024-04"):
        resolve_inputs(CalendarWindow("month", end_offset=1), months, view(days), "s", "u")
    # The plan the message proposes resolves.
    own = plan("2024-03-01", "2024-06-10", "month")
    assert len(resolve(mapping, own, days)) == 4


def test_allow_partial_reads_what_exists_at_the_edges():
    days = plan("2024-01-15", "2024-03-10", "day")
    mapping = CalendarWindow("month", start_offset=-1, allow_partial=True)
    months = mapping.downstream_chunks(days)
    assert [len(r) for r in resolve(mapping, months, days)] == [17, 17 + 29, 29 + 10]
    assert not mapping.allows_empty_inputs
    previous = CalendarWindow("month", start_offset=-1, end_offset=-1, allow_partial=True)
    assert previous.allows_empty_inputs
    assert [len(r) for r in resolve(previous, months, days)] == [0, 17, 29]
    with pytest.raises(PlanError, match="before the first upstream chunk"):
        resolve_inputs(dataclasses.replace(previous, allow_partial=False), months, view(days), "s", "u")


@pytest.mark.parametrize("kwargs, message", [
    ({"unit": "fortnight"}, "'fortnight'"),
    ({"start_offset": 1, "end_offset": 0}, "start_offset at most end_offset"),
    ({"start_offset": True}, "whole number"),
    ({"end_offset": 1.5}, "whole number"),
    ({"allow_partial": "yes"}, "True or False"),
])
def test_calendar_window_arguments_are_checked(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CalendarWindow(**kwargs)


def test_windows_compare_by_all_their_arguments():
    assert CalendarWindow("month", start_offset=-1) == CalendarWindow("month", start_offset=-1)
    assert CalendarWindow("month", start_offset=-1) != CalendarWindow("month")
    assert "allow_partial=True" in CalendarWindow("day", -1, 0, True).describe()


# --- plans: hours, weeks, quarters, years ------------------------------------------


def test_hour_plans_are_compact_and_keyed_by_hour():
    hours = plan("2024-01-03", "2024-01-04", "hour")
    assert isinstance(hours, HourChunks) and len(hours) == 48
    assert hours[5] == Chunk("hour=2024-01-03T05",
                             {"hour": "2024-01-03T05", "date": "2024-01-03", "month": "2024-01", "year": "2024"}, 5)
    assert hours.find("hour=2024-01-04T23") == 47 and hours.find("hour=2024-01-05T00") is None
    assert hours.find("hour=2024-01-03T24") is None and hours.find("date=2024-01-03") is None
    decade = plan("2020-01-01", "2029-12-31", "hour")
    assert len(decade) == 3653 * 24 and decade[-1].key == "hour=2029-12-31T23"
    assert dataclasses.fields(decade) and len(dataclasses.fields(decade)) == 2  # two integers, no chunk list
    assert keys(plan("2024-03-31T22", "2024-04-01T01", "hour")) == [
        "hour=2024-03-31T22", "hour=2024-03-31T23", "hour=2024-04-01T00", "hour=2024-04-01T01"]


def test_hour_plan_start_and_end_apply_from_the_command_line():
    base = DateRange(start="2024-01-01", end="2024-12-31", freq="hour")
    narrowed = base.with_params(start="2024-02-29T22", end="2024-03-01").chunks()
    assert narrowed[0].key == "hour=2024-02-29T22" and narrowed[-1].key == "hour=2024-03-01T23"
    assert len(narrowed) == 26
    with pytest.raises(PlanError, match=r"--start as an ISO day or hour.*'2024-01-01T25'"):
        base.with_params(start="2024-01-01T25").chunks()
    with pytest.raises(PlanError, match=r"start=2024-01-02T05 after end=2024-01-02T04"):
        base.with_params(start="2024-01-02T05", end="2024-01-02T04").chunks()
    with pytest.raises(PlanError, match='freq "hour", "day", "week", "month", "quarter" or "year"'):
        DateRange(start="2024-01-01", end="2024-01-02", freq="minute").chunks()


def test_week_quarter_and_year_plans_clip_to_the_range():
    assert [(c.key, c["start"], c["end"]) for c in plan("2023-12-30", "2024-01-09", "week")] == [
        ("week=2023-W52", "2023-12-30", "2023-12-31"), ("week=2024-W01", "2024-01-01", "2024-01-07"),
        ("week=2024-W02", "2024-01-08", "2024-01-09")]
    assert [c.fields for c in plan("2023-11-15", "2024-02-01", "quarter")] == [
        {"quarter": "2023-Q4", "year": "2023", "start": "2023-11-15", "end": "2023-12-31"},
        {"quarter": "2024-Q1", "year": "2024", "start": "2024-01-01", "end": "2024-02-01"}]
    assert [c.fields for c in plan("2023-11-15", "2024-02-01", "year")] == [
        {"year": "2023", "start": "2023-11-15", "end": "2023-12-31"},
        {"year": "2024", "start": "2024-01-01", "end": "2024-02-01"}]
    assert keys(plan("2024-01-31", "2024-03-01", "month")) == ["month=2024-01", "month=2024-02", "month=2024-03"]


# --- scale (no timing assertions) ---------------------------------------------------


def test_a_year_of_hours_into_days_months_and_years():
    hours = plan("2024-01-01", "2024-12-31", "hour")
    up = view(hours)
    for unit, count in [("day", 366), ("month", 12), ("quarter", 4), ("year", 1)]:
        chunks = CalendarWindow(unit).downstream_chunks(hours)
        assert len(chunks) == count
        resolved = resolve_inputs(CalendarWindow(unit), chunks, up, unit, "hours")
        assert [i for r in resolved for i in r] == list(range(len(hours)))


# --- one real run -------------------------------------------------------------------

FLOW = '''
import pandas as pd
from distetl import CalendarWindow, DateRange, Pipeline, Stage


def extract(chunk):
    hour = int(chunk["hour"][11:])
    day = int(chunk["date"][8:])
    return pd.DataFrame({"v": [float(day * 100 + hour)], "n": [1]})


def add_up(frame):
    return pd.DataFrame({"v": [float(frame["v"].sum())], "n": [int(frame["n"].sum())]})


hourly = Stage(name="hourly", plan=DateRange(start="2024-01-01", end="2024-12-31", freq="hour"),
               extract=extract, target="{output}/hourly/hour={hour}/part-0.parquet")
daily = Stage(name="daily", upstream=hourly, mapping=CalendarWindow("day"), transform=add_up,
              target="{output}/daily/date={date}/part-0.parquet")
monthly = Stage(name="monthly", upstream=daily, mapping=CalendarWindow("month"), transform=add_up,
                target="{output}/monthly/month={month}/part-0.parquet")
two_months = Stage(name="two_months", upstream=daily,
                   mapping=CalendarWindow("month", start_offset=-1, allow_partial=True), transform=add_up,
                   target="{output}/two_months/month={month}/part-0.parquet")
yearly = Stage(name="yearly", upstream=monthly, mapping=CalendarWindow("year"), transform=add_up,
               target="{output}/yearly/year={year}/part-0.parquet")
pipeline = Pipeline(name="windows", stages=[hourly, daily, monthly, two_months, yearly])
'''


def test_hours_to_days_months_and_year_in_a_real_run(tmp_path, flow_file, prefect_api):
    import distetl
    from distetl.engine.loader import load_pipeline

    out = tmp_path / "out"
    pipeline = load_pipeline(str(flow_file(FLOW)))
    report = distetl.run(pipeline, str(out), runner="sequential",
                         params={"start": "2024-01-31T22", "end": "2024-02-01T01"})
    assert report.ok, report.failed[:3]
    assert [(s["name"], s["written"]) for s in report.stage_summary()] == [
        ("hourly", 4), ("daily", 2), ("monthly", 2), ("two_months", 2), ("yearly", 1)]

    def read(stage: str, part: str) -> tuple[float, int]:
        frame = pd.read_parquet(out / stage / part / "part-0.parquet")
        return float(frame["v"].iloc[0]), int(frame["n"].iloc[0])

    jan, feb = 3122.0 + 3123.0, 100.0 + 101.0  # day * 100 + hour
    assert read("daily", "date=2024-01-31") == (jan, 2)
    assert read("daily", "date=2024-02-01") == (feb, 2)
    assert read("monthly", "month=2024-01") == (jan, 2)
    assert read("monthly", "month=2024-02") == (feb, 2)
    assert read("two_months", "month=2024-01") == (jan, 2)  # no December upstream: allowed, partial
    assert read("two_months", "month=2024-02") == (jan + feb, 4)
    assert read("yearly", "year=2024") == (jan + feb, 4)
    assert sorted(p.name for p in (out / "hourly").iterdir()) == [
        "hour=2024-01-31T22", "hour=2024-01-31T23", "hour=2024-02-01T00", "hour=2024-02-01T01"]
