"""The nycflights backfill (365 daily chunks): sequential, distetl, raw Dask and naive
Prefect (on a sample of days; full mode adds the plain loop and dask.dataframe), then
local disk vs a loopback S3 server (moto), and a rerun over finished chunks on S3."""

from __future__ import annotations

import logging
import uuid

import pytest

from benchlib import discard, measure

VARIANTS = ("sequential", "distetl", "raw_dask")
S3_KEY, S3_SECRET = "testing", "testing"


def test_nycflights_backfill(bench, sizes, bench_root, prefect_server):
    name = "nycflights"
    spec = {"name": name, "kind": "nycflights", "root": str(bench_root)}
    # Full mode adds the plain loop and dask.dataframe (Sizes.extra_variants).
    variants = [v for v in ("loop",) if v in sizes.extra_variants] + list(VARIANTS)
    variants += [v for v in ("dask_dataframe",) if v in sizes.extra_variants]
    runs = {variant: bench.add(measure(spec, variant)) for variant in variants}
    runs["naive_prefect"] = bench.add(measure(spec, "naive_prefect", limit=sizes.naive_nyc_sample))
    seq, dist, raw = runs["sequential"], runs["distetl"], runs["raw_dask"]

    for variant, m in runs.items():
        assert m.failed == 0, (variant, m.notes)
    for variant, m in runs.items():
        if variant != "naive_prefect":  # naive Prefect runs a sample of the days
            assert m.rows == 336_776, (m.variant, m.rows)
    bench.figure(name, "distetl speedup vs sequential", round(seq.phase_s / dist.phase_s, 3))
    bench.figure(name, "distetl throughput / raw Dask", round(raw.phase_s / dist.phase_s, 3))
    rerun = bench.add(measure(spec, "distetl", output=dist.notes["output"], label="distetl_rerun"))
    assert rerun.notes["task_runs"] == 0 and rerun.notes["skipped"] == 365
    bench.figure(name, "rerun s (all committed)", round(rerun.wall_s, 3))
    for m in runs.values():
        discard(m)


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on a free loopback port, with one bucket."""
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
    yield {"endpoint_url": endpoint, "bucket": bucket,
           "storage_options": {"endpoint_url": endpoint, "key": S3_KEY, "secret": S3_SECRET}}
    server.stop()


def test_nycflights_to_s3_and_rerun(bench, sizes, bench_root, prefect_server, s3_server):
    name = "nycflights"
    spec = {"name": name, "kind": "nycflights", "root": str(bench_root),
            "output_url": f"s3://{s3_server['bucket']}/bench", "storage_options": s3_server["storage_options"]}
    s3 = bench.add(measure(spec, "distetl", label="distetl_s3"))
    assert s3.failed == 0, s3.notes
    assert s3.rows == 336_776 and s3.written == 365
    local = bench.of(name, "distetl")
    if local is not None:
        bench.figure(name, "S3 / local disk throughput (distetl)", round(local.phase_s / s3.phase_s, 3))

    rerun_name = "s3_rerun"
    rerun_spec = {"name": rerun_name, "kind": "tiny", "chunks": sizes.s3_rerun_chunks, "pipeline": "s3tiny",
                  "root": str(bench_root), "output_url": f"s3://{s3_server['bucket']}/rerun",
                  "storage_options": s3_server["storage_options"]}
    output = f"s3://{s3_server['bucket']}/rerun/shared"
    first = bench.add(measure(rerun_spec, "distetl", output=output, label="distetl_s3_first_run"))
    rerun = bench.add(measure(rerun_spec, "distetl", output=output, label="distetl_s3_rerun"))
    assert first.failed == 0 and first.written == sizes.s3_rerun_chunks, first.notes
    assert rerun.written == 0 and rerun.notes["skipped"] == sizes.s3_rerun_chunks
    assert rerun.notes["task_runs"] == 0 and rerun.worker_peak_mb == []
    bench.figure(rerun_name, "first run s", round(first.wall_s, 2))
    bench.figure(rerun_name, f"rerun s ({sizes.s3_rerun_chunks} committed chunks on S3)", round(rerun.wall_s, 3))
