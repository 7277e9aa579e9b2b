"""The stage index: its columns give back the records exactly, and an index in the
older layout (the record's JSON only) still loads."""

from __future__ import annotations

import gc
import io

import pyarrow as pa
import pyarrow.parquet as pq

from distetl.state.records import ChunkRecord, StageIndex
from distetl.storage import Storage


def _records() -> dict[str, tuple[str, ChunkRecord]]:
    return {
        "/o/raw/a.parquet": ("10:1.5", ChunkRecord(key="file=a.csv", stage="raw", version="v1",
                                                   inputs={"source": "5:abc"}, data_version="d1", pipeline="p",
                                                   run_id="r1", rows=3, produced_at="2026-01-01T00:00:00Z",
                                                   distetl="0.1.0")),
        "/o/raw/b.parquet": ("11:2.5", ChunkRecord(key="ids=0-9", stage="raw", version=None, inputs={},
                                                   data_version="d2", pipeline="p", run_id="r1", rows=0)),
        "/o/m/c.parquet": ("12:3.5", ChunkRecord(key="month=2024-01", stage="m", version="v2",
                                                 inputs={"day=2024-01-02": "d4", "day=2024-01-01": None},
                                                 data_version="d3", pipeline="p", run_id="r2", rows=7)),
    }


def test_index_round_trip(tmp_path):
    storage = Storage.for_url(str(tmp_path))
    index = StageIndex(storage, str(tmp_path), "p", "raw")
    entries = _records()
    index.save(entries)
    loaded = index.load()
    assert loaded == entries
    for path, (stamp, record) in loaded.items():
        assert type(record) is ChunkRecord and record.to_json() == entries[path][1].to_json()
    names = pq.ParquetFile(index.path).schema_arrow.names
    assert {"path", "stamp", "key", "record", "version", "data_version", "inputs"} <= set(names)
    assert gc.isenabled()


def test_index_in_the_older_layout_still_loads(tmp_path):
    storage = Storage.for_url(str(tmp_path))
    index = StageIndex(storage, str(tmp_path), "p", "raw")
    entries = _records()
    paths = sorted(entries)
    table = pa.table({"path": paths, "stamp": [entries[p][0] for p in paths],
                      "key": [entries[p][1].key for p in paths],
                      "record": [entries[p][1].to_json() for p in paths]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_atomic(index.path, buffer.getvalue())
    assert index.load() == entries


def test_a_record_of_odd_field_types_falls_back_to_its_json(tmp_path):
    storage = Storage.for_url(str(tmp_path))
    index = StageIndex(storage, str(tmp_path), "p", "raw")
    odd = {"/o/x.parquet": ("1:1", ChunkRecord(key="k", stage="raw", rows="many"))}  # type: ignore[arg-type]
    index.save(odd)
    assert index.load() == odd
