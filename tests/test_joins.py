"""Stages with several inputs, one-chunk dimensions and declared sources: real runs on
real Parquet files, staleness through every input, blocking, and plan-time errors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import distetl
from distetl import AllChunks, ConfigError, Identity, Input, Pipeline, Stage
from distetl.engine.loader import load_pipeline
from distetl.model.graph import StageGraph, StagePlan, decide
from distetl.model.mappings import UpstreamKeys, resolve_inputs

from cluster_helpers import DaskProcesses, clean_env
from conftest import cli

FLOW = '''
import os
import pandas as pd
from distetl import AllChunks, ChunkList, Input, Pipeline, Stage

PARTS = ChunkList([1, 2, 3], key_field="part")
FAIL = os.environ.get("JOIN_FAIL_ORDERS_PART", "")


def orders(chunk):
    if str(chunk["part"]) == FAIL:
        raise RuntimeError("orders part %s is broken" % FAIL)
    p = int(chunk["part"])
    return pd.DataFrame({"order_id": [p * 10 + i for i in range(4)],
                         "cust_id": [(p + i) % 3 for i in range(4)]})


def items(chunk):
    p = int(chunk["part"])
    return pd.DataFrame({"order_id": [p * 10 + i % 4 for i in range(8)],
                         "price": [float(p * 100 + i) for i in range(8)]})


def customers(chunk, ctx):
    with ctx.open(ctx.sources["customers"][0]) as f:
        return pd.read_csv(f)


def revenue(chunk, ctx):
    joined = (ctx.read_inputs("items").merge(ctx.read_inputs("orders"), on="order_id")
              .merge(ctx.read_inputs("customers")[["cust_id", "nation"]], on="cust_id"))
    out = joined.groupby("nation", as_index=False)["price"].sum().rename(columns={"price": "revenue"})
    return out.sort_values("nation").reset_index(drop=True)


pipeline = Pipeline(name="joins", stages=[
    Stage("orders", plan=PARTS, extract=orders, target="{output}/orders/part={part}/part-0.parquet"),
    Stage("items", plan=PARTS, extract=items, target="{output}/items/part={part}/part-0.parquet"),
    Stage("customers", plan=ChunkList(["all"]), extract=customers, target="{output}/customers/part-0.parquet",
          sources={"customers": os.environ["JOIN_CUSTOMERS_CSV"]}),
    Stage("revenue", inputs={"items": "items", "orders": "orders", "customers": Input("customers", AllChunks())},
          extract=revenue, target="{output}/revenue/part={part}/part-0.parquet"),
])
'''


def _customers(path: Path, nation_of_1: str = "FRANCE") -> None:
    path.write_text(f"cust_id,nation\n0,GERMANY\n1,{nation_of_1}\n2,JAPAN\n")


def _expected(nation_of_1: str = "FRANCE") -> pd.DataFrame:
    frames = []
    nations = {0: "GERMANY", 1: nation_of_1, 2: "JAPAN"}
    for p in (1, 2, 3):
        orders = pd.DataFrame({"order_id": [p * 10 + i for i in range(4)], "cust_id": [(p + i) % 3 for i in range(4)]})
        items = pd.DataFrame({"order_id": [p * 10 + i % 4 for i in range(8)],
                              "price": [float(p * 100 + i) for i in range(8)]})
        j = items.merge(orders, on="order_id")
        j["nation"] = j["cust_id"].map(nations)
        g = j.groupby("nation", as_index=False)["price"].sum().rename(columns={"price": "revenue"})
        g["part"] = p
        frames.append(g)
    return pd.concat(frames).sort_values(["part", "nation"]).reset_index(drop=True)


def _read_revenue(out: Path) -> pd.DataFrame:
    table = pq.read_table(out / "revenue", partitioning="hive").to_pandas()
    table["part"] = table["part"].astype(int)
    return table[["nation", "revenue", "part"]].sort_values(["part", "nation"]).reset_index(drop=True)


@pytest.fixture
def join_flow(tmp_path, flow_file, monkeypatch):
    csv = tmp_path / "src" / "customers.csv"
    csv.parent.mkdir()
    _customers(csv)
    monkeypatch.setenv("JOIN_CUSTOMERS_CSV", str(csv))
    return flow_file(FLOW, "joinflow.py"), csv


def test_a_join_with_a_dimension_and_a_declared_source_matches_pandas_on_every_runner(
        tmp_path, join_flow, prefect_api):
    path, _ = join_flow
    pipeline = load_pipeline(str(path))
    want = _expected()
    with DaskProcesses(tmp_path / "dask", env={**clean_env(), "JOIN_CUSTOMERS_CSV": os.environ["JOIN_CUSTOMERS_CSV"]}) \
            as procs:
        procs.start(n_workers=2)
        for name, options in {"sequential": {"runner": "sequential"}, "local": {"workers": 2},
                              "remote": {"scheduler": procs.address}}.items():
            out = tmp_path / name
            report = distetl.run(pipeline, str(out), **options)
            assert report.ok and report.written == 3 + 3 + 1 + 3, (name, report.failed[:2])
            pd.testing.assert_frame_equal(_read_revenue(out), want, check_dtype=False)
    # The record keeps every input's data version, under the input's name, plus the source's stamp.
    out = tmp_path / "sequential"
    record = json.loads(pq.read_metadata(out / "revenue" / "part=2" / "part-0.parquet").metadata[b"distetl.record"])
    versions = {name: json.loads(pq.read_metadata(out / f).metadata[b"distetl.record"])["data_version"]
                for name, f in (("items:part=2", "items/part=2/part-0.parquet"),
                                ("orders:part=2", "orders/part=2/part-0.parquet"),
                                ("customers:item=all", "customers/part-0.parquet"))}
    assert record["inputs"] == versions
    dim = json.loads(pq.read_metadata(out / "customers" / "part-0.parquet").metadata[b"distetl.record"])
    size = Path(os.environ["JOIN_CUSTOMERS_CSV"]).stat().st_size
    assert set(dim["inputs"]) == {"@customers"} and dim["inputs"]["@customers"].startswith(f"{size}:")


def test_replacing_the_declared_source_makes_the_dimension_and_its_readers_stale_only(
        tmp_path, join_flow, prefect_api):
    path, csv = join_flow
    out = tmp_path / "out"
    assert cli("run", str(path), "--output", str(out), "--runner", "sequential", "--no-progress").returncode == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet") if "_distetl" not in p.parts}
    time.sleep(0.05)
    _customers(csv, nation_of_1="PERU")
    proc = cli("status", str(path), "--output", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    stale = json.loads(proc.stdout)
    counts = {s["name"]: s["stale"] for s in stale["stages"]}
    assert counts == {"orders": 0, "items": 0, "customers": 1, "revenue": 3}, stale
    explain = cli("status", str(path), "--output", str(out), "--explain", "part=2")
    text = explain.stdout + explain.stderr
    assert "revenue:part=2: stale (upstream): input customers (customers:item=all) is stale (input)" in \
        " ".join(text.split()), text
    explain = cli("status", str(path), "--output", str(out), "--explain", "item=all")
    assert "declared source 'customers'" in explain.stdout + explain.stderr, explain.stdout + explain.stderr
    proc = cli("run", str(path), "--output", str(out), "--runner", "sequential", "--stale", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet") if "_distetl" not in p.parts}
    changed = sorted(str(p.relative_to(out).parent) for p in after if after[p] != before.get(p))
    assert changed == ["customers", "revenue/part=1", "revenue/part=2", "revenue/part=3"]
    pd.testing.assert_frame_equal(_read_revenue(out), _expected("PERU"), check_dtype=False)
    fresh = json.loads(cli("status", str(path), "--output", str(out), "--json").stdout)
    assert all(s["stale"] == 0 for s in fresh["stages"]), fresh


def test_a_failed_input_blocks_its_readers_only_and_the_rerun_fixes_them(
        tmp_path, join_flow, prefect_api, monkeypatch):
    path, _ = join_flow
    out = tmp_path / "out"
    monkeypatch.setenv("JOIN_FAIL_ORDERS_PART", "2")
    report = distetl.run(load_pipeline(str(path)), str(out), runner="sequential")
    assert [(r.stage, r.key) for r in report.failed] == [("orders", "part=2")]
    assert [(r.stage, r.key) for r in report.blocked] == [("revenue", "part=2")]
    assert "orders" in (report.blocked[0].error or "")
    assert sorted(p.name for p in (out / "revenue").iterdir()) == ["part=1", "part=3"]
    monkeypatch.setenv("JOIN_FAIL_ORDERS_PART", "")
    report = distetl.run(load_pipeline(str(path)), str(out), runner="sequential")
    assert report.ok and report.written == 2, report.failed
    pd.testing.assert_frame_equal(_read_revenue(out), _expected(), check_dtype=False)


BAD = {
    "cycle": ('''
from distetl import ChunkList, Input, Pipeline, Stage
r = Stage("r", plan=ChunkList([1]), extract=lambda c: None, target="{output}/r/{key}.parquet")
a = Stage("a", inputs=["r", "b"], extract=lambda c, x: None, target="{output}/a/{key}.parquet")
b = Stage("b", inputs=["a"], target="{output}/b/{key}.parquet")
pipeline = Pipeline(name="p", stages=[r, a, b])
''', ["cycle", "a -> b -> a", "Fix:"]),
    "missing key": ('''
from distetl import ChunkList, FromFunction, Input, Pipeline, Stage
r = Stage("r", plan=ChunkList([1, 2]), extract=lambda c: None, target="{output}/r/{key}.parquet")
d = Stage("d", plan=ChunkList([1]), extract=lambda c: None, target="{output}/d/{key}.parquet")
j = Stage("j", inputs={"main": "r", "dim": Input("d")}, extract=lambda c, x: None,
          target="{output}/j/{key}.parquet")
pipeline = Pipeline(name="p", stages=[r, d, j])
''', ["stage j, input dim", "'item=2'", "Fix:"]),
    "two names": ('''
from distetl import ChunkList, Input, Pipeline, Stage
r = Stage("r", plan=ChunkList([1]), extract=lambda c: None, target="{output}/r/{key}.parquet")
j = Stage("j", inputs=[Input("r"), Input("r")], extract=lambda c, x: None, target="{output}/j/{key}.parquet")
pipeline = Pipeline(name="p", stages=[r, j])
''', ["two inputs named 'r'", "stage j", "Fix:"]),
    "missing source": ('''
from distetl import ChunkList, Pipeline, Stage
r = Stage("r", plan=ChunkList([1]), extract=lambda c: None, target="{output}/r/{key}.parquet",
          sources={"rates": "/nonexistent/rates.csv"})
pipeline = Pipeline(name="p", stages=[r])
''', ["declared source 'rates' of stage 'r'", "/nonexistent/rates.csv", "Fix:"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_plan_time_errors_exit_2_before_any_compute(case, tmp_path, flow_file):
    source, words = BAD[case]
    out = tmp_path / "out"
    proc = cli("run", str(flow_file(source)), "--output", str(out), "--runner", "sequential")
    assert proc.returncode == 2, proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)
    assert not (out / "r").exists()


# -- plain Python: the model without Dask or Prefect ------------------------------------


def _stage(name, **kw):
    return Stage(name, target=f"{{output}}/{name}/{{key}}.parquet", **kw)


def test_input_forms_normalise_to_named_inputs_and_bad_ones_are_refused():
    items = _stage("items", plan=distetl.ChunkList([1]), extract=lambda c: None)
    s = _stage("r", inputs={"i": items, "d": Input("dim", AllChunks())}, extract=lambda c, x: None)
    assert [(i.name, i.upstream, type(i.mapping).__name__) for i in s.all_inputs] == [
        ("i", "items", "Identity"), ("d", "dim", "AllChunks")]
    assert s.upstreams == ["items", "dim"] and not s.is_root
    one = _stage("one", upstream=items)
    assert [(i.name, i.upstream) for i in one.all_inputs] == [("items", "items")]
    assert [i.upstream for i in one.with_options(inputs=["x", "y"], extract=lambda c, x: None).all_inputs] == ["x", "y"]
    with pytest.raises(ConfigError, match="several inputs"):
        _stage("r", inputs=["a", "b"])  # no extract: which input would the default read?
    with pytest.raises(ConfigError, match="either inputs"):
        _stage("r", inputs=["a"], upstream="b")
    with pytest.raises(ConfigError, match="two sources named"):
        _stage("r", plan=distetl.ChunkList([1]), extract=lambda c: None, sources=["/a/x.csv", "/b/x.csv"])


def test_decide_and_the_ready_tracker_follow_every_input():
    from distetl.model.graph import ReadyTracker
    from distetl.model.plans import ChunkList

    a = _stage("a", plan=ChunkList([1, 2]), extract=lambda c: None)
    b = _stage("b", plan=ChunkList([1, 2]), extract=lambda c: None)
    dim = _stage("dim", plan=ChunkList(["all"]), extract=lambda c: None)
    j = _stage("j", inputs={"a": "a", "b": "b", "dim": Input("dim", AllChunks())}, extract=lambda c, x: None)
    graph = StageGraph([j, dim, b, a])
    assert graph.names.index("j") == 3 and graph.select(["j"]) == graph.names
    plans = {}
    for stage in graph.order:
        chunks = stage.plan.chunks() if stage.plan else plans["a"].chunks
        inputs = {i.name: resolve_inputs(i.mapping, chunks, UpstreamKeys.from_chunks(plans[i.upstream].chunks),
                                         stage.name, i.upstream) for i in stage.all_inputs} or None
        plans[stage.name] = StagePlan(stage, chunks, [f"/{stage.name}/{c.key}" for c in chunks], set(), inputs)
    ordered = [plans[n] for n in graph.names]
    need = decide(ordered)
    assert need == {"a": [0, 1], "b": [0, 1], "dim": [0], "j": [0, 1]}
    tracker = ReadyTracker(ordered, need)
    assert tracker.take("j", 5) == []
    tracker.done("a", 0, True)
    tracker.done("b", 0, True)
    assert tracker.take("j", 5) == []  # the dimension is not committed yet
    tracker.done("dim", 0, True)
    assert tracker.take("j", 5) == [0]
    assert tracker.done("b", 1, False) == [("j", 1)] and tracker.blocked[("j", 1)] == "b:item=2"
    # --stale on the dimension: every reader runs, nothing else.
    for p in ordered:
        p.committed = set(range(len(p.chunks)))
    assert decide(ordered, extra={"dim": {0}}) == {"a": [], "b": [], "dim": [0], "j": [0, 1]}


def test_all_chunks_reads_every_upstream_chunk_and_gives_no_chunks_of_its_own():
    from distetl.model.plans import ChunkList

    up = ChunkList(["x", "y"]).chunks()
    down = ChunkList([1, 2, 3]).chunks()
    keys = UpstreamKeys.from_chunks(up)
    assert resolve_inputs(AllChunks(), down, keys, "d", "u") == [[0, 1]] * 3
    assert AllChunks().upstream_keys(down[0], keys) == ["item=x", "item=y"]
    with pytest.raises(ConfigError, match="AllChunks"):
        AllChunks().downstream_chunks(up)
    assert Identity() != AllChunks()


def test_upstream_chunks_no_reader_needs_are_counted_not_needed_not_skipped(tmp_path, prefect_api):
    """A reader over 3 days of a 10-day upstream: the upstream's other 7 chunks are
    neither committed nor run. The table says "not needed", and "skipped" counts only
    committed chunks (on the rerun)."""
    from distetl import DateRange, FromFunction
    from distetl.engine.progress import summary_table

    pipeline = Pipeline(name="needs", stages=[
        Stage("raw", plan=DateRange(start="2024-01-01", end="2024-01-10"),
              extract=lambda c: pd.DataFrame({"x": [1]}), target="{output}/raw/date={date}/part-0.parquet"),
        Stage("pick", plan=DateRange(start="2024-01-03", end="2024-01-05"),
              inputs={"raw": Input("raw", FromFunction(lambda c: [f"date={c['date']}"]))},
              extract=lambda c, ctx: ctx.read_inputs("raw"), target="{output}/pick/date={date}/part-0.parquet"),
    ])
    out = str(tmp_path / "out")
    first = distetl.run(pipeline, out, runner="sequential", progress=False)
    rows = {s["name"]: s for s in first.stage_summary()}
    assert (rows["raw"]["written"], rows["raw"]["skipped"], rows["raw"]["not_needed"]) == (3, 0, 7), rows
    assert (rows["pick"]["written"], rows["pick"]["not_needed"]) == (3, 0), rows
    again = distetl.run(pipeline, out, runner="sequential", progress=False)
    rows = {s["name"]: s for s in again.stage_summary()}
    assert (rows["raw"]["written"], rows["raw"]["skipped"], rows["raw"]["not_needed"]) == (0, 3, 7), rows
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(summary_table(again))
    text = console.export_text()
    assert "not needed" in text and text.count(" 7 ") >= 2, text  # raw and all
