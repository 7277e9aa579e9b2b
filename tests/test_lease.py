"""One run per output at a time (the run lease), temp files of killed writes removed by
the next run, and runs whose driver died marked Crashed in Prefect.

Real processes throughout: the runs are ``distetl`` commands in subprocesses, the Prefect
API is the session's real server, and S3 is a moto server on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from cluster_helpers import wait_until
from conftest import REPO, cli, last_run
from distetl.errors import ConfigError
from distetl.state.lease import LeaseInfo, RunLease
from distetl.storage import Storage

FLOW = """
import os, time
import pandas as pd
import pyarrow as pa
from distetl import IdRange, Pipeline

def extract(chunk):
    # HOLD_FILE: each chunk waits until that file exists (a run held mid-flight);
    # STARTED_FILE: touched when the first chunk starts.
    started = os.environ.get("STARTED_FILE")
    if started:
        open(started, "a").close()
    hold = os.environ.get("HOLD_FILE")
    deadline = time.monotonic() + 120
    while hold and not os.path.exists(hold) and time.monotonic() < deadline:
        time.sleep(0.05)
    lo, hi = chunk["start"], chunk["stop"]
    return pd.DataFrame({"id": range(lo, hi), "value": [float(i) for i in range(lo, hi)]})

pipeline = Pipeline(
    name="ids",
    plan=IdRange(start=0, stop=40, size=10),
    extract=extract,
    target="{output}/ids/part-{first}.parquet",
    schema=pa.schema([("id", pa.int64()), ("value", pa.float64())]),
)
"""

HOST = socket.gethostname()


def _lease_path(out: Path) -> Path:
    return out / "_distetl" / "ids" / "lease.json"


def _start_run(flow: Path, out: Path, env: dict, log: Path) -> psutil.Popen:
    """A ``distetl run`` in the background (sequential runner: the chunks run in the
    driver process, so killing it kills the whole run)."""
    return psutil.Popen(
        [sys.executable, "-m", "distetl.cli", "run", str(flow), "--output", str(out), "--runner", "sequential",
         "--no-progress"],
        env={**os.environ, **env}, cwd=str(REPO), stdout=open(log, "wb"), stderr=subprocess.STDOUT,
    )


def _wait_for_start(proc: psutil.Popen, started: Path, log: Path) -> None:
    """Wait until the background run's first chunk started; fail at once if it exited."""
    wait_until(lambda: started.exists() or proc.poll() is not None, 120, "the run's first chunk to start")
    assert proc.poll() is None, log.read_text()[-3000:]


def _read_lease(out: Path) -> dict:
    return json.loads(_lease_path(out).read_text())


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lease(out: Path, **fields) -> dict:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    info = {"pipeline": "ids", "run_id": uuid.uuid4().hex, "host": HOST, "pid": os.getpid(),
            "started_at": now, "heartbeat_at": now, "flow_run_id": None, "prefect_api": None, **fields}
    _lease_path(out).parent.mkdir(parents=True, exist_ok=True)
    _lease_path(out).write_text(json.dumps(info))
    return info


def test_second_run_of_the_same_output_exits_2_naming_the_live_run(tmp_path, flow_file, prefect_api):
    flow = flow_file(FLOW)
    out = tmp_path / "out"
    hold, started = tmp_path / "go", tmp_path / "started"
    first = _start_run(flow, out, {"HOLD_FILE": str(hold), "STARTED_FILE": str(started)}, tmp_path / "first.log")
    try:
        _wait_for_start(first, started, tmp_path / "first.log")
        lease = _read_lease(out)
        assert (lease["host"], lease["pid"], lease["pipeline"]) == (HOST, first.pid, "ids")
        started_at = lease["started_at"].split(".")[0].rstrip("Z") + "Z"

        for extra in ([], ["--force"]):
            second = cli("run", str(flow), "--output", str(out), "--runner", "sequential", "--no-progress", *extra)
            assert second.returncode == 2, second.stderr
            assert f"pid {first.pid} on {HOST}" in second.stderr, second.stderr
            assert f"started {started_at}" in second.stderr and lease["run_id"][:8] in second.stderr
            assert "Fix: wait for it to finish, or stop it" in second.stderr
            assert "--force does not override" in second.stderr
        assert _read_lease(out)["run_id"] == lease["run_id"], "the refused runs left the lease alone"
        # status and --dry-run never take the lease
        assert cli("status", str(flow), "--output", str(out)).returncode == 1
        assert cli("run", str(flow), "--output", str(out), "--dry-run").returncode == 0

        hold.touch()
        assert first.wait(timeout=180) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        hold.touch()
        with contextlib.suppress(psutil.Error):
            first.kill()
    assert not _lease_path(out).exists(), "the lease is released at the end of the run"
    again = cli("run", str(flow), "--output", str(out), "--runner", "sequential", "--no-progress", "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["summary"]["skipped"] == 4 and report["lease_taken_over_from"] is None


@pytest.mark.parametrize("owner", ["dead-pid-here", "silent-foreign-host"])
def test_lease_of_a_gone_run_is_taken_over_with_a_message(owner, tmp_path, flow_file, prefect_api):
    flow = flow_file(FLOW)
    out = tmp_path / "out"
    if owner == "dead-pid-here":
        stale = _write_lease(out, pid=_dead_pid())
        why = f"its driver is gone (no process {stale['pid']} on {HOST})"
    else:  # a live pid number, but on another host and no heartbeat for the TTL
        stale = _write_lease(out, host="gone-host.example", heartbeat_at="2024-01-01T00:00:00Z")
        why = "its driver is gone (no heartbeat for"
    proc = cli("run", str(flow), "--output", str(out), "--runner", "sequential", "--no-progress", "--json")
    assert proc.returncode == 0, proc.stderr
    assert f"took over the lease of run {stale['run_id'][:8]} (pid {stale['pid']} on {stale['host']}" in proc.stderr
    assert why in proc.stderr, proc.stderr
    report = json.loads(proc.stdout)
    assert report["summary"]["written"] == 4
    assert report["lease_taken_over_from"]["run_id"] == stale["run_id"]
    assert report["crashed_runs_marked"] == []
    assert not _lease_path(out).exists()


def test_fresh_lease_on_another_host_is_live(tmp_path, flow_file):
    flow = flow_file(FLOW)
    out = tmp_path / "out"
    live = _write_lease(out, host="other-host.example", pid=4242)
    proc = cli("run", str(flow), "--output", str(out), "--runner", "sequential", "--no-progress")
    assert proc.returncode == 2
    assert "pid 4242 on other-host.example" in proc.stderr and "lease expires 60s after its last heartbeat" in proc.stderr
    assert _read_lease(out)["run_id"] == live["run_id"]
    assert not (out / "ids").exists(), "nothing computed"


def test_driver_killed_mid_run_next_run_takes_over_and_marks_it_crashed(tmp_path, flow_file, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId
    from prefect.client.schemas.sorting import TaskRunSort

    flow = flow_file(FLOW)
    out = tmp_path / "out"
    hold, started = tmp_path / "go", tmp_path / "started"
    driver = _start_run(flow, out, {"HOLD_FILE": str(hold), "STARTED_FILE": str(started)}, tmp_path / "driver.log")

    def task_runs(flow_run_id: str) -> list:
        with get_client(sync_client=True) as client:
            return client.read_task_runs(task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[uuid.UUID(flow_run_id)])),
                limit=200, sort=TaskRunSort.EXPECTED_START_TIME_ASC)

    try:
        _wait_for_start(driver, started, tmp_path / "driver.log")
        flow_run_id = wait_until(lambda: _read_lease(out).get("flow_run_id"), 30, "the flow run id in the lease")
        assert _read_lease(out)["prefect_api"] == prefect_api
        wait_until(lambda: any(t.state and t.state.type.value == "RUNNING" for t in task_runs(flow_run_id)), 60,
                   "a task run recorded Running")
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
    finally:
        with contextlib.suppress(psutil.Error):
            driver.kill()
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(uuid.UUID(flow_run_id)).state.type.value == "RUNNING"

    rerun = cli("run", str(flow), "--output", str(out), "--runner", "sequential", "--no-progress", "--json")
    assert rerun.returncode == 0, rerun.stderr
    assert f"took over the lease of run" in rerun.stderr and f"(pid {driver.pid} on {HOST}" in rerun.stderr
    assert f"marked flow run {flow_run_id}" in rerun.stderr, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["summary"]["written"] + report["summary"]["skipped"] == 4 and report["summary"]["failed"] == 0
    assert report["lease_taken_over_from"]["pid"] == driver.pid
    assert report["lease_taken_over_from"]["flow_run_id"] == flow_run_id
    assert report["crashed_runs_marked"] == [flow_run_id]
    manifest, _ = last_run(out, "ids")
    assert manifest["crashed_runs_marked"] == [flow_run_id]

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(uuid.UUID(flow_run_id)).state
    assert state.type.value == "CRASHED" and "driver gone" in (state.message or "")
    states = [t.state.type.value for t in task_runs(flow_run_id)]
    assert states and "RUNNING" not in states and "CRASHED" in states, states


def _tmp_name(base: str) -> str:
    return f".{base}.{uuid.uuid4().hex}.tmp"


def test_stale_temp_files_of_killed_writes_are_removed_and_counted(tmp_path, flow_file, prefect_api):
    flow = flow_file(FLOW)
    out = tmp_path / "out"
    ids = out / "ids"
    ids.mkdir(parents=True)
    old = time.time() - 3600
    stale = [ids / _tmp_name("part-0.parquet"), ids / _tmp_name("part-0.parquet"), ids / _tmp_name("part-30.parquet")]
    keep = [
        ids / ".keep",                                  # a hidden file that is no temp file
        ids / _tmp_name("part-99.parquet"),             # beside a path that is no target of this run
        ids / ".part-10.parquet.not-a-uuid.tmp",        # not distetl's name pattern
    ]
    newer = ids / _tmp_name("part-20.parquet")          # modified after the run started
    for path in [*stale, *keep, newer]:
        path.write_bytes(b"partial")
        os.utime(path, (old, old))
    future = time.time() + 3600
    os.utime(newer, (future, future))

    proc = cli("run", str(flow), "--output", str(out), "--runner", "sequential", "--no-progress", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["leftovers_removed"] == 3 and report["summary"]["written"] == 4
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in [*keep, newer])
    assert last_run(out, "ids")[0]["leftovers_removed"] == 3

    # Nothing left to run: the run still holds the lease and cleans; the summary says so.
    another = ids / _tmp_name("part-10.parquet")
    another.write_bytes(b"partial")
    os.utime(another, (old, old))
    proc = cli("run", str(flow), "--output", str(out), "--runner", "sequential", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    said = " ".join(proc.stderr.split())  # the summary wraps to the terminal's width
    assert "nothing to run" in said and "removed 1 stale temp file(s) left by killed writes" in said
    assert not another.exists()


# -- S3 ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3():
    from s3_server import S3Server

    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def s3_storage(s3, monkeypatch, tmp_path):
    from s3_server import isolate_aws_env

    isolate_aws_env(monkeypatch, tmp_path)
    bucket = f"distetl-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    return Storage("s3", {"endpoint_url": s3.endpoint}), f"s3://{bucket}/out", bucket


def test_s3_lease_is_create_only_and_refused_while_live(s3, s3_storage):
    storage, output, bucket = s3_storage
    key = "out/_distetl/ids/lease.json"
    first = RunLease(storage, output, "ids", uuid.uuid4().hex)
    with first:
        assert LeaseInfo.from_bytes(storage.read_bytes(first.url)).run_id == first.run_id
        mark = s3.requests.mark()
        second = RunLease(storage, output, "ids", uuid.uuid4().hex)
        with pytest.raises(ConfigError) as refused:
            second.acquire()
        assert f"pid {os.getpid()} on {HOST}" in str(refused.value)
        puts = [(path, status) for method, path, status in s3.requests.since(mark) if method == "PUT"]
        assert puts == [(f"/{bucket}/{key}", 412)], puts  # one create-only PUT, refused by the server
        first.set_flow_run("f-1", "http://127.0.0.1:1/api")
        assert LeaseInfo.from_bytes(storage.read_bytes(first.url)).flow_run_id == "f-1"
    assert key not in s3.keys(bucket), "released"
    with RunLease(storage, output, "ids", uuid.uuid4().hex) as third:
        assert third.taken_over is None


def test_s3_lease_of_a_silent_run_is_taken_over(s3, s3_storage):
    storage, output, bucket = s3_storage
    gone = RunLease(storage, output, "ids", uuid.uuid4().hex)
    gone.info.host, gone.info.heartbeat_at = "gone-host.example", "2024-01-01T00:00:00Z"
    assert storage.write_new(gone.url, gone.info.to_bytes())
    with RunLease(storage, output, "ids", uuid.uuid4().hex) as taker:
        assert taker.taken_over is not None and taker.taken_over.previous.run_id == gone.run_id
        assert "no heartbeat for" in taker.taken_over.message()
        assert LeaseInfo.from_bytes(storage.read_bytes(taker.url)).run_id == taker.run_id
    assert not [k for k in s3.keys(bucket) if "_distetl" in k], "lease and takeover lock are gone"


def test_heartbeat_renews_and_notices_a_lost_lease(tmp_path, caplog):
    storage = Storage.for_url(str(tmp_path))
    lease = RunLease(storage, str(tmp_path), "ids", uuid.uuid4().hex, ttl=0.6)
    with lease:
        first_beat = LeaseInfo.from_bytes(storage.read_bytes(lease.url)).heartbeat_at
        wait_until(lambda: LeaseInfo.from_bytes(storage.read_bytes(lease.url)).heartbeat_at != first_beat, 5,
                   "a heartbeat")
        other = LeaseInfo.from_bytes(storage.read_bytes(lease.url))
        other.run_id = uuid.uuid4().hex
        storage.write_atomic(lease.url, other.to_bytes())  # someone else's lease now
        wait_until(lambda: lease.lost, 5, "the heartbeat to notice")
    assert "no longer names this run" in caplog.text
    assert LeaseInfo.from_bytes(storage.read_bytes(lease.url)).run_id == other.run_id, "not ours: left alone"
