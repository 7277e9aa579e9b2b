"""The TPC-H graph flow (flows/tpch_graph.py): partitioned facts joined with one-chunk
dimensions, checked number by number against the same query in pandas over the generated
tables; a replaced dimension file makes only its readers stale."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import distetl
from distetl.engine.loader import load_pipeline

from conftest import REPO, cli

GRAPH = str(REPO / "flows" / "tpch_graph.py")
SF, PARTS = 0.1, 4
FOLDER = "sf0_1-p4"


@pytest.fixture(scope="module")
def graph_cache(tmp_path_factory):
    """A private cache with the four tables generated once for the module."""
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("tpch-graph-cache")
        mp.setenv("DISTETL_TPCH_CACHE", str(cache))
        module = __import__(load_pipeline(GRAPH).stages[0].extract.__module__)
        module.ensure_tpch(SF, PARTS, cache, tables=module.TABLES)
        yield cache


def _table(folder: Path, name: str, columns: list[str]) -> pd.DataFrame:
    """A generated table read with plain pandas (decimals as float)."""
    frame = pd.concat([pd.read_parquet(f, columns=columns) for f in sorted((folder / name).glob("*.parquet"))],
                      ignore_index=True)
    for col in columns:
        if frame[col].dtype == object and len(frame) and not isinstance(frame[col].iloc[0], str):
            frame[col] = frame[col].astype("float64") if col != "o_orderdate" else pd.to_datetime(frame[col])
    return frame


def _expected(folder: Path, part: int | None = None) -> pd.DataFrame:
    """Revenue per nation and order year, straight from the generated tables."""
    items = _table(folder, "lineitem", ["l_orderkey", "l_extendedprice", "l_discount"]) if part is None else \
        _table_part(folder, "lineitem", part, ["l_orderkey", "l_extendedprice", "l_discount"])
    orders = _table(folder, "orders", ["o_orderkey", "o_custkey", "o_orderdate"])
    customer = _table(folder, "customer", ["c_custkey", "c_nationkey"])
    nation = _table(folder, "nation", ["n_nationkey", "n_name"])
    j = items.merge(orders, left_on="l_orderkey", right_on="o_orderkey") \
        .merge(customer, left_on="o_custkey", right_on="c_custkey") \
        .merge(nation, left_on="c_nationkey", right_on="n_nationkey")
    j["revenue"] = j["l_extendedprice"] * (1 - j["l_discount"])
    j["year"] = pd.to_datetime(j["o_orderdate"]).dt.year.astype("int64")
    j["nation"] = j["n_name"].astype(str)
    out = j.groupby(["nation", "year"], as_index=False)["revenue"].sum()
    return out.sort_values(["nation", "year"]).reset_index(drop=True)


def _table_part(folder: Path, name: str, part: int, columns: list[str]) -> pd.DataFrame:
    frame = pd.read_parquet(folder / name / f"{name}.{part}.parquet", columns=columns)
    for col in columns:
        if frame[col].dtype == object:
            frame[col] = frame[col].astype("float64")
    return frame


def _read(path: Path) -> pd.DataFrame:
    frame = pq.read_table(path).to_pandas()
    frame["nation"] = frame["nation"].astype(str)
    return frame.sort_values(["nation", "year"]).reset_index(drop=True)


def _compare(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got["nation"]) == list(want["nation"]) and list(got["year"]) == list(want["year"])
    assert got["revenue"].to_numpy() == pytest.approx(want["revenue"].to_numpy(), rel=1e-9)


def test_every_number_equals_the_same_query_in_pandas(tmp_path, graph_cache, prefect_api):
    pipeline = load_pipeline(GRAPH)
    out = tmp_path / "out"
    report = distetl.run(pipeline, str(out), runner="sequential", params={"sf": SF, "parts": PARTS})
    assert report.ok, report.failed[:2]
    assert report.written == PARTS * 3 + 3 == report.total
    folder = graph_cache / FOLDER

    total = pq.read_table(out / "revenue_nation_year" / "part-0.parquet")
    assert total.schema.remove_metadata() == pa.schema(
        [("nation", pa.string()), ("year", pa.int64()), ("revenue", pa.float64())])
    want = _expected(folder)
    got = _read(out / "revenue_nation_year" / "part-0.parquet")
    assert len(got) == 25 * 7 == len(want)  # 25 nations, orders from 1992 to 1998
    assert not got.duplicated(["nation", "year"]).any()
    _compare(got, want)
    for part in range(1, PARTS + 1):
        _compare(_read(out / "revenue_part" / f"part={part:03d}" / "part-0.parquet"), _expected(folder, part))
    for name, per_part in (("lineitem", True), ("orders", True), ("customer", False), ("nation", False)):
        rows = sum(pq.read_metadata(f).num_rows for f in (folder / name).glob("*.parquet"))
        written = [out / name / f"part={p:03d}" / "part-0.parquet" for p in range(1, PARTS + 1)] if per_part \
            else [out / name / "part-0.parquet"]
        assert sum(pq.read_metadata(f).num_rows for f in written) == rows, name
    # Each dimension's record holds its declared source's stamp; the join's record every input.
    nation = json.loads(pq.read_metadata(out / "nation" / "part-0.parquet").metadata[b"distetl.record"])
    assert set(nation["inputs"]) == {"@nation"}
    joined = json.loads(pq.read_metadata(out / "revenue_part" / "part=002" / "part-0.parquet")
                        .metadata[b"distetl.record"])
    assert set(joined["inputs"]) == {"lineitem:part=002", "orders:part=002", "customer:table=customer",
                                     "nation:table=nation"}


def test_a_rewritten_nation_file_makes_nation_and_its_readers_stale_only(tmp_path, graph_cache, prefect_api):
    cache = tmp_path / "cache"  # a copy: the module's cache stays as generated
    shutil.copytree(graph_cache, cache)
    env = {"DISTETL_TPCH_CACHE": str(cache)}
    out = tmp_path / "out"
    args = ("--output", str(out), "--sf", str(SF), "--parts", str(PARTS))
    proc = cli("run", GRAPH, *args, "--runner", "sequential", "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet") if "_distetl" not in p.parts}
    assert len(before) == PARTS * 3 + 3

    time.sleep(0.05)
    path = cache / FOLDER / "nation" / "nation.1.parquet"
    table = pq.read_table(path)
    names = [("ATLANTIS" if n == "PERU" else n) for n in table.column("n_name").to_pylist()]
    assert names.count("ATLANTIS") == 1
    table = table.set_column(table.schema.get_field_index("n_name"), "n_name", pa.array(names, pa.string()))
    pq.write_table(table, path)

    proc = cli("status", GRAPH, *args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = {s["name"]: s["stale"] for s in json.loads(proc.stdout)["stages"]}
    assert counts == {"lineitem": 0, "orders": 0, "customer": 0, "nation": 1, "revenue_part": PARTS,
                      "revenue_nation_year": 1}, counts

    proc = cli("run", GRAPH, *args, "--runner", "sequential", "--stale", "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet") if "_distetl" not in p.parts}
    changed = sorted(str(p.relative_to(out).parent) for p in after if after[p] != before[p])
    assert changed == sorted(["nation", "revenue_nation_year"] +
                             [f"revenue_part/part={p:03d}" for p in range(1, PARTS + 1)]), changed
    got = _read(out / "revenue_nation_year" / "part-0.parquet")
    assert "ATLANTIS" in set(got["nation"]) and "PERU" not in set(got["nation"])
    _compare(got, _expected(cache / FOLDER))
    proc = cli("status", GRAPH, *args, "--json", env=env)
    assert all(s["stale"] == 0 for s in json.loads(proc.stdout)["stages"]), proc.stdout
