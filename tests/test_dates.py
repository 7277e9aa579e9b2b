"""Relative plan dates: today, yesterday and offsets, resolved once per run in UTC or
--tz, in flow files and on the command line."""

from __future__ import annotations

import datetime as dt
import json

import pytest

import distetl
from distetl import ConfigError, DateRange, PlanError, Pipeline
from distetl.model.dates import Today, current, fixed_today, is_relative, resolve_date, today_in

from conftest import cli

D = dt.date


@pytest.mark.parametrize("text, today, expected", [
    ("today", D(2024, 3, 15), D(2024, 3, 15)),
    ("yesterday", D(2024, 3, 15), D(2024, 3, 14)),
    ("today-3d", D(2024, 3, 15), D(2024, 3, 12)),
    ("today+3d", D(2024, 3, 15), D(2024, 3, 18)),
    ("yesterday-1d", D(2024, 3, 15), D(2024, 3, 13)),
    ("today-2w", D(2024, 3, 15), D(2024, 3, 1)),
    ("today-2m", D(2024, 3, 15), D(2024, 1, 15)),
    ("today-1y", D(2024, 3, 15), D(2023, 3, 15)),
    ("TODAY - 7D", D(2024, 3, 15), D(2024, 3, 8)),
    ("2013-01-31", D(2024, 3, 15), D(2013, 1, 31)),
    (D(2013, 1, 31), D(2024, 3, 15), D(2013, 1, 31)),
])
def test_every_form(text, today, expected):
    assert resolve_date(text, today) == expected


def test_months_and_years_clamp_to_the_end_of_the_month():
    assert resolve_date("today-1m", D(2024, 3, 31)) == D(2024, 2, 29)   # leap year
    assert resolve_date("today-1m", D(2023, 3, 31)) == D(2023, 2, 28)
    assert resolve_date("today+1m", D(2024, 1, 31)) == D(2024, 2, 29)
    assert resolve_date("today-1m", D(2024, 5, 31)) == D(2024, 4, 30)
    assert resolve_date("today-1y", D(2024, 2, 29)) == D(2023, 2, 28)
    assert resolve_date("yesterday-1m", D(2024, 3, 1)) == D(2024, 1, 29)  # yesterday is 02-29


def test_year_boundaries():
    assert resolve_date("yesterday", D(2024, 1, 1)) == D(2023, 12, 31)
    assert resolve_date("today-3d", D(2024, 1, 2)) == D(2023, 12, 30)
    assert resolve_date("today-1m", D(2024, 1, 15)) == D(2023, 12, 15)
    assert resolve_date("today+1m", D(2023, 12, 31)) == D(2024, 1, 31)
    assert resolve_date("today-13m", D(2024, 1, 31)) == D(2022, 12, 31)


@pytest.mark.parametrize("text", ["tomorrow", "today-3", "today-d", "today-3x", "today -3d -1d", "2013-13-01",
                                  "yesterday+", "", "today-999999y"])
def test_bad_text_names_the_parameter_and_the_fix(text):
    with pytest.raises(PlanError) as err:
        resolve_date(text, D(2024, 3, 15), "end")
    message = str(err.value)
    assert message.startswith("Expected an ISO date or today/yesterday with an offset like today-3d for end")
    assert repr(text) in message and "Fix:" in message and "--end today-7d" in message


def test_is_relative():
    assert is_relative("today") and is_relative("yesterday-2w") and is_relative(" today+1y ")
    assert not is_relative("2013-01-01") and not is_relative(D(2013, 1, 1)) and not is_relative("today-x")


def test_today_in_a_zone_from_the_test_clock(monkeypatch):
    monkeypatch.setenv("DISTETL_NOW", "2024-03-01T23:30:00Z")
    assert today_in(None) == Today(D(2024, 3, 1), "UTC")
    assert today_in("Asia/Tokyo") == Today(D(2024, 3, 2), "Asia/Tokyo")          # UTC+9: already the 2nd
    assert today_in("America/New_York").date == D(2024, 3, 1)
    monkeypatch.setenv("DISTETL_NOW", "2024-03-02T03:00:00+00:00")
    assert today_in("America/Los_Angeles").date == D(2024, 3, 1)                 # still the 1st there


def test_a_bad_zone_is_a_config_error_naming_it():
    with pytest.raises(ConfigError) as err:
        today_in("Mars/Olympus_Mons")
    assert "'Mars/Olympus_Mons'" in str(err.value) and "--tz" in str(err.value) and "Fix:" in str(err.value)
    with pytest.raises(ConfigError):
        with fixed_today(tz="../etc/passwd"):
            pass


def test_fixed_today_holds_for_the_block_and_date_range_uses_it():
    plan = DateRange(start="today-2d", end="yesterday")
    with fixed_today(today="2024-03-01") as fixed:
        assert current() == fixed == Today(D(2024, 3, 1), "UTC")
        assert [c.key for c in plan.chunks()] == ["date=2024-02-28", "date=2024-02-29"]
    assert current().date != D(2024, 3, 1) or D.today() == D(2024, 3, 1)


def test_resolve_dates_records_what_was_resolved():
    plan = DateRange(start="today-1m", end="yesterday", freq="month")
    resolved = plan.resolve_dates(Today(D(2024, 3, 31), "Europe/Paris"))
    assert (resolved.start, resolved.end) == ("2024-02-29", "2024-03-30")
    assert resolved.describe() == {
        "plan": "DateRange", "start": "2024-02-29", "end": "2024-03-30", "freq": "month",
        "relative": {"start": "today-1m", "end": "yesterday", "today": "2024-03-31", "tz": "Europe/Paris"}}
    fixed = DateRange(start="2013-01-01", end="2013-01-02")
    assert fixed.resolve_dates(Today(D(2024, 3, 31))) is fixed and "relative" not in fixed.describe()
    assert resolved.param_names() == ["start", "end", "freq"]


def test_one_day_for_every_stage_of_a_plan(tmp_path):
    """Two stages with relative plans resolve against the one day fixed for the plan."""
    from distetl import Stage

    first = Stage(name="a", plan=DateRange(start="today-1d", end="today"), extract=lambda c: None,
                  target="{output}/a/{date}.parquet")
    second = Stage(name="b", plan=DateRange(start="yesterday", end="today"), extract=lambda c: None,
                   target="{output}/b/{date}.parquet")
    with fixed_today(today="2024-01-01"):
        planned = distetl.plan(Pipeline(name="two", stages=[first, second]), str(tmp_path))
    assert [c.key for c in planned.chunks] == ["date=2023-12-31", "date=2024-01-01"] * 2
    assert planned.plan.describe()["relative"]["today"] == "2024-01-01"


FLOW = """
import pandas as pd
from distetl import DateRange, Pipeline

pipeline = Pipeline(name="rel", plan=DateRange(start="today-6d", end="yesterday"),
                    extract=lambda chunk: pd.DataFrame({"x": [1]}),
                    target="{output}/rel/date={date}/part-0.parquet")
"""


def test_cli_relative_dates_on_the_command_line_and_in_the_flow_file(tmp_path, flow_file):
    flow = flow_file(FLOW)
    out = str(tmp_path / "out")
    proc = cli("run", str(flow), "--output", out, "--start", "today-2d", "--end", "yesterday", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "total 2, to run 2, to skip 0" in proc.stderr
    defaults = cli("run", str(flow), "--output", out, "--dry-run")       # the flow file's today-6d .. yesterday
    assert defaults.returncode == 0 and "total 6, to run 6" in defaults.stderr, defaults.stderr


def test_cli_tz_changes_today_near_midnight(tmp_path, flow_file):
    flow = flow_file(FLOW)
    out = str(tmp_path / "out")
    now = {"DISTETL_NOW": "2024-03-01T23:30:00Z"}

    def plan_of(*extra: str) -> dict:
        proc = cli("run", str(flow), "--output", out, "--start", "today", "--end", "today", "--dry-run", "--json",
                   *extra, env=now)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["plan"]

    utc = plan_of()
    assert utc["start"] == utc["end"] == "2024-03-01"
    assert utc["relative"] == {"start": "today", "end": "today", "today": "2024-03-01", "tz": "UTC"}
    tokyo = plan_of("--tz", "Asia/Tokyo")
    assert tokyo["start"] == "2024-03-02" and tokyo["relative"]["tz"] == "Asia/Tokyo"
    assert plan_of("--tz", "America/New_York")["start"] == "2024-03-01"

    status = cli("status", str(flow), "--output", out, "--start", "yesterday", "--end", "today", "--tz",
                 "Asia/Tokyo", "--json", env=now)
    assert json.loads(status.stdout)["missing"] == ["date=2024-03-01", "date=2024-03-02"]

    bad = cli("run", str(flow), "--output", out, "--dry-run", "--tz", "Mars/Olympus_Mons", env=now)
    assert bad.returncode == 2 and "'Mars/Olympus_Mons'" in bad.stderr and "Fix:" in bad.stderr
    typo = cli("run", str(flow), "--output", out, "--dry-run", "--start", "today-3x", env=now)
    assert typo.returncode == 2 and "today/yesterday with an offset like today-3d" in typo.stderr
    assert "'today-3x'" in typo.stderr
