"""Backfills on S3, against a real S3 server (moto in server mode on 127.0.0.1).

Covers issue #4: a full backfill to s3:// on Dask worker processes, a rerun that commits
nothing and makes no per-chunk request, a chunk failing mid-write that leaves no object,
create-only commits, a FileList over s3://bucket/raw/*.csv as the source (via the CLI,
with the endpoint from AWS_ENDPOINT_URL and credentials from --storage-option), and
plan-time errors for a missing bucket, wrong credentials and an unreachable endpoint,
none of which may show a secret.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import distetl
from distetl import StorageError
from distetl.engine.loader import load_pipeline
from distetl.storage import Storage

from conftest import REPO, cli
from s3_server import S3Server, closed_port, isolate_aws_env

NYC = str(REPO / "flows" / "nycflights.py")

IDS_FLOW = """
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from distetl import IdRange, Pipeline

_write_table = pq.write_table


def _breaking_write_table(table, where, *args, **kwargs):
    # Stand-in for a Parquet writer that dies part-way: for the chunk whose first id is
    # BREAK_WRITE_AT, half of the file's bytes reach the sink, then the write fails.
    first = table.column("id")[0].as_py() if table.num_rows and "id" in table.column_names else None
    if os.environ.get("BREAK_WRITE_AT") == str(first):
        full = pa.BufferOutputStream()
        _write_table(table, full, *args, **kwargs)
        data = full.getvalue().to_pybytes()
        where.write(data[: len(data) // 2])
        raise OSError(f"writer died after {len(data) // 2} of {len(data)} bytes")
    return _write_table(table, where, *args, **kwargs)


pq.write_table = _breaking_write_table


def extract(chunk):
    lo, hi = chunk["start"], chunk["stop"]
    return pd.DataFrame({"id": range(lo, hi), "value": [i * 0.5 for i in range(lo, hi)]})


pipeline = Pipeline(
    name="ids",
    plan=IdRange(start=0, stop=100, size=10),
    extract=extract,
    target="{output}/ids/part-{first}.parquet",
    schema=pa.schema([("id", pa.int64()), ("value", pa.float64())]),
)
"""

CSV_FLOW = """
import pandas as pd
import pyarrow as pa

from distetl import FileList, Pipeline


def extract(chunk, ctx):
    # The run's storage options (endpoint, credentials) reach the worker through ctx.
    with ctx.open(chunk["path"]) as handle:
        frame = pd.read_csv(handle)
    frame["source"] = chunk["name"]
    return frame


pipeline = Pipeline(
    name="csvs",
    plan=FileList(pattern="s3://{bucket}/raw/*.csv"),
    extract=extract,
    target="{{output}}/tables/{{stem}}.parquet",
    schema=pa.schema([("id", pa.int64()), ("city", pa.string()), ("amount", pa.float64()),
                      ("source", pa.string())]),
)
"""


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3():
    """One moto S3 server for this module, on 127.0.0.1 and a random port."""
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path):
    """Standard AWS settings for the tests; nothing from the machine's own config."""
    isolate_aws_env(monkeypatch, tmp_path)


@pytest.fixture
def bucket(s3):
    """A fresh, empty bucket; returns its name."""
    name = f"distetl-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(name)
    return name


@pytest.fixture
def ids_flow(flow_file, monkeypatch):
    """The ids flow file; pyarrow's write_table is restored after the test (the flow file
    wraps it in whichever process loads it)."""
    monkeypatch.setattr(pq, "write_table", pq.write_table)
    return flow_file(IDS_FLOW, name="ids_flow.py")


def _options(s3: S3Server, **extra) -> dict:
    return {"endpoint_url": s3.endpoint, **extra}


def _prefect_files_containing(text: str) -> list[str]:
    """Files of the test session's Prefect server and client homes holding ``text``."""
    home = Path(os.environ["PREFECT_HOME"]).parent
    needle = text.encode()
    return [str(p) for p in home.rglob("*") if p.is_file() and needle in p.read_bytes()]


# -- full backfill, rerun, workers ------------------------------------------------------------

def test_backfill_to_s3_on_dask_workers_then_rerun_commits_nothing(s3, bucket, prefect_api):
    pipeline = load_pipeline(NYC)
    params = {"start": "2013-01-01", "end": "2013-01-10"}
    module = sys.modules["distetl_flow_nycflights"]
    expected_rows = sum(len(module._flights_by_day()[f"2013-01-{d:02d}"]) for d in range(1, 11))
    output = f"s3://{bucket}/warehouse"
    options = _options(s3)  # the endpoint reaches the workers only through storage options

    report = distetl.run(pipeline, output, runner="local", workers=2, params=params, storage_options=options)

    assert report.ok, report.failed
    assert report.written == 10 and report.total == 10
    workers = {r.worker for r in report.results}
    assert workers and all(w.startswith("tcp://127.0.0.1:") for w in workers), workers
    keys = s3.keys(bucket)
    chunk_keys = sorted(k for k in keys if k.startswith("warehouse/flights/"))
    assert chunk_keys == [f"warehouse/flights/date=2013-01-{d:02d}/part-0.parquet" for d in range(1, 11)]
    assert all(keys[k] > 1000 for k in chunk_keys)
    assert set(keys) - set(chunk_keys) <= {k for k in keys if k.startswith("warehouse/_distetl/nycflights/")}
    fs = Storage.for_url(output, options).fs  # pyarrow gets the s3fs filesystem, not its own client
    table = ds.dataset(f"{bucket}/warehouse/flights", filesystem=fs, format="parquet",
                       partitioning="hive").to_table()
    assert table.num_rows == expected_rows
    assert report.manifest_path.startswith(f"s3://{bucket}/warehouse/_distetl/nycflights/runs/")
    latest = json.loads(fs.cat(f"{bucket}/warehouse/_distetl/nycflights/latest.json"))
    assert latest["summary"]["written"] == 10 and latest["run_id"] == report.run_id
    manifest = json.loads(fs.cat(latest["manifest"].split("://", 1)[1]))
    assert manifest["storage_options"] == options and manifest["summary"]["written"] == 10

    before = s3.etags(bucket, "warehouse/flights/")
    mark = s3.requests.mark()
    again = distetl.run(pipeline, output, runner="local", workers=2, params=params, storage_options=options)

    requests = s3.requests.since(mark)
    assert again.ok and again.written == 0 and again.skipped == 10 and again.to_run == 0
    assert again.task_runs == 0, "nothing to run must start no flow and no cluster"
    assert s3.etags(bucket, "warehouse/flights/") == before
    listings = [p for m, p, _ in requests if m == "GET" and "list-type=2" in p and "prefix=warehouse/flights/" in p]
    assert len(listings) == 1, requests  # one listing for the target prefix
    lease = f"/{bucket}/warehouse/_distetl/nycflights/lease.json"
    on_lease = [m for m, p, _ in requests if p == lease]  # taken, (heartbeats,) checked, released
    assert on_lease[0] == "PUT" and on_lease[-2:] == ["GET", "DELETE"], on_lease
    requests = [r for r in requests if r[1] != lease]
    assert not [r for r in requests if r[0] == "HEAD"], requests  # no per-chunk existence check
    # Besides listings, one GET of the stage's record index and one of the accepted code
    # changes (staleness): never a request per chunk.
    reads = sorted(p for m, p, _ in requests if m == "GET" and "list-type=2" not in p)
    assert reads == [f"/{bucket}/warehouse/_distetl/nycflights/accepted.json",
                     f"/{bucket}/warehouse/_distetl/nycflights/index/nycflights.parquet"], requests
    assert {p.split("?")[0].split("/_distetl/")[0] for m, p, _ in requests if m == "PUT"} == {f"/{bucket}/warehouse"}
    latest = json.loads(fs.cat(f"{bucket}/warehouse/_distetl/nycflights/latest.json"))
    assert (latest["summary"]["written"], latest["summary"]["skipped"]) == (0, 10), "latest.json is replaced"


def test_chunk_failing_mid_write_leaves_no_object_and_rerun_redoes_only_it(
        s3, bucket, ids_flow, prefect_api, monkeypatch):
    pipeline = load_pipeline(str(ids_flow))
    output = f"s3://{bucket}/out"
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)  # the environment path on the driver
    monkeypatch.setenv("BREAK_WRITE_AT", "30")

    report = distetl.run(pipeline, output, runner="sequential")

    assert [r.key for r in report.failed] == ["ids=30-39"]
    assert "writer died after" in report.failed[0].error
    keys = s3.keys(bucket, "out/ids/")
    assert "out/ids/part-30.parquet" not in keys
    assert sorted(keys) == sorted(f"out/ids/part-{i}.parquet" for i in range(0, 100, 10) if i != 30)
    assert not [k for k in s3.keys(bucket) if not k.startswith(("out/ids/part-", "out/_distetl/ids/"))]

    monkeypatch.delenv("BREAK_WRITE_AT")
    before = s3.etags(bucket, "out/ids/")
    rerun = distetl.run(pipeline, output, runner="sequential")
    assert rerun.ok and rerun.written == 1 and rerun.skipped == 9
    assert [r.key for r in rerun.results] == ["ids=30-39"]
    after = s3.etags(bucket, "out/ids/")
    assert {k: v for k, v in after.items() if k in before} == before
    fs = Storage.for_url(output).fs
    assert pq.read_table(f"{bucket}/out/ids/part-30.parquet", filesystem=fs).column("id").to_pylist() == list(range(30, 40))

    mark = s3.requests.mark()
    forced = distetl.run(pipeline, output, runner="sequential", force=True)
    assert forced.ok and forced.written == 10, "--force replaces objects (no create-only)"
    puts = [p for m, p, status in s3.requests.since(mark) if m == "PUT" and status == 200]
    assert sorted(p for p in puts if "/out/ids/" in p) == sorted(
        f"/{bucket}/out/ids/part-{i}.parquet" for i in range(0, 100, 10))


def test_streaming_to_the_final_key_would_leave_a_truncated_object(s3, bucket):
    """The hazard the commit avoids, shown on this server: a failed `with fs.open(...)`
    still completes the upload on close."""
    fs = Storage("s3", _options(s3)).fs
    with pytest.raises(RuntimeError):
        with fs.open(f"{bucket}/naive/part-0.parquet", "wb") as handle:
            handle.write(b"PAR1" + b"x" * 1000)
            raise RuntimeError("the writer died")
    assert s3.keys(bucket, "naive/") == {"naive/part-0.parquet": 1004}


# -- commits and listings -----------------------------------------------------------------

def test_server_honours_if_none_match_and_commit_is_create_only(s3, bucket):
    client = s3.client()
    client.put_object(Bucket=bucket, Key="raw-check", Body=b"first")
    with pytest.raises(client.exceptions.ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=bucket, Key="raw-check", Body=b"second", IfNoneMatch="*")

    url = f"s3://{bucket}/t/part-0.parquet"
    payloads = [f"writer {i}".encode() * 1000 for i in range(5)]
    outcomes: dict[int, bool] = {}
    start = threading.Barrier(len(payloads))

    def write(i: int) -> None:
        storage = Storage("s3", _options(s3))
        storage.fs  # connect before the race
        start.wait()
        outcomes[i] = storage.write_atomic(url, payloads[i], create_only=True)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(payloads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [i for i, won in outcomes.items() if won]
    assert len(outcomes) == len(payloads) and len(winners) == 1, outcomes
    body = client.get_object(Bucket=bucket, Key="t/part-0.parquet")["Body"].read()
    assert body == payloads[winners[0]]

    storage = Storage("s3", _options(s3))
    assert storage.write_atomic(url, b"replaced") is True  # overwrite on purpose
    assert client.get_object(Bucket=bucket, Key="t/part-0.parquet")["Body"].read() == b"replaced"
    assert Storage("s3", _options(s3, create_only=False)).write_atomic(url, b"plain", create_only=True)


def test_listing_is_one_request_and_never_cached(s3, bucket):
    storage = Storage("s3", _options(s3))
    root = f"s3://{bucket}/out/t"
    for i in range(3):
        storage.write_atomic(f"{root}/k={i}/part-0.parquet", b"x", create_only=True)
    mark = s3.requests.mark()
    assert storage.list_files(root) == {f"{root}/k={i}/part-0.parquet" for i in range(3)}
    assert [m for m, _, _ in s3.requests.since(mark)] == ["GET"]

    pattern = f"{root}/k=*/part-0.parquet"
    assert len(storage.glob(pattern)) == 3
    mark = s3.requests.mark()
    assert not storage.exists(f"{root}/k=9/part-0.parquet")  # the worker's guard: one HEAD
    assert [(m, status) for m, _, status in s3.requests.since(mark)] == [("HEAD", 404)]
    s3.client().put_object(Bucket=bucket, Key="out/t/k=9/part-0.parquet", Body=b"y")  # another writer
    new = f"{root}/k=9/part-0.parquet"
    assert new in storage.list_files(root), "a cached listing hid a new object"
    assert new in storage.glob(pattern) and storage.exists(new), "a cached listing hid a new object"


# -- sources on S3, the command line, credentials --------------------------------------------

def test_credentials_stay_out_of_reprs_and_reports(s3, ids_flow):
    from distetl.engine.execute import BatchJob, ChunkContext
    from distetl.state.manifest import RunReport

    secret = "opt-" + uuid.uuid4().hex
    options = _options(s3, key="AKIAOPTIONKEY0000000", secret=secret)
    pipeline = load_pipeline(str(ids_flow))
    chunk = pipeline.plan.chunks()[0]
    report = RunReport(pipeline="ids", output="s3://b/o", runner="x", run_id="r", started_at="t",
                       storage_options=options)
    shown = [repr(Storage("s3", options)), repr(ChunkContext(chunk, "s3://b/o", options)),
             repr(BatchJob(pipeline, [(chunk, "s3://b/o/x")], "s3://b/o", options)), repr(report),
             json.dumps(report.to_dict(), default=str)]
    for text in shown:
        assert secret not in text and "AKIAOPTIONKEY0000000" not in text, text
    assert report.to_dict()["storage_options"] == {"endpoint_url": s3.endpoint, "key": "***", "secret": "***"}


def test_cli_file_list_source_on_s3_with_env_endpoint_and_option_credentials(
        s3, bucket, flow_file, prefect_api):
    client = s3.client()
    for i in range(12):
        frame = pd.DataFrame({"id": range(i * 10, i * 10 + 10), "city": [f"c{i}"] * 10,
                              "amount": [i + 0.25] * 10})
        client.put_object(Bucket=bucket, Key=f"raw/day-{i:02d}.csv", Body=frame.to_csv(index=False).encode())
    client.put_object(Bucket=bucket, Key="raw/README.txt", Body=b"not a csv")
    client.put_object(Bucket=bucket, Key="raw/old/day-99.csv", Body=b"id,city,amount\n")
    flow = flow_file(CSV_FLOW.format(bucket=bucket), name="csv_flow.py")
    output = f"s3://{bucket}/curated"

    with s3.authenticated_user() as (key, secret):
        # The environment's credentials are unknown to the server: only the ones given as
        # storage options work, on the driver and on every worker.
        env = {"AWS_ENDPOINT_URL": s3.endpoint}
        creds = ["--storage-option", f"key={key}", "--storage-option", f"secret={secret}"]
        proc = cli("run", str(flow), "--output", output, "--workers", "2", "--json", *creds, env=env)
        status = cli("status", str(flow), "--output", output, *creds, env=env)
    # Everything distetl keeps under _distetl/: manifests, lease, record indexes (binary).
    manifests = {k: s3.client().get_object(Bucket=bucket, Key=k)["Body"].read().decode(errors="replace")
                 for k in s3.keys(bucket, "curated/_distetl/")}

    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["summary"]["written"] == 12 and report["summary"]["failed"] == 0
    assert report["storage_options"] == {"key": "***", "secret": "***"}
    assert {r["worker"].rsplit(":", 1)[0] for r in report["results"]} == {"tcp://127.0.0.1"}
    assert status.returncode == 0 and "12 of 12 chunks committed" in status.stderr, status.stderr

    fs = Storage.for_url(output, _options(s3)).fs
    assert sorted(fs.ls(f"{bucket}/curated/tables")) == [f"{bucket}/curated/tables/day-{i:02d}.parquet" for i in range(12)]
    table = ds.dataset(f"{bucket}/curated/tables", filesystem=fs, format="parquet").to_table()
    assert table.num_rows == 120 and sorted(set(table.column("source").to_pylist()))[0] == "day-00.csv"

    assert manifests and all(secret not in body and key not in body for body in manifests.values())
    for text in (proc.stdout, proc.stderr, status.stdout, status.stderr):
        assert secret not in text and key not in text
    assert _prefect_files_containing("file=day-00.csv"), "the scan must see this run's Prefect records"
    assert not _prefect_files_containing(secret), "a credential reached Prefect's records"


def test_aws_profile_is_honoured(s3, bucket, tmp_path, monkeypatch):
    with s3.authenticated_user() as (key, secret):
        credentials = tmp_path / "credentials"
        credentials.write_text(f"[etl]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
        monkeypatch.setenv("AWS_PROFILE", "etl")
        storage = Storage.for_url(f"s3://{bucket}/p")
        storage.check_root(f"s3://{bucket}/p")
        assert storage.write_atomic(f"s3://{bucket}/p/x.parquet", b"x", create_only=True)

        monkeypatch.setenv("AWS_PROFILE", "nobody")
        with pytest.raises(StorageError, match=r"credentials .*AWS_PROFILE"):
            Storage.for_url(f"s3://{bucket}/p").check_root(f"s3://{bucket}/p")


# -- plan-time errors ---------------------------------------------------------------------------

def test_missing_output_bucket_fails_at_plan_time(s3, ids_flow):
    pipeline = load_pipeline(str(ids_flow))
    with pytest.raises(StorageError) as info:
        distetl.run(pipeline, "s3://no-such-bucket-here/out", storage_options=_options(s3))
    message = str(info.value)
    assert "'no-such-bucket-here'" in message and s3.endpoint in message
    assert "Fix: create the bucket (aws s3 mb s3://no-such-bucket-here)" in message


def test_missing_or_empty_source_fails_at_plan_time(s3, bucket, flow_file, tmp_path):
    pipeline = load_pipeline(str(flow_file(CSV_FLOW.format(bucket="no-such-source"), name="src.py")))
    with pytest.raises(StorageError, match=r"existing bucket 'no-such-source' for the source .*fix the source pattern"):
        distetl.plan(pipeline, str(tmp_path / "out"), storage_options=_options(s3))
    empty = load_pipeline(str(flow_file(CSV_FLOW.format(bucket=bucket), name="empty.py")))
    with pytest.raises(distetl.PlanError, match=r"at least one file matching 's3://.*/raw/\*\.csv'"):
        distetl.plan(empty, str(tmp_path / "out"), storage_options=_options(s3))


def test_unreachable_endpoint_fails_within_seconds(s3, ids_flow):
    pipeline = load_pipeline(str(ids_flow))
    endpoint = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        distetl.run(pipeline, "s3://some-bucket/out", storage_options={"endpoint_url": endpoint})
    assert time.monotonic() - started < 8
    message = str(info.value)
    assert f"an S3 server answering at endpoint {endpoint}" in message
    assert "EndpointConnectionError" in message and "AWS_ENDPOINT_URL" in message


def test_cli_bad_endpoint_and_bad_credentials_exit_2_without_leaking(s3, bucket, ids_flow):
    output = f"s3://{bucket}/out"
    closed = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    proc = cli("run", str(ids_flow), "--output", output, "--no-progress", env={"AWS_ENDPOINT_URL": closed})
    assert proc.returncode == 2, proc.stderr
    assert time.monotonic() - started < 30
    assert f"endpoint {closed}" in proc.stderr and "Fix: start the server or fix the endpoint" in proc.stderr

    wrong_secret = "wrong-" + uuid.uuid4().hex
    with s3.authenticated_user() as (key, _secret):
        bad_secret = cli("run", str(ids_flow), "--output", output, "--no-progress",
                         "--storage-option", f"endpoint_url={s3.endpoint}",
                         "--storage-option", f"key={key}", "--storage-option", f"secret={wrong_secret}")
        bad_key = cli("status", str(ids_flow), "--output", output, env={
            "AWS_ENDPOINT_URL": s3.endpoint, "AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY0000000",
            "AWS_SECRET_ACCESS_KEY": wrong_secret})
    for result, code in ((bad_secret, "SignatureDoesNotMatch"), (bad_key, "InvalidAccessKeyId")):
        assert result.returncode == 2, result.stderr
        assert f"credentials accepted by endpoint {s3.endpoint} for bucket '{bucket}'" in result.stderr
        assert code in result.stderr and "Fix: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in result.stderr
        assert wrong_secret not in result.stderr + result.stdout
        assert key not in result.stderr + result.stdout
    assert s3.keys(bucket) == {}, "nothing may be written when the plan fails"
