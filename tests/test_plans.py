"""Plans split work into chunks; bad parameters fail at plan time with the fix."""

from __future__ import annotations

import pytest

from distetl import ChunkList, ConfigError, DateRange, FileList, IdRange, PlanError


def test_date_range_by_day_is_inclusive_with_date_fields():
    chunks = DateRange(start="2013-12-30", end="2014-01-02").chunks()
    assert [c.key for c in chunks] == [
        "date=2013-12-30", "date=2013-12-31", "date=2014-01-01", "date=2014-01-02"]
    assert chunks[2]["date"] == "2014-01-01" and chunks[2].year == "2014" and chunks[2]["month"] == "2014-01"
    assert [c.index for c in chunks] == [0, 1, 2, 3]


def test_date_range_by_month_clips_to_the_range():
    chunks = DateRange(start="2013-01-15", end="2013-03-10", freq="month").chunks()
    assert [c.key for c in chunks] == ["month=2013-01", "month=2013-02", "month=2013-03"]
    assert (chunks[0]["start"], chunks[0]["end"]) == ("2013-01-15", "2013-01-31")
    assert chunks[1]["end"] == "2013-02-28"
    assert chunks[2]["end"] == "2013-03-10"


def test_bad_date_range_names_both_dates_and_the_fix():
    with pytest.raises(PlanError) as err:
        DateRange(start="2013-02-01", end="2013-01-01").chunks()
    text = str(err.value)
    assert "Expected --start on or before --end" in text
    assert "2013-02-01" in text and "2013-01-01" in text and "Fix:" in text


def test_malformed_date_says_the_expected_format():
    with pytest.raises(PlanError, match=r"ISO date .*'2013-13-01'"):
        DateRange(start="2013-13-01", end="2013-12-31").chunks()


def test_unknown_freq_is_rejected():
    with pytest.raises(PlanError, match="freq"):
        DateRange(start="2013-01-01", end="2013-01-02", freq="week").chunks()


def test_with_params_converts_and_rejects_unknown_names():
    plan = IdRange(start=0, stop=10, size=3).with_params(stop="25", size="10")
    assert [c.key for c in plan.chunks()] == ["ids=00-09", "ids=10-19", "ids=20-24"]
    with pytest.raises(ConfigError, match="--sise"):
        IdRange(start=0, stop=10).with_params(sise="3")
    with pytest.raises(ConfigError, match="integer for --size"):
        IdRange(start=0, stop=10).with_params(size="ten")


def test_id_range_bounds():
    chunks = IdRange(start=5, stop=12, size=4).chunks()
    assert [(c["start"], c["stop"]) for c in chunks] == [(5, 9), (9, 12)]
    with pytest.raises(PlanError, match="--start below --stop"):
        IdRange(start=5, stop=5).chunks()


def test_chunk_list_of_scalars_and_dicts():
    assert [c.key for c in ChunkList(items=["eu", "us"], key_field="region").chunks()] == [
        "region=eu", "region=us"]
    chunks = ChunkList(items=[{"region": "eu", "n": 1}], key_field="region").chunks()
    assert chunks[0]["n"] == 1
    with pytest.raises(PlanError, match="unique chunk keys"):
        ChunkList(items=["a", "a"]).chunks()


def test_file_list_globs_local_files(tmp_path):
    for name in ("b.csv", "a.csv", "skip.txt"):
        (tmp_path / name).write_text("x\n1\n")
    chunks = FileList(pattern=str(tmp_path / "*.csv")).chunks()
    assert [c.key for c in chunks] == ["file=a.csv", "file=b.csv"]
    assert chunks[0]["stem"] == "a" and chunks[0]["path"].endswith("/a.csv")
    with pytest.raises(PlanError, match="at least one file matching"):
        FileList(pattern=str(tmp_path / "*.parquet")).chunks()
