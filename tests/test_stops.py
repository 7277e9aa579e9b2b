"""Honest Prefect states, clean stops on SIGINT/SIGTERM, and per-chunk time limits, on
real processes: a real ``distetl run`` subprocess, real signals, a real Dask cluster and
the flow runs read back from the real Prefect API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest

import distetl
from distetl.engine.loader import load_pipeline

from cluster_helpers import DaskProcesses, clean_env, wait_until
from conftest import REPO, cli, last_run

FLOW = """
import os, time
import pandas as pd
from distetl import IdRange, Pipeline

def _listed(name):
    return [int(x) for x in os.environ.get(name, "").split(",") if x]

def extract(chunk):
    if chunk["start"] in _listed("BAD"):
        raise ValueError(f"source of {chunk.key} is corrupt")
    if chunk["start"] in _listed("HANG"):
        marker = os.environ.get("HANG_MARKER")
        if marker:
            open(marker, "w").close()
        time.sleep(600)
    time.sleep(float(os.environ.get("EACH_S", "0")))
    return pd.DataFrame({"id": range(chunk["start"], chunk["stop"])})

pipeline = Pipeline(name="stops", plan=IdRange(start=0, stop=N, size=1), extract=extract,
                    target="{output}/stops/part-{first}.parquet")
"""


def _flow(flow_file, n: int = 20) -> Path:
    return flow_file(FLOW.replace("stop=N", f"stop={n}"))


def _flow_run(api: str, flow_run_id: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(flow_run_id))


def _files(out: Path) -> set[str]:
    return {p.name for p in (out / "stops").glob("*.parquet")} if (out / "stops").exists() else set()


def test_failed_chunks_end_the_flow_run_failed_and_a_full_run_completed(tmp_path, flow_file, prefect_api):
    flow = _flow(flow_file)
    out = tmp_path / "out"
    proc = cli("run", str(flow), "--output", str(out), "--workers", "2", "--no-progress", "--json",
               env={"BAD": "3,7"})
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["flow_state"] == "FAILED"
    run = _flow_run(prefect_api, report["flow_run_id"])
    assert run.state.is_failed(), run.state
    assert "2 of 20 chunk(s) failed" in run.state.message
    assert "ids=03-03" in run.state.message and "ids=07-07" in run.state.message
    assert "Traceback" not in proc.stderr

    rerun = cli("run", str(flow), "--output", str(out), "--workers", "2", "--no-progress", "--json")
    assert rerun.returncode == 0, rerun.stderr
    again = json.loads(rerun.stdout)
    assert again["summary"]["written"] == 2
    assert _flow_run(prefect_api, again["flow_run_id"]).state.is_completed()


def _start(flow: Path, out: Path, *extra: str, env: dict) -> subprocess.Popen:
    full = {**os.environ, **env}
    return subprocess.Popen(
        [sys.executable, "-m", "distetl.cli", "run", str(flow), "--output", str(out), "--no-progress", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full, cwd=str(REPO),
        start_new_session=True,
    )


@pytest.mark.parametrize("how", ["sigint-group-local", "sigterm-pid-local", "sigterm-pid-sequential"])
def test_a_signal_stops_the_run_within_seconds_and_the_rerun_does_the_rest(how, tmp_path, flow_file, prefect_api):
    """Ctrl-C in a terminal signals the whole process group (driver and its local
    workers); a service manager sends SIGTERM to the driver alone. Either way: stopped
    within ~10 s though a chunk is stuck in a 600 s call, exit 130/143, no traceback,
    the flow run Cancelled, the manifest marked interrupted with every committed chunk."""
    sig = signal.SIGINT if how.startswith("sigint") else signal.SIGTERM
    runner = ["--runner", "sequential"] if how.endswith("sequential") else ["--workers", "2"]
    flow = _flow(flow_file)
    out = tmp_path / "out"
    marker = tmp_path / "hanging"
    proc = _start(flow, out, *runner, env={"HANG": "6", "HANG_MARKER": str(marker), "EACH_S": "0.2"})
    try:
        wait_until(lambda: marker.exists() and len(_files(out)) >= 4 or proc.poll() is not None, 120,
                   "the hanging chunk to start")
        assert proc.poll() is None, proc.communicate()
        sent = time.monotonic()
        if how.startswith("sigint"):
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, stderr
    assert took < 12, f"stopping took {took:.1f}s"
    assert "Traceback" not in stderr, stderr
    assert f"stopped by {sig.name}" in stderr
    manifest, chunks = last_run(out, "stops")
    assert manifest["interrupted"] == sig.name
    assert manifest["flow_state"] == "CANCELLED"
    written = {f"part-{int(r['key'].split('=')[1].split('-')[0])}.parquet" for r in chunks if r["status"] == "written"}
    assert written == _files(out), "the manifest lists exactly the chunks committed so far"
    assert "part-6.parquet" not in _files(out)
    assert _flow_run(prefect_api, manifest["flow_run_id"]).state.is_cancelled()

    rerun = cli("run", str(flow), "--output", str(out), *runner, "--no-progress", "--json")
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["summary"]["written"] == 20 - len(written)
    assert len(_files(out)) == 20


def test_a_second_ctrl_c_exits_at_once(tmp_path, flow_file, prefect_api):
    flow = _flow(flow_file, n=4)
    out = tmp_path / "out"
    marker = tmp_path / "hanging"
    # The sequential runner computes in the driver: the first Ctrl-C waits for the
    # stuck chunk's poll, the second must not wait for anything.
    proc = _start(flow, out, "--runner", "sequential", env={"HANG": "0", "HANG_MARKER": str(marker)})
    try:
        wait_until(lambda: marker.exists() or proc.poll() is not None, 120, "the hanging chunk to start")
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.05)
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert took < 3, f"the second Ctrl-C took {took:.1f}s"
    assert "Traceback" not in stderr


def test_a_hung_chunk_times_out_is_retried_and_the_rest_finishes(tmp_path, flow_file, prefect_api):
    flow = _flow(flow_file, n=8)
    out = tmp_path / "out"
    started = time.monotonic()
    proc = cli("run", str(flow), "--output", str(out), "--workers", "2", "--no-progress", "--json",
               "--chunk-timeout", "2", "--retries", "1", env={"HANG": "5"})
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    failed = [r for r in report["results"] if r["status"] == "failed"]
    assert [r["key"] for r in failed] == ["ids=5-5"]
    assert failed[0]["attempts"] == 2 and failed[0]["timed_out"]
    assert "timed out after 2 s" in failed[0]["error"] and "--chunk-timeout" in failed[0]["error"]
    assert len(_files(out)) == 7 and "part-5.parquet" not in _files(out)
    assert took < 120, "the run must not wait for the hung chunk's 600 s"


@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_bad_chunk_timeout_is_a_usage_error(value, tmp_path, flow_file):
    proc = cli("run", str(_flow(flow_file)), "--output", str(tmp_path / "out"), "--chunk-timeout", value)
    assert proc.returncode == 2
    assert "time limit above 0 seconds" in proc.stderr and "Fix:" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_worker_left_running_a_timed_out_chunk_is_restarted_through_its_nanny(tmp_path, flow_file,
                                                                                prefect_api):
    import threading

    from distributed import Client

    flow = _flow(flow_file, n=4)
    out = tmp_path / "out"
    os.environ["HANG"] = "1"
    try:
        pipeline = load_pipeline(str(flow)).with_options(timeout_seconds=2)
        with DaskProcesses(tmp_path / "dask", env=clean_env(HANG="1")) as procs:
            procs.start(n_workers=1)
            with Client(procs.address, timeout="10s", set_as_default=False) as client:
                before = client.run(os.getpid)
            report = distetl.run(pipeline, str(out), scheduler=procs.address)
            assert [r.key for r in report.failed] == ["ids=1-1"]
            assert "timed out after 2 s" in report.failed[0].error
            assert report.restarted_workers == sorted(before), procs.logs()
            with Client(procs.address, timeout="10s", set_as_default=False) as client:
                client.wait_for_workers(1, timeout=30)
                after = client.run(os.getpid)
                names = client.run(lambda: [t.name for t in threading.enumerate()])
            assert set(after.values()).isdisjoint(before.values()), "the worker process was restarted"
            assert not any(n.startswith("distetl-chunk-") for ns in names.values() for n in ns)
    finally:
        os.environ.pop("HANG", None)


@pytest.mark.parametrize("after_s", [0.8, 2.0])
def test_a_ctrl_c_while_the_run_starts_stops_it(after_s, tmp_path, flow_file, prefect_api):
    """A Ctrl-C in the run's first seconds (imports, the local cluster's start, the plan,
    the flow run's start) is not lost: the run stops, exit 130, and does not go on to
    commit every chunk (it was lost while the cluster's worker processes started, when
    the driver ignored SIGINT for them). The driver starts with Ctrl-C's default
    disposition, as from a terminal. A worker process still starting may die of the same
    Ctrl-C with a traceback; the run still stops cleanly."""
    flow = _flow(flow_file)
    out = tmp_path / "out"
    full = {**clean_env(), "EACH_S": "0.5", "PREFECT_API_URL": prefect_api}
    proc = subprocess.Popen(
        [sys.executable, "-m", "distetl.cli", "run", str(flow), "--output", str(out), "--no-progress",
         "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full, cwd=str(REPO),
        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        time.sleep(after_s)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, (proc.returncode, stderr[-3000:])
    assert "interrupted" in stderr or "stopped by SIGINT" in stderr, stderr[-3000:]
    assert len(_files(out)) < 20, "the Ctrl-C was lost: the run committed every chunk"
