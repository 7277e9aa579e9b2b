"""The parts that keep the driver's memory flat in the chunk count: chunks and paths
generated on demand, committed chunks as a byte map, results counted and spilled."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from distetl.model.chunkseq import DayChunks, IdChunks, IndexSet
from distetl.errors import PlanError
from distetl.engine.execute import BLOCKED, FAILED, WRITTEN, ChunkResult
from distetl.state.ledger import RunLedger
from distetl.model.plans import ChunkList, DateRange, IdRange
from distetl.model.targets import Targets


def _listed(chunks):
    return [chunks[i] for i in range(len(chunks))]


def test_generated_chunks_equal_the_listed_ones_and_find_their_keys():
    ids = IdRange(start=5, stop=10_007, size=1000).chunks()
    assert isinstance(ids, IdChunks) and len(ids) == 11
    assert ids[-1].key == "ids=10005-10006" and ids[-1].fields == {"start": 10005, "stop": 10007,
                                                                   "first": 10005, "last": 10006}
    assert list(ids) == _listed(ids) == ids[0:11] and ids == _listed(ids)
    assert [ids.find(c.key) for c in ids] == list(range(11))
    assert ids.find("ids=00006-01005") is None and ids.find("date=2013-01-01") is None
    days = DateRange(start="2012-02-27", end="2012-03-02").chunks()
    assert isinstance(days, DayChunks)
    assert [c.key for c in days] == ["date=2012-02-27", "date=2012-02-28", "date=2012-02-29",
                                     "date=2012-03-01", "date=2012-03-02"]
    assert days[2].fields == {"date": "2012-02-29", "year": "2012", "month": "2012-02", "day": "29"}
    assert days.find("date=2012-03-01") == 3 and days.find("date=2012-03-03") is None
    with pytest.raises(IndexError):
        days[5]


def test_a_million_chunks_cost_no_memory_until_asked_for():
    code = ("import resource, sys; from distetl.model.plans import IdRange;"
            "c = IdRange(start=0, stop=20_000_000, size=20).chunks(); "
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            "n = sum(1 for _ in c); k = c[999_999].key;"
            "print(n, k, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["1000000", "ids=19999980-19999999"]
    assert int(out[2]) < 20_000, f"iterating a million generated chunks grew the process by {out[2]} KB"


def test_chunk_list_with_many_items_checks_duplicates_in_linear_time():
    items = list(range(200_000)) + [7]
    with pytest.raises(PlanError, match=r"duplicates \['item=7'\]"):
        ChunkList(items=items).chunks()


def test_index_set_behaves_like_a_set_of_ints():
    members = IndexSet(10, [3, 1, 3, 9])
    assert len(members) == 3 and list(members) == [1, 3, 9] and 3 in members and 2 not in members
    assert 10 not in members and -1 not in members and "3" not in members
    members.discard(3)
    members.discard(4)
    assert members == {1, 9} and bool(members)
    full = IndexSet(4, range(4))
    assert list(full) == [0, 1, 2, 3] and not IndexSet(4)


def test_targets_plan_renders_checks_and_finds_committed_in_one_pass(tmp_path):
    targets = Targets("{output}/t/part-{first}.parquet", str(tmp_path))
    chunks = IdRange(start=0, stop=50, size=10).chunks()
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "part-20.parquet").write_bytes(b"x")
    (tmp_path / "t" / ".part-30.parquet.tmp").write_bytes(b"x")
    paths, committed = targets.plan(chunks)
    assert list(committed) == [2] and len(paths) == 5
    assert paths[2] == str(tmp_path / "t" / "part-20.parquet") and paths == [paths[i] for i in range(5)]
    assert set(targets.stamps) == {paths[2]} and targets.stamps[paths[2]].startswith("1:")
    assert targets.hidden == {str(tmp_path / "t" / ".part-30.parquet.tmp")}
    clash = Targets("{output}/t/g={g}/part-0.parquet", str(tmp_path))
    items = [{"item": i, "g": "even" if i % 2 == 0 else f"odd{i}"} for i in range(9)]
    with pytest.raises(PlanError, match=r"chunks 'item=0' and 'item=2' both rendering '.*g=even/part-0.parquet'"):
        clash.plan(ChunkList(items=items).chunks())


def test_ledger_counts_keeps_first_failures_and_spills_every_row(tmp_path, monkeypatch):
    import distetl.state.ledger as ledger_module

    monkeypatch.setattr(ledger_module, "ROWS_PER_GROUP", 7)
    ledger = RunLedger(["a"], keep_failed=3)
    for i in range(30):
        status = FAILED if i % 5 == 0 else (BLOCKED if i == 29 else WRITTEN)
        ledger.add(ChunkResult(key=f"k{i}", path=f"/o/{i}", status=status, rows=i, bytes=2 * i, stage="a",
                               task_run_id=f"t{i // 10}", error="boom" if status != WRITTEN else None,
                               record='{"key": "k"}' if status == WRITTEN else None))
    assert ledger.count(WRITTEN) == 23 and ledger.count(FAILED) == 6 and ledger.count(BLOCKED) == 1
    assert ledger.total_of("rows") == sum(range(30)) and ledger.total_of("bytes") == 2 * sum(range(30))
    assert [r.key for r in ledger.bad] == ["k0", "k5", "k10"] and ledger.bad_total == 7
    assert sorted(ledger.task_runs) == ["t0", "t1", "t2"] and ledger.task_runs["t1"]["chunks"] == 10
    back = ledger.results()
    assert [r.key for r in back] == [f"k{i}" for i in range(30)]
    assert back[1].record == '{"key": "k"}' and back[0].error == "boom" and back[29].status == BLOCKED
    ledger.add(ChunkResult(key="late", path="/o/late", status=WRITTEN, stage="a"))
    assert [r.key for r in ledger.results()][-1] == "late" and len(ledger.results()) == 31
    folder = ledger._folder
    assert folder and any(name.endswith(".parquet") for name in os.listdir(folder))
    ledger.close()
    assert not os.path.exists(folder) and ledger.count(WRITTEN) == 24


def test_a_runs_per_chunk_file_comes_from_the_ledger(tmp_path):
    from distetl.state.manifest import RunReport
    from distetl.storage import Storage

    report = RunReport(pipeline="p", output=str(tmp_path), runner="local", run_id="ab" * 16,
                       started_at="2026-11-22T00:00:00Z", total=3, to_run=3,
                       stages=[{"name": "p", "total": 3, "to_run": 3}])
    report.results = [ChunkResult(key=f"k{i}", path=f"/o/{i}", status=WRITTEN if i else FAILED, rows=i,
                                  stage="p", error=None if i else "bad") for i in range(3)]
    manifest = report.write_manifest(Storage.for_url(str(tmp_path)))
    table = pq.read_table(report.chunks_path)
    assert table.column("key").to_pylist() == ["k0", "k1", "k2"] and table.column("rows").to_pylist() == [0, 1, 2]
    assert "record" not in table.column_names and "path" not in table.column_names
    assert report.written == 2 and report.failed_count == 1 and report.stage_summary()[0]["failed"] == 1
    assert manifest.endswith(".json") and os.path.getsize(manifest) < 4000
