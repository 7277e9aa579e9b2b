"""Staleness is cheap to know: ``distetl status`` with staleness against plain existence
status, over 100,000 committed local chunks and 5,000 on a loopback S3 server (moto).

Per store, the chunks are seeded directly (files with the records distetl writes, then
the stage index as a run leaves it; see :mod:`staleness_cost`), then, in this process,
after one warm-up call of each, alternating rounds of:

* ``status_plain``: plain existence status, what ``distetl status`` cost before
  staleness: ``distetl.engine.backfill.plan`` with ``_find_stale`` a no-op (render every
  target, check the schema, one listing of the stage matched against the paths, decide);
* ``status_staleness``: ``distetl.status`` (the same, plus the stage's code version, the
  index read and checked against the listing's stamps, and every chunk classified);

and, once, informational: ``status_no_index``, ``distetl.status`` when the index does
not cover the files, so their footers are read in parallel (local: the index deleted,
or in quick mode missing its last 10,000 files; S3: the index missing its last 1,000
files, as after a driver killed mid-run).

Check (each store, best round of each, wall): status with staleness ≤ 2 × plain
existence status. Every call must see every chunk committed and none stale; the
index-covered one reads no footer.
"""

from __future__ import annotations

import logging
import shutil
import uuid

import pytest

import staleness_cost as sc
from benchlib import Measurement

LOCAL_CHUNKS = 100_000
S3_CHUNKS = 5_000
#: Files the S3 index is made to miss for the informational footer-reading figure.
S3_UNINDEXED = 1_000
#: Files the local index is made to miss in quick mode (full mode deletes it).
LOCAL_UNINDEXED_QUICK = 10_000
S3_KEY, S3_SECRET = "testing", "testing"


def _rounds(sizes) -> int:
    return 2 if sizes.mode == "quick" else 5


def _run(bench, name: str, chunks: int, output: str, storage_options, rounds: int, unindexed, put=None) -> None:
    seconds = sc.seed(chunks, output, storage_options, put=put)
    sc.check_sample(chunks, output, storage_options)
    bench.figure(name, "committed chunks", chunks)
    bench.figure(name, "seed s (not timed)", round(seconds, 1))
    pipe = sc.pipeline(chunks)
    calls = {"status_plain": lambda: sc.status_plain(pipe, output, storage_options),
             "status_staleness": lambda: sc.status_staleness(pipe, output, storage_options)}

    def check(variant, planned, footers: int = 0) -> None:
        counts = planned.stage_counts()[0]
        assert counts["committed"] == chunks and counts["missing"] == 0, (variant, counts)
        if variant != "status_plain":
            assert counts["stale"] == 0 and counts["fresh"] == chunks, (variant, counts)
            assert planned.footers_read == footers, (variant, planned.footers_read, footers)

    for variant, call in calls.items():  # warm-up: the first listing's cold caches, first imports
        check(variant, call())
    runs: dict[str, list[tuple[float, object]]] = {variant: [] for variant in calls}
    for _ in range(rounds):
        for variant, call in calls.items():
            planned, wall, rss = sc.timed(call)
            check(variant, planned)
            runs[variant].append((wall, rss))

    best = {}
    for variant, results in runs.items():
        wall, rss = min(results, key=lambda r: r[0])
        best[variant] = wall
        bench.add(Measurement(
            workload=name, variant=variant, chunks=chunks, wall_s=wall, driver_peak_mb=round(rss.driver_mb, 1),
            notes={"rounds_s": [round(w, 3) for w, _ in results], "driver_cpu_s": round(rss.driver_cpu_s, 3),
                   "other_cores": rss.other_cores, "service_cores": rss.service_cores,
                   "foreign_cores": rss.foreign_cores}))
        bench.figure(name, f"{variant} s (best of {rounds})", round(wall, 3))
        bench.figure(name, f"{variant} s (median)", round(sorted(w for w, _ in results)[len(results) // 2], 3))

    missing = sc.forget(output, storage_options, last=unindexed)
    footers = chunks if missing < 0 else missing
    planned, wall, rss = sc.timed(calls["status_staleness"])
    check("status_no_index", planned, footers)
    bench.add(Measurement(workload=name, variant="status_no_index", chunks=chunks, wall_s=wall,
                          driver_peak_mb=round(rss.driver_mb, 1),
                          notes={"footers_read": footers, "driver_cpu_s": round(rss.driver_cpu_s, 3),
                                 "foreign_cores": rss.foreign_cores}))
    what = "index deleted" if missing < 0 else f"index missing {footers:,} files"
    bench.figure(name, f"status_no_index s ({what}: {footers:,} footers read in parallel)", round(wall, 3))
    bench.figure(name, "status_no_index / status_plain", round(wall / best["status_plain"], 2))

    ratio = bench.check(name, "status with staleness / plain existence status", best["status_staleness"] /
                        best["status_plain"], "<=", 2.0,
                        f"({best['status_staleness']:.3f}s / {best['status_plain']:.3f}s over {chunks:,} chunks, "
                        f"best of {rounds})")
    assert ratio.passed, ratio.line()


def test_staleness_cost_local(bench, sizes, bench_root):
    name = "staleness_local"
    output = str(bench_root / name / uuid.uuid4().hex[:6])
    try:
        # The informational no-index call: full mode deletes the index (100,000 footers,
        # ~22 s on 2 cores); quick mode makes it miss its last 10,000 files.
        unindexed = LOCAL_UNINDEXED_QUICK if sizes.mode == "quick" else None
        _run(bench, name, LOCAL_CHUNKS, output, None, _rounds(sizes), unindexed=unindexed)
    finally:
        shutil.rmtree(output, ignore_errors=True)


@pytest.fixture(scope="module")
def s3_store():
    """A moto S3 server on a free loopback port (in this process, as the other S3
    workloads), with one bucket."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET,
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    yield {"bucket": bucket, "storage_options": {"endpoint_url": endpoint, "key": S3_KEY, "secret": S3_SECRET},
           "put": _moto_put()}
    server.stop()


def _moto_put():
    """Seeding straight into the in-process moto server's store (what its PutObject
    handler calls), or None (then :func:`staleness_cost.seed` uploads over HTTP)."""
    try:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        partitions = s3_backends[DEFAULT_ACCOUNT_ID]
        backend = partitions["aws"] if "aws" in partitions else partitions["global"]
    except (ImportError, KeyError, AttributeError):
        return None

    def put(objects: dict[str, bytes]) -> None:
        for url, data in objects.items():
            bucket, _, key = url.removeprefix("s3://").partition("/")
            backend.put_object(bucket, key, data)

    return put


def test_staleness_cost_s3(bench, sizes, s3_store):
    name = "staleness_s3"
    _run(bench, name, S3_CHUNKS, f"s3://{s3_store['bucket']}/staleness", s3_store["storage_options"],
         _rounds(sizes), unindexed=S3_UNINDEXED, put=s3_store["put"])
