"""Mappings between stages: derived chunks, upstream keys, plan-time errors, scale."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc

import pytest

from distetl.model.chunks import Chunk
from distetl.errors import ConfigError, PlanError
from distetl.model.mappings import (
    AllToOne,
    CalendarWindow,
    FromFunction,
    Identity,
    Mapping,
    TrailingDays,
    UpstreamKeys,
    WindowDays,
    resolve_inputs,
)
from distetl.model.plans import ChunkList, DateRange, IdRange
from distetl.model.templates import TargetTemplate


def days(start: str, end: str) -> list[Chunk]:
    return DateRange(start=start, end=end).chunks()


def keys(chunks) -> list[str]:
    return [c.key for c in chunks]


def day_keys(start: str, end: str) -> list[str]:
    return keys(days(start, end))


def view(chunks) -> UpstreamKeys:
    return UpstreamKeys.from_chunks(chunks)


def assert_consistent(mapping: Mapping, chunks, upstream_chunks) -> list[list[int]]:
    """resolve_inputs agrees with upstream_keys chunk by chunk, and indexes are ascending."""
    up = view(upstream_chunks)
    resolved = resolve_inputs(mapping, chunks, up, "down", "up")
    assert len(resolved) == len(chunks)
    for chunk, indexes in zip(chunks, resolved):
        named = mapping.upstream_keys(chunk, up)
        assert [up.index_of(k) for k in named] == indexes, chunk.key
        assert indexes == sorted(indexes)
    return resolved


class KeysOnly:
    """A caller's own view with only the four methods mappings may use."""

    def __init__(self, keys):
        self._keys = list(keys)
        self._index = {k: i for i, k in enumerate(self._keys)}

    def __contains__(self, key):
        return key in self._index

    def __len__(self):
        return len(self._keys)

    def keys(self):
        return self._keys

    def index_of(self, key):
        return self._index[key]


# --- UpstreamKeys -----------------------------------------------------------------


def test_upstream_keys_view_maps_keys_to_positions():
    up = view(days("2013-01-01", "2013-01-03"))
    assert len(up) == 3
    assert list(up.keys()) == ["date=2013-01-01", "date=2013-01-02", "date=2013-01-03"]
    assert "date=2013-01-02" in up and "date=2013-01-04" not in up
    assert up.index_of("date=2013-01-03") == 2
    assert up.get("date=2013-01-04") is None and up.get("date=2013-01-01") == 0
    with pytest.raises(KeyError):
        up.index_of("date=2013-01-04")


def test_upstream_keys_view_rejects_duplicate_keys():
    with pytest.raises(PlanError, match=r"unique upstream chunk keys.*date=2013-01-01"):
        UpstreamKeys(["date=2013-01-01", "date=2013-01-02", "date=2013-01-01"])


# --- Identity -----------------------------------------------------------------------


def test_identity_keeps_keys_and_fields_and_renumbers():
    upstream = days("2013-01-01", "2013-01-05")[2:]  # indexes 2, 3, 4
    down = Identity().downstream_chunks(upstream)
    assert keys(down) == keys(upstream)
    assert [c.fields for c in down] == [c.fields for c in upstream]
    assert [c.index for c in down] == [0, 1, 2]
    assert Identity().upstream_keys(down[1], view(upstream)) == ["date=2013-01-04"]
    assert assert_consistent(Identity(), down, upstream) == [[0], [1], [2]]


def test_identity_with_a_wider_downstream_plan_names_both_stages_chunk_and_key():
    upstream = days("2013-01-01", "2013-01-03")
    downstream = days("2013-01-02", "2013-01-05")
    with pytest.raises(PlanError) as err:
        resolve_inputs(Identity(), downstream, view(upstream), "clean", "raw")
    text = str(err.value)
    assert "'raw'" in text and "'clean'" in text
    assert "'date=2013-01-04'" in text  # the first missing key, read by chunk date=2013-01-04
    assert "2 missing keys over 2 chunks" in text
    assert "Fix:" in text and text.startswith("stage clean: Expected")


def test_identity_rejects_duplicate_upstream_keys():
    twice = [Chunk("a", {}, 0), Chunk("a", {}, 1)]
    with pytest.raises(PlanError, match="unique chunk keys"):
        Identity().downstream_chunks(twice)


# --- CalendarWindow -----------------------------------------------------------------


def test_months_of_partial_range_have_full_calendar_windows():
    upstream = days("2013-01-15", "2013-03-10")
    down = CalendarWindow("month").downstream_chunks(upstream)
    assert keys(down) == ["month=2013-01", "month=2013-02", "month=2013-03"]
    assert [c.index for c in down] == [0, 1, 2]
    assert down[0].fields == {"month": "2013-01", "year": "2013", "start": "2013-01-01", "end": "2013-01-31"}
    assert (down[1]["start"], down[1]["end"]) == ("2013-02-01", "2013-02-28")
    assert down[2]["end"] == "2013-03-31"
    # Same field names as DateRange(freq="month") chunks, so the same templates work.
    month_plan = DateRange(start="2013-01-01", end="2013-01-31", freq="month").chunks()[0]
    assert list(down[0].fields) == list(month_plan.fields)
    assert TargetTemplate("{output}/m/month={month}/part-0.parquet").render(down[1], "/o") == \
        "/o/m/month=2013-02/part-0.parquet"


def test_month_reads_the_days_of_its_window_that_exist_upstream():
    upstream = days("2013-01-15", "2013-03-10")
    up = view(upstream)
    down = CalendarWindow("month").downstream_chunks(upstream)
    assert CalendarWindow("month").upstream_keys(down[0], up) == day_keys("2013-01-15", "2013-01-31")
    assert CalendarWindow("month").upstream_keys(down[2], up) == day_keys("2013-03-01", "2013-03-10")
    resolved = assert_consistent(CalendarWindow("month"), down, upstream)
    assert resolved == [list(range(0, 17)), list(range(17, 45)), list(range(45, 55))]


def test_leap_february_holds_29_days():
    upstream = days("2012-02-01", "2012-03-01")
    down = CalendarWindow("month").downstream_chunks(upstream)
    assert down[0].key == "month=2012-02" and down[0]["end"] == "2012-02-29"
    feb = CalendarWindow("month").upstream_keys(down[0], view(upstream))
    assert len(feb) == 29 and feb[-1] == "date=2012-02-29"


def test_iso_weeks_across_new_year_use_the_iso_year():
    upstream = days("2014-12-27", "2015-01-05")
    down = CalendarWindow("week").downstream_chunks(upstream)
    assert keys(down) == ["week=2014-W52", "week=2015-W01", "week=2015-W02"]
    assert down[1].fields == {"week": "2015-W01", "year": "2015", "start": "2014-12-29", "end": "2015-01-04"}
    assert (down[0]["start"], down[0]["end"]) == ("2014-12-22", "2014-12-28")
    up = view(upstream)
    assert CalendarWindow("week").upstream_keys(down[0], up) == ["date=2014-12-27", "date=2014-12-28"]
    assert CalendarWindow("week").upstream_keys(down[1], up) == day_keys("2014-12-29", "2015-01-04")
    assert CalendarWindow("week").upstream_keys(down[2], up) == ["date=2015-01-05"]
    assert assert_consistent(CalendarWindow("week"), down, upstream) == [[0, 1], list(range(2, 9)), [9]]


def test_week_53_belongs_to_the_year_it_starts_in():
    down = CalendarWindow("week").downstream_chunks(days("2020-12-31", "2021-01-04"))
    assert keys(down) == ["week=2020-W53", "week=2021-W01"]
    assert down[0].fields == {"week": "2020-W53", "year": "2020", "start": "2020-12-28", "end": "2021-01-03"}


def test_years_have_year_start_end_fields_only():
    upstream = days("2015-12-30", "2016-01-02")
    down = CalendarWindow("year").downstream_chunks(upstream)
    assert keys(down) == ["year=2015", "year=2016"]
    assert down[1].fields == {"year": "2016", "start": "2016-01-01", "end": "2016-12-31"}
    assert assert_consistent(CalendarWindow("year"), down, upstream) == [[0, 1], [2, 3]]


def test_windows_come_in_calendar_order_and_keys_in_upstream_order():
    newest_first = reversed(days("2013-01-30", "2013-02-02"))
    upstream = [dataclasses.replace(c, index=i) for i, c in enumerate(newest_first)]
    down = CalendarWindow("month").downstream_chunks(upstream)
    assert keys(down) == ["month=2013-01", "month=2013-02"]
    up = view(upstream)
    # upstream order here is newest first
    assert CalendarWindow("month").upstream_keys(down[1], up) == ["date=2013-02-02", "date=2013-02-01"]
    assert resolve_inputs(CalendarWindow("month"), down, up, "m", "d") == [[2, 3], [0, 1]]


def test_own_month_plan_reads_its_clipped_range_or_full_month():
    upstream = days("2013-01-01", "2013-02-28")
    up = view(upstream)
    clipped = DateRange(start="2013-01-20", end="2013-02-05", freq="month").chunks()
    assert CalendarWindow("month").upstream_keys(clipped[0], up) == day_keys("2013-01-20", "2013-01-31")
    assert CalendarWindow("month").upstream_keys(clipped[1], up) == day_keys("2013-02-01", "2013-02-05")
    labelled = ChunkList(items=[{"month": "2013-02"}], key_field="month").chunks()
    assert CalendarWindow("month").upstream_keys(labelled[0], up) == day_keys("2013-02-01", "2013-02-28")
    weeks = ChunkList(items=["2013-W05"], key_field="week").chunks()  # key only, no start/end
    assert CalendarWindow("week").upstream_keys(weeks[0], up) == day_keys("2013-01-28", "2013-02-03")


def test_own_month_plan_with_a_month_without_upstream_days_is_a_plan_error():
    upstream = days("2013-01-01", "2013-01-31")
    months = DateRange(start="2013-01-01", end="2013-02-28", freq="month").chunks()
    with pytest.raises(PlanError) as err:
        resolve_inputs(CalendarWindow("month"), months, view(upstream), "monthly", "daily")
    text = str(err.value)
    assert "at least one upstream chunk of stage 'daily'" in text
    assert "'month=2013-02'" in text and "'monthly'" in text and "Fix:" in text


def test_calendar_window_needs_a_date_field_and_names_the_fix():
    with pytest.raises(PlanError) as err:
        CalendarWindow("month").downstream_chunks(IdRange(start=0, stop=10, size=5).chunks())
    text = str(err.value)
    assert "'date' field" in text and "'ids=0-4'" in text
    assert "Identity()" in text and "FromFunction" in text


def test_calendar_window_needs_day_keys_and_iso_dates():
    odd_key = ChunkList(items=[{"day": "d1", "date": "2013-01-01"}], key_field="day").chunks()
    with pytest.raises(PlanError, match=r"keyed date=YYYY-MM-DD.*'day=d1'"):
        CalendarWindow("month").downstream_chunks(odd_key)
    bad_date = ChunkList(items=["2013-13-01"], key_field="date").chunks()
    with pytest.raises(PlanError, match=r"ISO format.*'2013-13-01'"):
        CalendarWindow("month").downstream_chunks(bad_date)
    # date objects in the date field are fine
    as_dates = [Chunk("date=2013-01-05", {"date": dt.date(2013, 1, 5)}, 0)]
    assert keys(CalendarWindow("year").downstream_chunks(as_dates)) == ["year=2013"]


def test_calendar_window_rejects_unknown_units_and_unreadable_windows():
    with pytest.raises(ConfigError, match="'fortnight'"):
        CalendarWindow("fortnight")
    with pytest.raises(PlanError, match=r"'start' and 'end' fields.*'x=1'"):
        CalendarWindow("month").upstream_keys(Chunk("x=1", {"x": 1}), view(days("2013-01-01", "2013-01-02")))


# --- WindowDays ---------------------------------------------------------------------


def test_window_days_of_clipped_months_equal_the_day_plan():
    months = DateRange(start="2013-01-15", end="2013-03-10", freq="month").chunks()
    down = WindowDays().downstream_chunks(months)
    assert down == days("2013-01-15", "2013-03-10")  # same keys, fields and indexes


def test_window_days_of_full_calendar_months_include_the_leap_day():
    months = CalendarWindow("month").downstream_chunks(days("2012-02-10", "2012-03-03"))
    down = WindowDays().downstream_chunks(months)
    assert len(down) == 29 + 31 and down[0].key == "date=2012-02-01" and down[-1].key == "date=2012-03-31"
    assert "date=2012-02-29" in keys(down)
    assert [c.index for c in down] == list(range(60))


def test_window_days_come_in_date_order_whatever_the_window_order():
    months = DateRange(start="2013-01-01", end="2013-02-28", freq="month").chunks()
    backwards = [dataclasses.replace(c, index=i) for i, c in enumerate(reversed(months))]
    down = WindowDays().downstream_chunks(backwards)
    assert down == days("2013-01-01", "2013-02-28")
    assert resolve_inputs(WindowDays(), down, view(backwards), "d", "m") == [[1]] * 31 + [[0]] * 28


def test_window_day_reads_its_month_week_or_year():
    months = DateRange(start="2013-01-01", end="2013-03-31", freq="month").chunks()
    down = WindowDays().downstream_chunks(months)
    up = view(months)
    feb14 = down[31 + 13]
    assert feb14.key == "date=2013-02-14"
    assert WindowDays().upstream_keys(feb14, up) == ["month=2013-02"]
    resolved = assert_consistent(WindowDays(), down, months)
    assert resolved == [[0]] * 31 + [[1]] * 28 + [[2]] * 31

    weeks = CalendarWindow("week").downstream_chunks(days("2014-12-29", "2015-01-04"))
    day = WindowDays().downstream_chunks(weeks)[3]
    assert day.key == "date=2015-01-01"
    assert WindowDays().upstream_keys(day, view(weeks)) == ["week=2015-W01"]
    years = CalendarWindow("year").downstream_chunks(days("2016-01-01", "2016-01-01"))
    assert WindowDays(unit="year").upstream_keys(day, view(years)) == ["year=2015"]


def test_window_days_with_days_outside_the_upstream_windows_is_a_plan_error():
    months = DateRange(start="2013-01-01", end="2013-03-31", freq="month").chunks()
    downstream = days("2013-03-30", "2013-04-02")
    with pytest.raises(PlanError) as err:
        resolve_inputs(WindowDays(), downstream, view(months), "daily", "monthly")
    text = str(err.value)
    assert "'month=2013-04'" in text and "'date=2013-04-01'" in text
    assert "'daily'" in text and "'monthly'" in text and "2 missing keys over 2 chunks" in text


def test_window_days_errors():
    with pytest.raises(PlanError, match=r"'start' and 'end' fields.*'date=2013-01-01'"):
        WindowDays().downstream_chunks(days("2013-01-01", "2013-01-01"))
    overlapping = [Chunk("a=1", {"start": "2013-01-01", "end": "2013-01-05"}, 0),
                   Chunk("a=2", {"start": "2013-01-05", "end": "2013-01-09"}, 1)]
    with pytest.raises(PlanError, match="2013-01-05 in two upstream chunks"):
        WindowDays().downstream_chunks(overlapping)
    ids = IdRange(start=0, stop=10, size=5).chunks()
    with pytest.raises(PlanError, match=r"WindowDays\(unit=\"month\"\)"):
        WindowDays().upstream_keys(days("2013-01-01", "2013-01-01")[0], view(ids))
    with pytest.raises(ConfigError):
        WindowDays(unit="day")


# --- TrailingDays -------------------------------------------------------------------


def test_trailing_days_at_the_plan_start_read_what_exists():
    upstream = days("2013-01-01", "2013-01-10")
    up = view(upstream)
    mapping = TrailingDays(3)
    down = mapping.downstream_chunks(upstream)
    assert down == upstream
    assert mapping.upstream_keys(down[0], up) == ["date=2013-01-01"]
    assert mapping.upstream_keys(down[1], up) == ["date=2013-01-01", "date=2013-01-02"]
    assert mapping.upstream_keys(down[4], up) == day_keys("2013-01-02", "2013-01-05")
    resolved = assert_consistent(mapping, down, upstream)
    assert resolved[:5] == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4]]
    assert resolved[-1] == [6, 7, 8, 9]


def test_trailing_days_without_self_may_read_nothing_at_the_start():
    upstream = days("2013-01-01", "2013-01-05")
    mapping = TrailingDays(2, include_self=False)
    assert mapping.allows_empty_inputs and not TrailingDays(2).allows_empty_inputs
    resolved = assert_consistent(mapping, upstream, upstream)
    assert resolved == [[], [0], [0, 1], [1, 2], [2, 3]]


def test_trailing_days_cross_the_leap_day_and_skip_gaps():
    upstream = days("2012-02-20", "2012-03-05")
    march1 = next(c for c in upstream if c.key == "date=2012-03-01")
    assert TrailingDays(2).upstream_keys(march1, view(upstream)) == [
        "date=2012-02-28", "date=2012-02-29", "date=2012-03-01"]
    weekdays = ChunkList(items=["2013-01-04", "2013-01-07", "2013-01-08"], key_field="date").chunks()
    assert TrailingDays(3).upstream_keys(weekdays[1], view(weekdays)) == [
        "date=2013-01-04", "date=2013-01-07"]
    # 2013-01-08 reads 01-05..01-08: the 4th is out of the window
    assert assert_consistent(TrailingDays(3), weekdays, weekdays) == [[0], [0, 1], [1, 2]]


def test_trailing_days_own_day_missing_upstream_is_reported():
    upstream = days("2013-01-01", "2013-01-05")
    downstream = days("2013-01-04", "2013-01-06")
    with pytest.raises(PlanError) as err:
        resolve_inputs(TrailingDays(7), downstream, view(upstream), "rolling", "daily")
    text = str(err.value)
    assert "'date=2013-01-06'" in text and "'rolling'" in text and "'daily'" in text


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "7"])
def test_trailing_days_needs_a_positive_whole_number(bad):
    with pytest.raises(ConfigError, match="at least 1"):
        TrailingDays(bad)


def test_trailing_days_needs_day_chunks():
    with pytest.raises(PlanError, match="'date' field"):
        TrailingDays(2).downstream_chunks(IdRange(start=0, stop=3, size=1).chunks())


# --- AllToOne -----------------------------------------------------------------------


def test_all_to_one_with_one_upstream_chunk():
    upstream = days("2013-01-01", "2013-01-01")
    down = AllToOne().downstream_chunks(upstream)
    assert down == [Chunk(key="all", fields={}, index=0)]
    assert resolve_inputs(AllToOne(), down, view(upstream), "summary", "daily") == [[0]]


def test_all_to_one_with_many_chunks_reads_all_in_order():
    upstream = days("2013-01-01", "2013-03-31")
    up = view(upstream)
    down = AllToOne(key="year=2013").downstream_chunks(upstream)
    assert len(down) == 1 and down[0].key == "year=2013" and down[0].fields == {"year": "2013"}
    assert AllToOne(key="year=2013").upstream_keys(down[0], up) == keys(upstream)
    assert assert_consistent(AllToOne(key="year=2013"), down, upstream) == [list(range(90))]


def test_all_to_one_fields_and_field_free_templates():
    upstream = days("2013-01-01", "2013-01-02")
    chunk = AllToOne().downstream_chunks(upstream)[0]
    assert TargetTemplate("{output}/carrier_year/part-0.parquet").render(chunk, "/o") == \
        "/o/carrier_year/part-0.parquet"
    assert TargetTemplate("{output}/{key}.parquet").render(chunk, "/o") == "/o/all.parquet"
    given = AllToOne(key="summary", fields={"name": "totals"})
    assert given.downstream_chunks(upstream)[0].fields == {"name": "totals"}
    assert hash(given) == hash(AllToOne(key="summary", fields={"other": 1}))  # fields not hashed
    assert AllToOne().downstream_chunks([]) == []
    with pytest.raises(ConfigError):
        AllToOne(key="")


# --- FromFunction -------------------------------------------------------------------


def test_from_function_cannot_derive_chunks():
    with pytest.raises(PlanError, match="give the stage its own plan"):
        FromFunction(lambda c: []).downstream_chunks(days("2013-01-01", "2013-01-02"))


def test_from_function_keys_are_deduplicated_in_upstream_order_missing_last():
    upstream = days("2013-01-01", "2013-01-05")
    mapping = FromFunction(lambda c: ["date=2013-01-03", "nope", "date=2013-01-01", "date=2013-01-03"])
    assert mapping.upstream_keys(Chunk("x=1"), view(upstream)) == [
        "date=2013-01-01", "date=2013-01-03", "nope"]


def test_from_function_with_an_own_plan_resolves():
    upstream = days("2012-12-31", "2013-02-28")

    def previous_and_own_month(chunk):
        first = dt.date.fromisoformat(chunk["start"])
        yield f"date={(first - dt.timedelta(days=1)).isoformat()}"
        yield from (f"date={d}" for d in (chunk["start"], chunk["end"]))

    months = DateRange(start="2013-01-01", end="2013-02-28", freq="month").chunks()
    resolved = assert_consistent(FromFunction(previous_and_own_month), months, upstream)
    assert resolved == [[0, 1, 31], [31, 32, 59]]


def test_from_function_naming_a_key_not_upstream_is_a_plan_error():
    upstream = days("2013-01-01", "2013-01-31")
    months = DateRange(start="2013-01-01", end="2013-01-31", freq="month").chunks()
    mapping = FromFunction(lambda c: ["date=2013-01-01", "date=2012-12-31"])
    with pytest.raises(PlanError) as err:
        resolve_inputs(mapping, months, view(upstream), "monthly", "daily")
    text = str(err.value)
    assert "'date=2012-12-31'" in text and "'month=2013-01'" in text
    assert "stage 'daily'" in text and "stage 'monthly'" in text and "Fix:" in text


def test_from_function_reading_nothing_is_a_plan_error():
    with pytest.raises(PlanError, match=r"at least one upstream chunk.*'item=b'"):
        resolve_inputs(FromFunction(lambda c: []), ChunkList(items=["b"]).chunks(),
                       view(days("2013-01-01", "2013-01-01")), "s", "u")


def test_from_function_bad_results_and_failures():
    up = view(days("2013-01-01", "2013-01-01"))
    with pytest.raises(PlanError, match=r"return a list, e.g. \['date=2013-01-01'\]"):
        FromFunction(lambda c: "date=2013-01-01").upstream_keys(Chunk("x=1"), up)
    with pytest.raises(PlanError, match="string upstream keys"):
        FromFunction(lambda c: [1]).upstream_keys(Chunk("x=1"), up)
    with pytest.raises(ConfigError):
        FromFunction("not callable")

    def broken(chunk):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom") as err:
        FromFunction(broken).upstream_keys(Chunk("x=1"), up)
    assert any("'x=1'" in note for note in err.value.__notes__)


# --- resolve_inputs and the base class ----------------------------------------------


def test_resolve_inputs_accepts_any_view_with_the_four_methods():
    upstream = days("2013-01-01", "2013-02-10")
    for mapping, chunks in [
        (Identity(), upstream),
        (CalendarWindow("month"), CalendarWindow("month").downstream_chunks(upstream)),
        (TrailingDays(3), upstream),
        (AllToOne(), AllToOne().downstream_chunks(upstream)),
    ]:
        expected = resolve_inputs(mapping, chunks, view(upstream), "d", "u")
        assert resolve_inputs(mapping, chunks, KeysOnly(keys(upstream)), "d", "u") == expected
    with pytest.raises(PlanError, match="'date=2013-03-01'"):
        resolve_inputs(Identity(), days("2013-03-01", "2013-03-01"), KeysOnly(keys(upstream)), "d", "u")


def test_a_custom_mapping_needs_only_upstream_keys():
    @dataclasses.dataclass(frozen=True)
    class Backwards(Mapping):
        def upstream_keys(self, chunk, upstream):
            return list(reversed(upstream.keys()))

        def describe(self):
            return "Backwards()"

    upstream = days("2013-01-01", "2013-01-03")
    assert resolve_inputs(Backwards(), [Chunk("x=1")], view(upstream), "d", "u") == [[0, 1, 2]]
    with pytest.raises(NotImplementedError):
        Backwards().downstream_chunks(upstream)


def test_mappings_are_frozen_comparable_and_describe_themselves():
    mappings = [Identity(), CalendarWindow("week"), WindowDays(), TrailingDays(7),
                AllToOne(), FromFunction(len)]
    descriptions = [m.describe() for m in mappings]
    assert len(set(descriptions)) == len(mappings)
    for mapping, text in zip(mappings, descriptions):
        assert text.startswith(type(mapping).__name__ + "(")
    assert "unit='week'" in descriptions[1] and "days=7" in descriptions[3]
    assert CalendarWindow("month") == CalendarWindow("month") != CalendarWindow("year")
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrailingDays(3).days = 4  # type: ignore[misc]


# --- scale (no timing assertions) ---------------------------------------------------


def test_identity_and_month_windows_over_200k_days():
    first = dt.date(1500, 1, 1).toordinal()
    upstream = []
    for i in range(200_000):
        iso = dt.date.fromordinal(first + i).isoformat()
        upstream.append(Chunk(key=f"date={iso}", fields={"date": iso, "year": iso[:4], "month": iso[:7],
                                                        "day": iso[8:10]}, index=i))
    up = view(upstream)
    assert len(up) == 200_000

    same = Identity().downstream_chunks(upstream)
    resolved = resolve_inputs(Identity(), same, up, "clean", "raw")
    assert len(resolved) == 200_000 and resolved[0] == [0] and resolved[-1] == [199_999]
    assert all(r == [i] for i, r in enumerate(resolved))

    months = CalendarWindow("month").downstream_chunks(upstream)
    last = dt.date.fromordinal(first + 199_999)
    assert months[0].key == "month=1500-01" and months[-1].key == f"month={last:%Y-%m}"
    assert [c.index for c in months] == list(range(len(months)))
    resolved = resolve_inputs(CalendarWindow("month"), months, up, "monthly", "clean")
    assert sum(map(len, resolved)) == 200_000
    assert [i for indexes in resolved for i in indexes] == list(range(200_000))
    assert gc.isenabled()  # the pause during resolution is undone
