"""S3 faults (issue #21 item 3): a run through a fault-injecting proxy between s3fs and a
real S3 server (moto on loopback; see tests/fault_proxy.py).

At 10 % of requests failing (503 SlowDown, 500 InternalError, connections reset before the
request, after it was done (answer lost) or mid-answer, answers held past the read
timeout), a run of 500 chunks completes: every chunk committed exactly once (one
successful PUT per target, each a readable Parquet file with its record), no multipart
upload left open, and the retries counted in the report. A streamed (multipart) chunk
under faults is committed whole or fails with its upload aborted.
"""

from __future__ import annotations

import collections
import time
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import distetl
from distetl.engine.loader import load_pipeline
from distetl.state.records import read_record
from distetl.storage import Storage

from fault_proxy import FaultProxy
from s3_server import S3Server, isolate_aws_env

IDS_FLOW = """
import pandas as pd
import pyarrow as pa

from distetl import IdRange, Pipeline


def extract(chunk):
    return pd.DataFrame({"id": range(chunk["start"], chunk["stop"])})


pipeline = Pipeline(
    name="faulty",
    plan=IdRange(start=0, stop=1000, size=2),
    extract=extract,
    target="{output}/ids/part-{first}.parquet",
    schema=pa.schema([("id", pa.int64())]),
)
"""

#: The client's read timeout in these tests (a ``slow`` answer is held past it).
READ_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def s3():
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path):
    isolate_aws_env(monkeypatch, tmp_path)


@pytest.fixture
def bucket(s3):
    name = f"distetl-faults-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(name)
    return name


def fault_options(proxy: FaultProxy, **extra) -> dict:
    """Storage options through the proxy, with a short read timeout (the proxy's
    ``slow`` answers come after it)."""
    return {"endpoint_url": proxy.endpoint, "config_kwargs": {"read_timeout": READ_TIMEOUT}, **extra}


def open_uploads(s3: S3Server, bucket: str) -> list:
    return s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def run_with_faults(s3: S3Server, bucket: str, flow_path, rate: float, seed: int = 1, workers: int = 2,
                    chunks_per_task=None) -> dict:
    """The 500-chunk run through a proxy failing ``rate`` of the requests; what came of it."""
    pipeline = load_pipeline(str(flow_path))
    output = f"s3://{bucket}/out"
    mark = s3.requests.mark()
    with FaultProxy(s3.endpoint, rate=rate, seed=seed, delay=READ_TIMEOUT + 1.5) as proxy:
        started = time.perf_counter()
        error = None
        report = None
        try:
            report = distetl.run(pipeline, output, runner="local", workers=workers,
                                 storage_options=fault_options(proxy), chunks_per_task=chunks_per_task)
        except Exception as exc:  # noqa: BLE001 - a measurement: what the run came to
            error = f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - started
        injected = dict(proxy.injected)
        requests = proxy.requests
    puts = collections.Counter(p.split("?")[0] for m, p, status in s3.requests.since(mark)
                               if m == "PUT" and status == 200 and "/out/ids/" in p)
    keys = s3.keys(bucket, "out/ids/")
    return {"report": report, "error": error, "seconds": seconds, "injected": injected, "requests": requests,
            "puts": puts, "keys": keys, "uploads": open_uploads(s3, bucket), "output": output}
