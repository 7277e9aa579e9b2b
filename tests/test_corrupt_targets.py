"""A target that is not a readable Parquet file (a truncated write by another tool, a
partial copy) does not count as committed: status calls it corrupt, a run moves it
aside under ``_distetl/{pipeline}/corrupt/`` and redoes the chunk."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from conftest import cli

FLOW = '''
import pandas as pd
from distetl import IdRange, Pipeline

pipeline = Pipeline(name="trunc", plan=IdRange(0, 40, 10),
                    extract=lambda c: pd.DataFrame({"id": list(range(c["start"], c["stop"]))}),
                    target="{output}/trunc/start={start}/part-0.parquet")
'''


def test_a_truncated_target_is_corrupt_moved_aside_and_redone(tmp_path, flow_file):
    path = flow_file(FLOW, "truncflow.py")
    out = tmp_path / "out"
    first = cli("run", str(path), "--output", str(out), "--runner", "sequential")
    assert first.returncode == 0, first.stderr
    target = out / "trunc" / "start=20" / "part-0.parquet"
    whole = target.read_bytes()
    target.write_bytes(whole[:100])  # 100 bytes of a real chunk's file
    # The control: a Parquet file another tool wrote (no record) is not corrupt.
    other = out / "trunc" / "start=30" / "part-0.parquet"
    pq.write_table(pa.table({"id": list(range(30, 40))}), other)

    status = cli("status", str(path), "--output", str(out), "--json")
    stage = json.loads(status.stdout)["stages"][0]
    assert status.returncode == 1 and stage["corrupt"] == 1 and stage["missing"] == 1, status.stdout
    assert stage["stale_by_cause"]["record"] == 1  # start=30: no record, still committed
    explain = cli("status", str(path), "--output", str(out), "--explain", "ids=20-29")
    assert "ids=20-29: corrupt" in " ".join(explain.stdout.split() + explain.stderr.split())

    again = cli("run", str(path), "--output", str(out), "--runner", "sequential", "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["summary"]["written"] == 1 and [r["key"] for r in report["results"]] == ["ids=20-29"]
    moved = list((out / "_distetl" / "trunc" / "corrupt" / "trunc").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("ids=20-29-") and moved[0].read_bytes() == whole[:100]
    assert report["corrupt_moved"] == [str(moved[0])]
    assert pq.read_table(target).column("id").to_pylist() == list(range(20, 30))
    table = ds.dataset(out / "trunc", partitioning="hive").to_table()
    assert sorted(table.column("id").to_pylist()) == list(range(40))
    assert json.loads(cli("status", str(path), "--output", str(out), "--json").stdout)["stages"][0]["corrupt"] == 0
