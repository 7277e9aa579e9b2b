"""The stage graph as plain data: declaration errors, what runs (pruning), what is ready
and what a failure blocks. No Dask, no Prefect, no files."""

from __future__ import annotations

import pytest

from distetl import AllToOne, CalendarWindow, ConfigError, DateRange, Identity, Pipeline, Stage
from distetl.model.graph import ReadyTracker, StageGraph, StagePlan, decide
from distetl.model.mappings import UpstreamKeys, resolve_inputs


def _extract(chunk):
    return None


def _stages():
    raw = Stage(name="raw", plan=DateRange(start="2013-01-30", end="2013-02-02"), extract=_extract,
                target="{output}/raw/date={date}/part-0.parquet")
    clean = Stage(name="clean", upstream=raw, mapping=Identity(), target="{output}/clean/date={date}/part-0.parquet")
    monthly = Stage(name="monthly", upstream=clean, mapping=CalendarWindow("month"),
                    target="{output}/monthly/month={month}/part-0.parquet")
    total = Stage(name="total", upstream=monthly, mapping=AllToOne(), target="{output}/total/part-0.parquet")
    return [raw, clean, monthly, total]


def _plans(committed: dict[str, set[str]] | None = None) -> list[StagePlan]:
    """Plans of the four stages (4 days, 4 days, 2 months, 1), with the given keys committed."""
    committed = committed or {}
    out: dict[str, StagePlan] = {}
    for stage in StageGraph(_stages()).order:
        if stage.plan is not None:
            chunks = stage.plan.chunks()
        else:
            chunks = stage.mapping.downstream_chunks(out[stage.upstream].chunks)
        inputs = None
        if stage.upstream:
            up = out[stage.upstream]
            inputs = resolve_inputs(stage.mapping, chunks, UpstreamKeys.from_chunks(up.chunks), stage.name, up.name)
        keys = committed.get(stage.name, set())
        out[stage.name] = StagePlan(stage, chunks, [f"/{stage.name}/{c.key}" for c in chunks],
                                    {i for i, c in enumerate(chunks) if c.key in keys}, inputs)
    return list(out.values())


def _keys(plans, need) -> dict[str, list[str]]:
    return {p.name: [p.chunks[i].key for i in need[p.name]] for p in plans}


DAYS = ["date=2013-01-30", "date=2013-01-31", "date=2013-02-01", "date=2013-02-02"]
MONTHS = ["month=2013-01", "month=2013-02"]
EVERYTHING = {"raw": set(DAYS), "clean": set(DAYS), "monthly": set(MONTHS), "total": {"all"}}


def test_stages_are_sorted_upstream_first_whatever_the_declaration_order():
    graph = StageGraph(list(reversed(_stages())))
    assert graph.names == ["raw", "clean", "monthly", "total"]
    assert graph.select(["monthly"]) == ["raw", "clean", "monthly"]
    assert graph.select(["raw"]) == ["raw"]


def test_duplicate_names_unknown_upstreams_and_cycles_are_config_errors():
    raw, clean, monthly, total = _stages()
    with pytest.raises(ConfigError, match="two stages named 'clean'"):
        Pipeline(name="p", stages=[raw, clean, clean.with_options(target="{output}/x/{date}.parquet")])
    with pytest.raises(ConfigError, match="'nope'.*Fix: name an existing stage"):
        Pipeline(name="p", stages=[raw, clean.with_options(upstream="nope")])
    a = Stage(name="a", upstream="b", target="{output}/a/{key}.parquet")
    b = Stage(name="b", upstream="a", target="{output}/b/{key}.parquet")
    with pytest.raises(ConfigError, match="cycle") as err:
        Pipeline(name="p", stages=[raw, a, b])
    assert "a" in str(err.value) and "b" in str(err.value) and "Fix:" in str(err.value)
    with pytest.raises(ConfigError, match="either stages"):
        Pipeline(name="p", stages=[raw], target="{output}/x.parquet")
    with pytest.raises(ConfigError, match="unknown|stage of this pipeline"):
        StageGraph(_stages()).select(["monthy"])


def test_nothing_committed_runs_everything():
    plans = _plans()
    assert _keys(plans, decide(plans)) == {"raw": DAYS, "clean": DAYS, "monthly": MONTHS, "total": ["all"]}


def test_a_committed_downstream_chunk_never_makes_its_missing_upstream_run():
    committed = {**EVERYTHING, "raw": set(DAYS) - {"date=2013-01-31"}}
    plans = _plans(committed)
    assert _keys(plans, decide(plans)) == {"raw": [], "clean": [], "monthly": [], "total": []}


def test_a_missing_month_runs_alone_even_when_its_raw_days_are_gone():
    committed = {**EVERYTHING, "raw": set(), "monthly": {"month=2013-02"}}
    plans = _plans(committed)
    # month=2013-01 is missing: it reads clean days (committed), so nothing below it runs;
    # total is committed, so the redone month does not make it run (nothing is stale here).
    assert _keys(plans, decide(plans)) == {"raw": [], "clean": [], "monthly": ["month=2013-01"], "total": []}


def test_a_missing_clean_day_pulls_in_its_missing_raw_day_only():
    committed = {**EVERYTHING, "raw": {"date=2013-01-30"}, "clean": set(DAYS) - {"date=2013-02-01"},
                 "monthly": {"month=2013-01"}, "total": set()}
    plans = _plans(committed)
    assert _keys(plans, decide(plans)) == {
        "raw": ["date=2013-02-01"], "clean": ["date=2013-02-01"], "monthly": ["month=2013-02"], "total": ["all"],
    }


def test_force_runs_every_chunk_of_the_selected_stages():
    plans = _plans(EVERYTHING)
    assert _keys(plans, decide(plans, force=True)) == {"raw": DAYS, "clean": DAYS, "monthly": MONTHS,
                                                       "total": ["all"]}
    selected = plans[:2]  # --stage clean: raw and clean only
    assert _keys(selected, decide(selected)) == {"raw": [], "clean": []}


def test_ready_chunks_are_released_as_their_inputs_commit():
    plans = _plans()
    tracker = ReadyTracker(plans, decide(plans))
    assert {n: tracker.ready_count(n) for n in tracker.order} == {"raw": 4, "clean": 0, "monthly": 0, "total": 0}
    assert tracker.take("raw", 2) == [0, 1]
    tracker.done("raw", 0, True)
    assert tracker.take("clean", 10) == [0], "clean day 0 is ready once raw day 0 committed: no barrier"
    tracker.done("raw", 1, True)
    tracker.done("clean", 0, True)
    assert tracker.ready_count("monthly") == 0
    tracker.done("clean", 1, True)  # both January days of clean committed
    assert tracker.take("monthly", 10) == [0]
    assert not tracker.finished


def test_a_failed_chunk_blocks_exactly_its_dependants_transitively():
    plans = _plans()
    tracker = ReadyTracker(plans, decide(plans))
    assert tracker.take("raw", 4) == [0, 1, 2, 3]
    tracker.done("raw", 0, True)
    tracker.done("raw", 1, True)
    blocked = tracker.done("raw", 2, False)  # 2013-02-01 fails
    assert sorted(blocked) == [("clean", 2), ("monthly", 1), ("total", 0)]
    assert set(tracker.blocked.values()) == {"raw:date=2013-02-01"}
    tracker.done("raw", 3, True)
    assert tracker.take("clean", 10) == [0, 1, 3]
    for i in (0, 1, 3):
        tracker.done("clean", i, True)
    assert tracker.take("monthly", 10) == [0], "January does not need the failed day"
    tracker.done("monthly", 0, True)
    assert tracker.take("total", 10) == [], "the total reads February, which is blocked"
    assert tracker.finished


def test_a_chunk_not_run_because_the_run_stopped_blocks_nothing():
    plans = _plans()
    tracker = ReadyTracker(plans, decide(plans))
    tracker.take("raw", 4)
    assert tracker.done("raw", 0, False, block=False) == []
    assert tracker.blocked == {}, "a stop is not a failure: readers are not run, not blocked"
    assert ("clean", 0) in tracker.waiting
