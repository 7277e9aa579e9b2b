"""A chunk that reads its own stage's previous chunk: running totals, in order, resumable,
blocked per chain, stale through the chain; and the Previous mapping on its own."""

from __future__ import annotations

import json
import os
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest

import distetl
from distetl import ChunkList, ConfigError, Previous
from distetl.engine.loader import load_pipeline
from distetl.model.mappings import UpstreamKeys, resolve_inputs

from conftest import cli

FLOW = '''
import os
import pandas as pd
from distetl import DateRange, Input, Pipeline, Previous, Stage

DAYS = DateRange(start="2024-01-01", end="2024-01-10")
FAIL = os.environ.get("CHAIN_FAIL_DAY", "")


def daily(chunk):
    scale = int(os.environ.get("CHAIN_SCALE", "1"))  # read at run time: not part of the code version
    return pd.DataFrame({"n": [int(chunk["date"][-2:]) * scale]})


def running(chunk, ctx):
    if chunk["date"] == FAIL:
        raise RuntimeError("day %s is broken" % FAIL)
    n = int(ctx.read_inputs("today")["n"].sum())
    before = ctx.inputs["before"]
    total = int(ctx.read_inputs("before")["total"].iloc[0]) if before else 0
    return pd.DataFrame({"total": [total + n]})


pipeline = Pipeline(name="chain", stages=[
    Stage("daily", plan=DAYS, extract=daily, target="{output}/daily/date={date}/part-0.parquet"),
    Stage("running", plan=DAYS, inputs={"today": "daily", "before": Input("running", Previous())},
          extract=running, target="{output}/running/date={date}/part-0.parquet"),
])
'''


FILES_FLOW = '''
import os
import pandas as pd
from distetl import FileList, Input, Pipeline, Previous, Stage


def daily(chunk, ctx):
    with ctx.open(chunk["path"]) as f:
        return pd.read_csv(f)


def running(chunk, ctx):
    n = int(ctx.read_inputs("today")["n"].sum())
    total = int(ctx.read_inputs("before")["total"].iloc[0]) if ctx.inputs["before"] else 0
    return pd.DataFrame({"total": [total + n]})


pipeline = Pipeline(name="chainfiles", stages=[
    Stage("daily", plan=FileList(pattern=os.environ["CHAIN_DIR"] + "/*.csv"), extract=daily,
          target="{output}/daily/day={stem}/part-0.parquet"),
    Stage("running", inputs={"today": "daily", "before": Input("running", Previous())},
          extract=running, target="{output}/running/date={stem}/part-0.parquet"),
])
'''


def _totals(out) -> dict[str, int]:
    return {p.parent.name[5:]: int(pq.read_table(p).column("total")[0].as_py())
            for p in sorted((out / "running").glob("date=*/part-0.parquet"))}


def _want(scale: int = 1, days: int = 10) -> dict[str, int]:
    total, out = 0, {}
    for d in range(1, days + 1):
        total += d * scale
        out[f"2024-01-{d:02d}"] = total
    return out


def test_a_running_total_runs_in_order_blocks_its_chain_and_resumes(tmp_path, flow_file, prefect_api, monkeypatch):
    path = flow_file(FLOW, "chainflow.py")
    out = tmp_path / "out"
    monkeypatch.setenv("CHAIN_FAIL_DAY", "2024-01-06")
    report = distetl.run(load_pipeline(str(path)), str(out), workers=2)
    assert [(r.stage, r.key) for r in report.failed] == [("running", "date=2024-01-06")]
    assert sorted(r.key for r in report.blocked) == [f"date=2024-01-{d:02d}" for d in range(7, 11)]
    assert _totals(out) == {k: v for k, v in _want().items() if k < "2024-01-06"}
    monkeypatch.setenv("CHAIN_FAIL_DAY", "")
    report = distetl.run(load_pipeline(str(path)), str(out), runner="sequential")
    assert report.ok and report.written == 5, report.failed
    assert _totals(out) == _want()
    # The record keeps the predecessor's data version under the input's name.
    record = json.loads(pq.read_metadata(out / "running" / "date=2024-01-05" / "part-0.parquet")
                        .metadata[b"distetl.record"])
    before = json.loads(pq.read_metadata(out / "running" / "date=2024-01-04" / "part-0.parquet")
                        .metadata[b"distetl.record"])
    assert record["inputs"]["before:date=2024-01-04"] == before["data_version"]


def test_a_redone_link_makes_its_successors_stale_and_a_deleted_link_is_redone_alone(
        tmp_path, flow_file, prefect_api, monkeypatch):
    days = tmp_path / "days"
    days.mkdir()
    for d in range(1, 11):
        (days / f"2024-01-{d:02d}.csv").write_text(f"n\n{d}\n")
    monkeypatch.setenv("CHAIN_DIR", str(days))
    path = flow_file(FILES_FLOW, "chainfiles.py")
    out = tmp_path / "out"
    assert cli("run", str(path), "--output", str(out), "--runner", "sequential", "--no-progress").returncode == 0
    # Deleting one committed link redoes just it: same inputs, same data version, successors stay fresh.
    (out / "running" / "date=2024-01-04" / "part-0.parquet").unlink()
    proc = cli("run", str(path), "--output", str(out), "--runner", "sequential", "--no-progress", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["summary"]["written"] == 1
    status = json.loads(cli("status", str(path), "--output", str(out), "--json").stdout)
    assert {s["name"]: s["stale"] for s in status["stages"]} == {"daily": 0, "running": 0}
    # A replaced day file: its day is stale (input), its link and every later link (upstream), not the earlier.
    time.sleep(0.05)
    (days / "2024-01-07.csv").write_text("n\n14\n")
    status = json.loads(cli("status", str(path), "--output", str(out), "--json").stdout)
    assert {s["name"]: s["stale"] for s in status["stages"]} == {"daily": 1, "running": 4}
    explain = cli("status", str(path), "--output", str(out), "--explain", "file=2024-01-09.csv")
    text = " ".join((explain.stdout + explain.stderr).split())
    assert "running:file=2024-01-09.csv: stale (upstream): input before (running:file=2024-01-08.csv) is stale" \
        in text, text
    assert cli("run", str(path), "--output", str(out), "--runner", "sequential", "--no-progress",
               "--stale").returncode == 0
    want = _want()
    for d in range(7, 11):
        want[f"2024-01-{d:02d}"] += 7  # day 7 now counts 14 instead of 7
    assert _totals(out) == want


def test_narrowing_a_chain_past_its_start_is_a_plan_time_error(tmp_path, flow_file):
    path = flow_file(FLOW, "chainflow.py")
    out = tmp_path / "out"
    proc = cli("run", str(path), "--output", str(out), "--start", "2024-01-05", "--runner", "sequential")
    assert proc.returncode == 2, proc.stderr
    text = " ".join(proc.stderr.split())
    for word in ("chain of stage 'running'", "--start 2024-01-05", "date=2024-01-04", "Fix:"):
        assert word in text, (word, text)
    assert not (out / "running").exists()


def test_previous_reads_k_back_per_chain_and_starts_each_chain_empty():
    keys = [f"date=2024-01-0{d}/origin={o}" for d in (1, 2, 3) for o in ("EWR", "JFK")]
    chunks = [distetl.Chunk(key=k, fields={}, index=i) for i, k in enumerate(keys)]
    view = UpstreamKeys.from_chunks(chunks)
    assert resolve_inputs(Previous(per="origin"), chunks, view, "s", "s") == [[], [], [0], [1], [2], [3]]
    assert resolve_inputs(Previous(), chunks, view, "s", "s") == [[], [0], [1], [2], [3], [4]]
    assert resolve_inputs(Previous(2, per=("origin",)), chunks, view, "s", "s") == [[], [], [], [], [0], [1]]
    assert Previous(per="origin").upstream_keys(chunks[4], view) == ["date=2024-01-02/origin=EWR"]
    with pytest.raises(ConfigError, match="int >= 1"):
        Previous(0)
    with pytest.raises(ConfigError, match="per="):
        resolve_inputs(Previous(per="region"), chunks, view, "s", "s")
    with pytest.raises(ConfigError, match="Previous"):
        Previous().downstream_chunks(ChunkList([1]).chunks())
    assert "_ranked" not in Previous().__getstate__()
