"""What staleness costs ``distetl status``: committed chunks seeded fast, and the two
status calls the ``staleness_cost`` benchmark compares.

Seeding. Running 100,000 chunks through distetl would take minutes of orchestration
the benchmark does not measure, so the committed files are written directly, the way
distetl's worker writes them: per chunk, the record distetl's own ``_chunk_record``
builds (inputs, data version) on the fields ``backfill._record_base`` gives every record
of the stage (its code version among them), with
``rows`` and ``produced_at`` added and serialised exactly as ``execute._produce`` does
(``json.dumps(..., sort_keys=True, default=str)`` under ``distetl.record`` in the schema's
key-value metadata); the chunk's rows (the tiny workload's 20 rows: ``id``, ``value =
id * 0.5``, ``label = "row-{id}"``) as an Arrow table in the stage's schema, written
with ``pyarrow.parquet.write_table`` and the pipeline's compression. :func:`check_sample`
compares one seeded file with what ``_produce`` writes for the same chunk. Local files
are written by two processes without fsync (nothing here is a commit being timed); S3
objects are put straight into the loopback moto server's store (its backend's
``put_object``, what its PutObject handler calls: ~0.2 s for 5,000 against ~15 s over
HTTP, where moto's request handling is the cost), or with one concurrent ``s3fs``
``pipe`` where that store is not reachable; either way they are then listed and read
over HTTP like any S3 object. The stage index is then written as a run
leaves it (``backfill._update_indexes``): one listing, ``index_entries`` of the listing's
stamps and the records, ``StageIndex.save``.

The two status calls (each timed whole, in this process):

``plain``
    What ``distetl status`` cost before staleness: :func:`distetl.engine.backfill.plan` with
    ``_find_stale`` replaced by a no-op. That is: build the stage graph, render every
    chunk's target, check the schema against the template, one recursive listing of the
    stage's root matched against the rendered paths (``Targets.committed``), and
    ``decide``. (The listing's entries become size+mtime/ETag stamps there too; the
    listing itself is the same request either way.)
``staleness``
    ``distetl.status(pipeline, output)`` as users call it: all of the above plus the
    stage's code version, the index read and matched against the listing's stamps,
    footers read for files the index does not cover, ``accepted.json`` read, and every
    committed chunk classified.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, Callable, Mapping, Optional
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import distetl
from distetl.engine import backfill
from distetl.engine.execute import ChunkContext, _chunk_record, _now, _produce
from distetl.state.records import RECORD_KEY, ChunkRecord, StageIndex, index_entries
from distetl.storage import Storage
from distetl.model.targets import Targets

from benchlib import PeakRSS
from workloads import TINY_SCHEMA, tiny_pipeline

__all__ = ["PIPELINE", "check_sample", "forget", "pipeline", "seed", "status_plain", "status_staleness", "timed"]

#: The pipeline (and stage) name of the seeded chunks.
PIPELINE = "stalecost"


def pipeline(chunks: int) -> distetl.Pipeline:
    """The tiny workload's pipeline (20-row chunks, one file each) over ``chunks`` chunks."""
    return tiny_pipeline(chunks, PIPELINE)


def _record_base(pipe: distetl.Pipeline, stage: Any, run_id: str) -> dict[str, Any]:
    """What every record of a stage shares: the fields ``backfill._record_base`` gives
    (the stage's code version as the plan computes it)."""
    return {"pipeline": pipe.name, "stage": stage.name, "version": stage.code_version(), "run_id": run_id,
            "distetl": distetl.__version__}


# -- seeding ------------------------------------------------------------------------------


def _rows(lo: int, hi: int) -> pa.Table:
    """The tiny extract's rows ``lo`` to ``hi`` (exclusive) in the stage's schema."""
    ids = np.arange(lo, hi, dtype="int64")
    return pa.table({"id": ids, "value": ids * 0.5, "label": pa.array([f"row-{i}" for i in range(lo, hi)])},
                    schema=TINY_SCHEMA)


def _file(rows: pa.Table, record: Mapping[str, Any], compression: str) -> tuple[bytes, str]:
    """One chunk's Parquet bytes with its record in the footer, as ``_produce`` writes
    them, and the record's JSON."""
    full = {**record, "rows": rows.num_rows, "produced_at": _now()}
    text = json.dumps(full, sort_keys=True, default=str)
    buffer = io.BytesIO()
    pq.write_table(rows.replace_schema_metadata({RECORD_KEY: text.encode()}), buffer, compression=compression)
    return buffer.getvalue(), text


def _files(chunks: int, lo: int, hi: int, output: str, run_id: str
           ) -> tuple[Callable[[], Any], list[str]]:
    """Chunks ``lo`` to ``hi`` of the seeded stage: an iterator of (path, bytes) and the
    records' JSON, filled as it is consumed."""
    pipe = pipeline(chunks)
    stage = pipe.all_stages[0]
    chunk_list = stage.plan.chunks(None)[lo:hi]
    targets = Targets(stage.target, output)
    paths = targets.render(chunk_list)
    base = _record_base(pipe, stage, run_id)
    table = _rows(chunk_list[0]["start"], chunk_list[-1]["stop"]) if chunk_list else _rows(0, 0)
    offset = chunk_list[0]["start"] if chunk_list else 0
    records: list[str] = []

    def produce():
        for chunk, path in zip(chunk_list, paths):
            record = _chunk_record(base, chunk, (), targets.storage)
            data, text = _file(table.slice(chunk["start"] - offset, chunk["stop"] - chunk["start"]), record,
                               pipe.compression)
            records.append(text)
            yield path, data

    return produce, records


def _write_local(chunks: int, lo: int, hi: int, output: str, run_id: str) -> list[str]:
    """Write chunks ``lo`` to ``hi`` as local files; their records' JSON."""
    produce, records = _files(chunks, lo, hi, output, run_id)
    made: set[str] = set()
    for path, data in produce():
        folder = os.path.dirname(path)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        with open(path, "wb") as handle:
            handle.write(data)
    return records


def seed(chunks: int, output: str, storage_options: Optional[Mapping[str, Any]] = None,
         processes: int = 2, put: Optional[Callable[[dict[str, bytes]], None]] = None) -> float:
    """Commit every chunk of :func:`pipeline` under ``output`` (local: ``processes``
    processes; object stores: ``put`` of every object, URL → bytes, by default one
    concurrent fsspec ``pipe``) and write the stage's index as a run does.

    Returns:
        Seconds taken.
    """
    started = time.perf_counter()
    run_id = uuid.uuid4().hex
    pipe = pipeline(chunks)
    stage = pipe.all_stages[0]
    targets = Targets(stage.target, output, storage_options)
    if targets.storage.is_local:
        bounds = [chunks * k // processes for k in range(processes + 1)]
        with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
            parts = pool.map(_write_local, [chunks] * processes, bounds[:-1], bounds[1:],
                             [targets.output] * processes, [run_id] * processes)
            records = [r for part in parts for r in part]
    else:
        produce, records = _files(chunks, 0, chunks, targets.output, run_id)
        storage = targets.storage
        objects = dict(produce())
        if put is not None:
            put(objects)
        else:
            storage.fs.pipe({storage.strip(path): data for path, data in objects.items()})
    # The index, as backfill._update_indexes leaves it after a run that wrote them all.
    paths = targets.render(stage.plan.chunks(storage_options))
    targets.committed(paths)
    if len(targets.stamps) != chunks:
        raise AssertionError(f"seeded {chunks} chunks, the listing shows {len(targets.stamps)}")
    known = {path: ChunkRecord.from_json(text) for path, text in zip(paths, records)}
    StageIndex(targets.storage, targets.output, pipe.name, stage.name).save(index_entries(targets.stamps, known))
    return time.perf_counter() - started


def check_sample(chunks: int, output: str, storage_options: Optional[Mapping[str, Any]] = None,
                 index: int = 1) -> None:
    """One seeded file holds what ``execute._produce`` writes for its chunk: the same
    schema, rows and record (its time and run id aside)."""
    pipe = pipeline(chunks)
    stage = pipe.all_stages[0]
    chunk = stage.plan.chunks(storage_options)[index]
    targets = Targets(stage.target, output, storage_options)
    path = targets.render([chunk])[0]
    storage = Storage.for_url(output, storage_options)
    seeded = pq.read_table(io.BytesIO(storage.read_bytes(path)))
    record = _chunk_record(_record_base(pipe, stage, "check"), chunk, (), storage)
    produced = _produce(pipe, chunk, ChunkContext(chunk=chunk, output=targets.output, stage=stage.name), record)
    expected = pq.read_table(io.BytesIO(produced.data))
    assert seeded.equals(expected), "seeded rows differ from what distetl writes"
    mine = json.loads(seeded.schema.metadata[RECORD_KEY])
    theirs = json.loads(expected.schema.metadata[RECORD_KEY])
    for volatile in ("produced_at", "run_id"):
        mine.pop(volatile), theirs.pop(volatile)
    assert mine == theirs, (mine, theirs)
    assert set(seeded.schema.metadata) == set(expected.schema.metadata)


def forget(output: str, storage_options: Optional[Mapping[str, Any]] = None, last: Optional[int] = None) -> int:
    """Make the stage's index miss files, as after a driver killed before writing it:
    delete it (``last=None``), or rewrite it without its ``last`` rows (by path order).

    Returns:
        Files the index no longer covers (``last``), or -1 after deleting it.
    """
    storage = Storage.for_url(output, storage_options)
    index = StageIndex(storage, storage.normalize(output), PIPELINE, PIPELINE)
    if last is None:
        assert storage.delete(index.path)
        return -1
    entries = index.load()
    kept = sorted(entries)[:-last] if last else sorted(entries)
    index.save({path: entries[path] for path in kept})
    return last


# -- the two status calls -------------------------------------------------------------------


def status_plain(pipe: distetl.Pipeline, output: str, storage_options: Optional[Mapping[str, Any]] = None):
    """Status as it was before staleness (see the module docstring)."""
    with mock.patch.object(backfill, "_find_stale", lambda planned: None):
        return backfill.plan(pipe, output, storage_options=storage_options)


def status_staleness(pipe: distetl.Pipeline, output: str, storage_options: Optional[Mapping[str, Any]] = None):
    """``distetl.status``: staleness included."""
    return distetl.status(pipe, output, storage_options=storage_options)


def timed(call: Callable[[], Any]) -> tuple[Any, float, PeakRSS]:
    """Call once: its result, its wall seconds, and the driver's peak RSS, CPU seconds and
    the machine's other load meanwhile (:class:`benchlib.PeakRSS`, entered before the
    clock starts)."""
    with PeakRSS() as rss:
        started = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - started
    return result, seconds, rss
