"""Chunks bigger than memory: an extract (or transform) returning an iterator of
DataFrames, Arrow tables or record batches is written piece by piece -- to a hidden temp
file beside the target locally, to a multipart upload on S3 (moto's server on loopback)
-- and committed only after the last piece. A failure, a time limit or a stop midway
leaves nothing at the target (no temp file, no pending multipart upload). A worker
writing a chunk of more than 1 GB in memory stays a few pieces above its baseline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import distetl
from distetl import ChunkError, IdRange, Pipeline
from distetl.engine.execute import FAILED, NOT_RUN, SKIPPED, WRITTEN, ChunkContext, run_chunk
from distetl.state.leftovers import TEMP_NAME, find_leftovers
from distetl.engine.loader import load_pipeline
from distetl.state.records import read_record
from distetl.storage import MULTIPART_PART_SIZE, SinkAborted, Storage

from conftest import REPO
from s3_server import S3Server, isolate_aws_env

SCHEMA = pa.schema([("id", pa.int64()), ("value", pa.float64()), ("label", pa.string())])


def _piece(i: int, rows: int = 100) -> pd.DataFrame:
    """Piece ``i`` of a chunk: ids i*rows.., an int ``value`` (the schema says float64),
    a label and a column the schema does not declare."""
    ids = np.arange(i * rows, (i + 1) * rows)
    return pd.DataFrame({"id": ids, "value": ids * 2, "label": [f"p{i}"] * rows, "extra": ids})


def _pipeline(extract, **options) -> Pipeline:
    options.setdefault("schema", SCHEMA)
    return Pipeline(name="big", plan=IdRange(start=0, stop=1, size=1), extract=extract,
                    target="{output}/big/part-{first}.parquet", **options)


def _run(pipeline: Pipeline, output: str, storage_options=None, **kwargs):
    """Run the pipeline's one chunk as a worker does; returns (result, target path)."""
    stage = pipeline.all_stages[0]
    chunk = pipeline.plan.chunks()[0]
    path = f"{output}/big/part-{chunk['start']}.parquet"
    context = ChunkContext(chunk, output, storage_options or {})
    record = {"pipeline": "big", "stage": "big", "key": chunk.key, "version": "v1"}
    result = run_chunk(stage, chunk, path, Storage.for_url(output, storage_options), context,
                       record=record, **kwargs)
    return result, path


def _dir_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


# -- local: streamed, cast, recorded, committed once ----------------------------------------------

def test_generator_of_dataframes_is_written_piece_by_piece_cast_and_recorded(tmp_path):
    produced = []

    def extract(chunk):
        for i in range(5):
            piece = _piece(i)
            produced.append(piece)
            yield piece

    result, path = _run(_pipeline(extract), str(tmp_path))

    assert result.status == WRITTEN, result.error
    assert result.rows == 500 and result.bytes == os.path.getsize(path)
    table = pq.read_table(path)
    assert table.schema.remove_metadata() == SCHEMA, "each piece is cast to the declared schema"
    expected = pd.concat(produced, ignore_index=True)
    pd.testing.assert_frame_equal(table.to_pandas(), expected.assign(value=expected.value.astype(float))
                                  .drop(columns="extra"))
    metadata = pq.read_metadata(path)
    assert metadata.num_row_groups == 5, "one row group per piece: written as they came"
    record = read_record(Storage.for_url(str(tmp_path)), path)
    assert record is not None and record.rows == 500 and record.key == "ids=0-0" and record.version == "v1"
    assert _dir_files(tmp_path) == ["big/part-0.parquet"], "no temp file may remain"


def test_pieces_may_be_arrow_tables_record_batches_or_a_reader_and_the_transform_runs_per_piece(tmp_path):
    seen = []

    def extract(chunk):
        batches = [pa.RecordBatch.from_pandas(_piece(i), preserve_index=False) for i in range(3)]
        return pa.RecordBatchReader.from_batches(batches[0].schema, batches)

    def transform(piece, chunk):  # applied to each piece of a streaming extract
        seen.append(type(piece).__name__)
        return pa.Table.from_batches([piece]).append_column("chunk", pa.array([chunk.key] * piece.num_rows))

    schema = SCHEMA.append(pa.field("chunk", pa.string()))
    result, path = _run(_pipeline(extract, transform=transform, schema=schema), str(tmp_path))

    assert result.status == WRITTEN, result.error
    assert seen == ["RecordBatch"] * 3
    table = pq.read_table(path)
    assert table.schema.remove_metadata() == schema and table.num_rows == 300
    assert set(table.column("chunk").to_pylist()) == {"ids=0-0"}

    # A transform may itself turn one DataFrame into a stream of pieces.
    def explode(frame):
        for start in range(0, len(frame), 40):
            yield frame.iloc[start:start + 40]

    result, path = _run(_pipeline(lambda chunk: _piece(0, rows=100), transform=explode), str(tmp_path / "t"))
    assert result.status == WRITTEN, result.error
    assert pq.read_metadata(path).num_row_groups == 3 and pq.read_table(path).num_rows == 100


def test_without_a_schema_the_first_piece_decides_and_a_mismatch_names_chunk_piece_and_column(tmp_path):
    def pieces(chunk):
        yield pd.DataFrame({"id": [1, 2], "value": [0.5, 1.5]})
        yield pa.table({"id": pa.array([3], pa.int32()), "value": pa.array([2], pa.int64())})  # castable

    result, path = _run(_pipeline(pieces, schema=None), str(tmp_path / "ok"))
    assert result.status == WRITTEN, result.error
    table = pq.read_table(path)
    assert table.column("id").type == pa.int64() and table.column("value").to_pylist() == [0.5, 1.5, 2.0]

    def bad(chunk):
        yield pd.DataFrame({"id": [1], "value": [0.5]})
        yield pd.DataFrame({"id": [2], "value": [1.5]})
        yield pd.DataFrame({"id": ["x"], "value": [1.5]})

    result, path = _run(_pipeline(bad, schema=None), str(tmp_path / "bad"))
    assert result.status == FAILED
    assert "chunk ids=0-0, piece 3" in result.error and "'id'" in result.error and "int64" in result.error
    assert "Pipeline(schema=...)" in result.error
    assert _dir_files(tmp_path / "bad") == []

    def extra(chunk):
        yield pd.DataFrame({"id": [1]})
        yield pd.DataFrame({"id": [2], "surprise": [1]})

    result, _ = _run(_pipeline(extra, schema=None), str(tmp_path / "extra"))
    assert result.status == FAILED and "piece 2" in result.error and "'surprise'" in result.error
    assert _dir_files(tmp_path / "extra") == []

    result, _ = _run(_pipeline(lambda chunk: iter(()), schema=None), str(tmp_path / "empty"))
    assert result.status == FAILED and "an empty iterator" in result.error
    result, path = _run(_pipeline(lambda chunk: iter(())), str(tmp_path / "empty-declared"))
    assert result.status == WRITTEN and pq.read_table(path).schema.remove_metadata() == SCHEMA
    assert read_record(Storage.for_url(str(tmp_path)), path).rows == 0


def test_a_per_piece_transform_returning_a_stream_fails_with_the_rule(tmp_path):
    def whole_stream(pieces):  # written as if it received the iterator: it receives each piece
        for piece in pieces:
            yield piece

    result, _ = _run(_pipeline(lambda chunk: (_piece(i) for i in range(2)), transform=whole_stream),
                     str(tmp_path))
    assert result.status == FAILED
    assert "piece 1" in result.error and "the transform is applied to each" in result.error
    assert _dir_files(tmp_path) == []


def test_partition_columns_are_checked_and_dropped_per_piece(tmp_path):
    def extract(chunk):
        for i in range(3):
            yield _piece(i).assign(region="eu" if i < 2 else "us")

    pipeline = Pipeline(name="big", plan=IdRange(start=0, stop=1, size=1), extract=extract,
                        target="{output}/big/region=eu/part-{first}.parquet", schema=SCHEMA)
    chunk = pipeline.plan.chunks()[0]
    path = f"{tmp_path}/big/region=eu/part-0.parquet"
    result = run_chunk(pipeline.all_stages[0], chunk, path, Storage.for_url(str(tmp_path)),
                       ChunkContext(chunk, str(tmp_path)))
    # The schema does not declare `region`: it is dropped by the cast, nothing to check.
    assert result.status == WRITTEN and "region" not in pq.read_table(path).column_names

    with_region = SCHEMA.append(pa.field("region", pa.string()))
    pipeline = pipeline.with_options(schema=with_region)
    result = run_chunk(pipeline.all_stages[0], chunk, path + ".2", Storage.for_url(str(tmp_path)),
                       ChunkContext(chunk, str(tmp_path)))
    assert result.status == FAILED
    assert "piece 3" in result.error and "'region'" in result.error and "'us'" in result.error


# -- local: failures, kills, time limits and stops leave nothing ---------------------------------

def test_failure_midway_leaves_nothing_at_the_target_and_no_temp_file(tmp_path):
    pulled = []

    def extract(chunk):
        for i in range(10):
            if i == 2:
                raise ValueError("source broke on piece 3")
            pulled.append(i)
            yield _piece(i)

    result, path = _run(_pipeline(extract, retries=1), str(tmp_path))

    assert result.status == FAILED and result.attempts == 2
    assert result.error == "ValueError: source broke on piece 3"
    assert "source broke on piece 3" in result.traceback
    assert pulled == [0, 1, 0, 1]
    assert not os.path.exists(path)
    assert _dir_files(tmp_path) == [], "the temp file must be removed"


def test_a_process_killed_midway_leaves_only_a_temp_file_the_leftovers_cleaner_knows(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_big_chunks import _piece, _run, _pipeline
        def extract(chunk):
            for i in range(10):
                if i == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield _piece(i, rows=10_000)
        _run(_pipeline(extract), {str(tmp_path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=str(REPO))
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    target = tmp_path / "big" / "part-0.parquet"
    assert not target.exists()
    files = _dir_files(tmp_path)
    assert len(files) == 1 and TEMP_NAME.match(Path(files[0]).name), files
    assert (tmp_path / files[0]).stat().st_size > 0, "pieces were written to the temp file"
    assert find_leftovers([str(tmp_path / f) for f in files], [str(target)]) == [str(tmp_path / files[0])]


@pytest.mark.parametrize("how", ["timeout", "stop"])
def test_a_chunk_timed_out_or_stopped_midway_commits_nothing_and_leaves_no_temp_file(tmp_path, how):
    """The hung generator is abandoned in its thread: the caller removes the temp file at
    once, and when the generator wakes up the thread stops at its next piece."""
    release = threading.Event()
    pulled = []

    def extract(chunk):
        for i in range(6):
            if i == 2:
                release.wait(30)  # hangs past the time limit
            pulled.append(i)
            yield _piece(i)

    stop = threading.Event()
    if how == "timeout":
        pipeline = _pipeline(extract, timeout_seconds=0.5)
        kwargs = {}
    else:
        pipeline = _pipeline(extract)
        kwargs = {"should_stop": stop.is_set, "watch_stop": True}
        threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    result, path = _run(pipeline, str(tmp_path), **kwargs)

    assert time.monotonic() - started < 5
    if how == "timeout":
        assert result.status == FAILED and result.timed_out and "timed out after 0.5 s" in result.error
    else:
        assert result.status == NOT_RUN and "stopped" in result.error
    assert pulled == [0, 1]
    assert _dir_files(tmp_path) == [], "the temp file is removed when the chunk is given up on"

    release.set()  # the abandoned thread resumes: it must stop at its next piece
    thread_gone = lambda: not [t for t in threading.enumerate() if t.name == "distetl-chunk-ids=0-0"]
    deadline = time.monotonic() + 10
    while not thread_gone() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert thread_gone()
    assert pulled == [0, 1, 2], "the abandoned thread stops at its next piece"
    assert _dir_files(tmp_path) == []


def test_a_single_arrow_table_takes_the_in_memory_path(tmp_path):
    result, path = _run(_pipeline(lambda chunk: pa.Table.from_pandas(_piece(0), preserve_index=False)),
                        str(tmp_path))
    assert result.status == WRITTEN and pq.read_table(path).schema.remove_metadata() == SCHEMA
    assert pq.read_metadata(path).num_row_groups == 1


STREAM_FLOW = """
import numpy as np
import pandas as pd
import pyarrow as pa
from distetl import IdRange, Pipeline

def extract(chunk):
    for i in range(4):
        ids = np.arange(chunk["start"] * 1000 + i * 250, chunk["start"] * 1000 + (i + 1) * 250)
        yield pd.DataFrame({"id": ids, "value": ids * 0.5})

def double(piece):
    return piece.assign(value=piece.value * 2)

pipeline = Pipeline(name="streamed", plan=IdRange(start=0, stop=3, size=1), extract=extract,
                    transform=double, target="{output}/streamed/part-{first}.parquet",
                    schema=pa.schema([("id", pa.int64()), ("value", pa.float64())]))
"""


def test_streamed_chunks_run_end_to_end_with_records_and_status(tmp_path, flow_file, prefect_api):
    pipeline = load_pipeline(str(flow_file(STREAM_FLOW, name="streamed_flow.py")))
    out = tmp_path / "out"
    report = distetl.run(pipeline, str(out), runner="sequential")
    assert report.ok, report.failed
    assert report.written == 3 and sum(r.rows for r in report.results) == 3000
    table = pq.read_table(out / "streamed")
    assert table.num_rows == 3000 and table.column("value").to_pylist()[:2] == [0.0, 1.0]
    for path in sorted((out / "streamed").glob("*.parquet")):
        assert pq.read_metadata(path).num_row_groups == 4
        assert read_record(Storage.for_url(str(out)), str(path)).rows == 1000
    assert not list(out.rglob("*.tmp"))
    again = distetl.run(pipeline, str(out), runner="sequential")
    assert again.ok and again.written == 0 and again.skipped == 3


# -- S3: multipart upload, completed last, aborted on failure, create-only --------------------------

@pytest.fixture(scope="module")
def s3():
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def aws(monkeypatch, tmp_path):
    isolate_aws_env(monkeypatch, tmp_path)


@pytest.fixture
def bucket(s3, aws):
    name = f"distetl-big-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(name)
    return name


def _random_pieces(count: int, rows: int = 200_000, fail_at: int | None = None, hang: threading.Event | None = None):
    """Pieces of incompressible float64 (rows x 3 columns x 8 bytes each: 4.8 MB)."""
    def extract(chunk):
        rng = np.random.default_rng(7)
        for i in range(count):
            if fail_at is not None and i == fail_at:
                raise ValueError(f"source broke on piece {i + 1}")
            if hang is not None and i == 2:
                hang.wait(30)
            yield pd.DataFrame({"id": np.arange(i * rows, (i + 1) * rows), "a": rng.random(rows), "b": rng.random(rows)})
    return extract


S3_SCHEMA = pa.schema([("id", pa.int64()), ("a", pa.float64()), ("b", pa.float64())])


def _pending_uploads(s3: S3Server, bucket: str) -> list:
    return s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def test_s3_a_streamed_chunk_is_one_multipart_upload_completed_after_the_last_piece(s3, bucket):
    output = f"s3://{bucket}/out"
    options = {"endpoint_url": s3.endpoint}
    mark = s3.requests.mark()
    result, path = _run(_pipeline(_random_pieces(4), schema=S3_SCHEMA, compression="none"), output, options)
    key = "out/big/part-0.parquet"
    requests = [(m, p) for m, p, _ in s3.requests.since(mark) if p.startswith(f"/{bucket}/{key}")]

    assert result.status == WRITTEN, result.error
    size = s3.keys(bucket, "out/")[key]
    assert size == result.bytes and size > 14 * 2**20
    head = s3.client().head_object(Bucket=bucket, Key=key)
    parts = -(-size // MULTIPART_PART_SIZE)
    assert head["ETag"].strip('"').endswith(f"-{parts}"), head["ETag"]
    assert requests[0] == ("POST", f"/{bucket}/{key}?uploads")
    assert [m for m, p in requests if "partNumber=" in p] == ["PUT"] * parts
    assert requests[-1][0] == "POST" and "uploadId=" in requests[-1][1], "completed last"
    assert not [r for r in requests if r[0] == "PUT" and "partNumber=" not in r[1]], "never a PUT to the key"
    fs = Storage.for_url(output, options).fs
    table = pq.read_table(f"{bucket}/{key}", filesystem=fs)
    assert table.num_rows == 800_000 and table.column("id").to_pylist()[-1] == 799_999
    assert read_record(Storage.for_url(output, options), path).rows == 800_000
    assert _pending_uploads(s3, bucket) == []


def test_s3_failure_midway_aborts_the_upload_and_leaves_no_object(s3, bucket):
    output = f"s3://{bucket}/out"
    options = {"endpoint_url": s3.endpoint}
    mark = s3.requests.mark()
    result, _ = _run(_pipeline(_random_pieces(6, fail_at=3), schema=S3_SCHEMA, compression="none"), output, options)

    assert result.status == FAILED and result.error == "ValueError: source broke on piece 4"
    requests = [(m, p) for m, p, _ in s3.requests.since(mark)]
    assert [m for m, p in requests if "partNumber=" in p], "parts were uploaded before the failure"
    assert requests[-1][0] == "DELETE" and "uploadId=" in requests[-1][1], "the upload is aborted"
    assert s3.keys(bucket) == {}
    assert _pending_uploads(s3, bucket) == []


def test_s3_a_timed_out_chunk_has_its_upload_aborted_by_the_caller(s3, bucket):
    output = f"s3://{bucket}/out"
    release = threading.Event()
    pipeline = _pipeline(_random_pieces(6, hang=release), schema=S3_SCHEMA, compression="none", timeout_seconds=2)
    result, _ = _run(pipeline, output, {"endpoint_url": s3.endpoint})
    assert result.status == FAILED and result.timed_out
    assert s3.keys(bucket) == {} and _pending_uploads(s3, bucket) == []
    release.set()
    deadline = time.monotonic() + 10
    while [t for t in threading.enumerate() if t.name == "distetl-chunk-ids=0-0"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s3.keys(bucket) == {} and _pending_uploads(s3, bucket) == []


def test_s3_streamed_commit_is_create_only(s3, bucket):
    client = s3.client()
    output = f"s3://{bucket}/out"
    options = {"endpoint_url": s3.endpoint}
    key = "out/big/part-0.parquet"
    client.put_object(Bucket=bucket, Key=key, Body=b"another writer's file")
    before = s3.etags(bucket)

    # The server refuses a conditional CompleteMultipartUpload over an existing key.
    upload = client.create_multipart_upload(Bucket=bucket, Key="probe")["UploadId"]
    etag = client.upload_part(Bucket=bucket, Key="probe", UploadId=upload, PartNumber=1, Body=b"x")["ETag"]
    client.put_object(Bucket=bucket, Key="probe", Body=b"first")
    with pytest.raises(client.exceptions.ClientError, match="PreconditionFailed"):
        client.complete_multipart_upload(Bucket=bucket, Key="probe", UploadId=upload, IfNoneMatch="*",
                                         MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    client.abort_multipart_upload(Bucket=bucket, Key="probe", UploadId=upload)
    client.delete_object(Bucket=bucket, Key="probe")

    pipeline = _pipeline(_random_pieces(4), schema=S3_SCHEMA, compression="none")
    result, _ = _run(pipeline, output, options)  # as if another writer committed after the HEAD
    assert result.status == SKIPPED and result.rows == 0
    assert s3.etags(bucket) == before, "the existing object is untouched"
    assert _pending_uploads(s3, bucket) == [], "the losing upload is aborted"

    forced, _ = _run(pipeline, output, options, force=True)
    assert forced.status == WRITTEN and s3.keys(bucket)[key] == forced.bytes

    # Two writers with their uploads in flight at once: exactly one wins.
    storage = Storage("s3", options)
    url = f"s3://{bucket}/race/part-0.parquet"
    payload = os.urandom(MULTIPART_PART_SIZE + 1000)
    sinks = [storage.open_atomic(url, create_only=True) for _ in range(2)]
    for sink in sinks:
        sink.write(payload)
    assert [sink.commit() for sink in sinks] == [True, False]
    assert s3.keys(bucket, "race/") == {"race/part-0.parquet": len(payload)}
    assert _pending_uploads(s3, bucket) == []
    with pytest.raises(SinkAborted):
        sinks[1].write(b"more")

    # A file smaller than one part is one create-only PUT.
    small = storage.open_atomic(f"s3://{bucket}/small/x", create_only=True)
    small.write(b"tiny")
    assert small.commit() is True and s3.keys(bucket, "small/") == {"small/x": 4}
    again = storage.open_atomic(f"s3://{bucket}/small/x", create_only=True)
    again.write(b"other")
    assert again.commit() is False and s3.keys(bucket, "small/") == {"small/x": 4}


# -- memory: a chunk of more than 1 GB, a few pieces at a time --------------------------------------

MEMORY_CHILD = """
import json, os, sys, time
import numpy as np
import pandas as pd
from distetl import IdRange, Pipeline
from distetl.engine.execute import BatchJob, run_batch

PIECES, ROWS, COLUMNS = {pieces}, {rows}, {columns}
produced = {{"bytes": 0, "pieces": 0}}


def extract(chunk):
    rng = np.random.default_rng(chunk["start"])
    rows = ROWS if chunk["start"] else 1000   # chunk 0: a small warm-up chunk
    for i in range(PIECES if chunk["start"] else 3):
        frame = pd.DataFrame({{f"c{{j}}": rng.random(rows) for j in range(COLUMNS)}})
        produced["bytes"] += int(frame.memory_usage(index=False, deep=True).sum())
        produced["pieces"] += 1
        yield frame


def memory():
    with open("/proc/self/status") as handle:
        fields = dict(line.split(":", 1) for line in handle)
    return {{name: int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM")}}


output = sys.argv[1]
pipeline = Pipeline(name="big", plan=IdRange(start=0, stop=2, size=1), extract=extract,
                    target="{{output}}/big/part-{{first}}.parquet")
small, big = pipeline.plan.chunks()
job = lambda chunk: BatchJob(pipeline=pipeline, chunks=[(chunk, f"{{output}}/big/part-{{chunk['start']}}.parquet")],
                             output=output)
assert run_batch(job(small), report=lambda r: None)[0].status == "written"   # imports, pools, caches
produced.update(bytes=0, pieces=0)
try:
    with open("/proc/self/clear_refs", "w") as handle:   # restart VmHWM from the current RSS
        handle.write("5")
    reset = True
except OSError:
    reset = False
baseline = memory()["VmRSS"]
print(json.dumps({{"baseline": baseline, "hwm_reset": reset}}), flush=True)
sys.stdin.readline()   # the parent's sampler is running
started = time.monotonic()
[result] = run_batch(job(big), report=lambda r: None)
seconds = time.monotonic() - started
print(json.dumps({{"status": result.status, "error": result.error, "rows": result.rows, "bytes": result.bytes,
                  "produced": produced["bytes"], "pieces": produced["pieces"], "seconds": seconds,
                  "hwm": memory()["VmHWM"], "baseline": baseline}}), flush=True)
"""


def test_a_chunk_of_more_than_1_gb_is_written_with_peak_rss_growth_under_a_quarter_of_it(tmp_path):
    """A worker process (a plain subprocess running :func:`distetl.engine.execute.run_batch`,
    the function a Dask worker runs) writes one chunk of 40 pieces of 28.8 MB of
    float64 (1.15 GB in memory) generated on the fly.

    Baseline: the child imports everything and writes a small streamed chunk first (so
    pandas, pyarrow, the Parquet writer and allocator pools are loaded), then reports its
    RSS, the baseline, and resets its kernel high-water mark (``/proc/self/clear_refs``:
    VmHWM restarts from the current RSS). The peak is the larger of the child's VmHWM
    after the chunk (exact, if the reset worked) and the largest RSS the parent sampled
    with psutil every 5 ms while the chunk ran (a cross-check that also works where the
    reset does not). Growth = peak - baseline: what writing the chunk cost, including
    the generator's own pieces (it holds the previous piece while building the next).
    Materialised, the chunk would cost its 1.15 GB at least (plus its Parquet bytes).
    """
    pieces, rows, columns = 40, 900_000, 4
    script = tmp_path / "child.py"
    script.write_text(MEMORY_CHILD.format(pieces=pieces, rows=rows, columns=columns))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(REPO))
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        process = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                samples.append(process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.005)

    try:
        ready = json.loads(proc.stdout.readline() or "{}")
        assert "baseline" in ready, proc.stderr.read()[-3000:]
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        done.set()
        sampler.join()
        assert line, proc.stderr.read()[-3000:]
        report = json.loads(line)
        proc.wait(60)
    finally:
        done.set()
        if proc.poll() is None:
            proc.kill()

    try:
        assert report["status"] == "written", report["error"]
        path = out / "big" / "part-1.parquet"
        assert report["bytes"] == path.stat().st_size and pq.read_metadata(path).num_rows == pieces * rows
        assert _dir_files(out) == ["big/part-0.parquet", "big/part-1.parquet"]
    finally:
        shutil.rmtree(out, ignore_errors=True)  # 1.2 GB: not kept with pytest's temp folders
    total = report["produced"]
    assert report["pieces"] == pieces and total >= 2**30, total
    assert report["rows"] == pieces * rows
    peak = max([report["hwm"] if ready["hwm_reset"] else 0, *samples])
    growth = peak - report["baseline"]
    print(f"\nchunk {total / 1e9:.2f} GB in memory ({pieces} pieces of {total / pieces / 1e6:.1f} MB), "
          f"file {report['bytes'] / 1e9:.2f} GB, written in {report['seconds']:.1f} s; worker baseline "
          f"{report['baseline'] / 1e6:.0f} MB, peak {peak / 1e6:.0f} MB (VmHWM {report['hwm'] / 1e6:.0f} MB, "
          f"sampled {max(samples) / 1e6:.0f} MB over {len(samples)} samples): growth {growth / 1e6:.0f} MB "
          f"= {growth / total:.1%} of the chunk")
    assert growth <= 0.25 * total, f"peak RSS grew by {growth / 1e6:.0f} MB for a {total / 1e6:.0f} MB chunk"
