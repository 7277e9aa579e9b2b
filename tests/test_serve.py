"""``distetl serve``: a real ``serve`` process, a real Prefect server with its scheduler,
a real warm Dask cluster, real signals; flow runs read back from the API.

* An interval of 3 s on serve's own server: scheduled runs commit the files that arrive
  between them, each is a flow run of the deployment (Completed, never overlapping), and
  SIGTERM stops serve within seconds leaving no process behind.
* A cron schedule on a server given by PREFECT_API_URL: a late run (scheduled days ago)
  processes the window of its own scheduled day in --tz; SIGTERM during a run stops it
  cleanly (Cancelled, manifest interrupted) and pauses the deployment.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from distetl.cli import main
from distetl.engine.prefect_api import EmbeddedServer, override_settings

from cluster_helpers import clean_env, wait_until
from conftest import REPO

INBOX_FLOW = """
import pandas as pd
from distetl import FileList, Pipeline

def extract(chunk):
    if chunk["stem"] == "bad":
        raise ValueError("bad.csv is corrupt")
    return pd.read_csv(chunk["path"])

pipeline = Pipeline(name="inbox", plan=FileList(pattern="PATTERN"), extract=extract,
                    target="{output}/inbox/{stem}.parquet")
"""

DAYS_FLOW = """
import os, time
import pandas as pd
from distetl import DateRange, Pipeline

def extract(chunk):
    if str(chunk["date"]) == os.environ.get("HANG_DAY"):
        open(os.environ["HANG_MARKER"], "w").close()
        time.sleep(600)
    return pd.DataFrame({"n": [1]})

pipeline = Pipeline(name="days", plan=DateRange(start="today-1d", end="today"), extract=extract,
                    target="{output}/days/date={date}/part-0.parquet")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(flow: Path, out: Path, *extra: str, env: dict) -> subprocess.Popen:
    """Start ``distetl serve`` in its own session; its stdout and stderr go to files beside
    the output (``proc.logs``), so a long run never blocks on a full pipe."""
    logs = (out.parent / "serve.stdout", out.parent / "serve.stderr")
    with open(logs[0], "w") as stdout, open(logs[1], "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "distetl.cli", "serve", str(flow), "--output", str(out), *extra],
            stdout=stdout, stderr=stderr, text=True, env=env, cwd=str(REPO), start_new_session=True,
        )
    proc.logs = logs
    return proc


def _logs(proc: subprocess.Popen) -> tuple[str, str]:
    return proc.logs[0].read_text(), proc.logs[1].read_text()


def _json_lines(proc: subprocess.Popen) -> list[dict]:
    """The complete JSON lines serve printed so far (one per run)."""
    text = _logs(proc)[0]
    return [json.loads(line) for line in text.splitlines()[: text.count("\n")] if line.strip()]


def _alive(proc: subprocess.Popen) -> bool:
    """Whether serve still runs; fails the test with its stderr if it ended."""
    if proc.poll() is None:
        return True
    raise AssertionError(f"serve exited with {proc.returncode}:\n{_logs(proc)[1][-3000:]}")


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _manifests(out: Path, pipeline: str) -> list[dict]:
    runs = out / "_distetl" / pipeline / "runs"
    found = []
    for path in sorted(runs.glob("*.json")) if runs.exists() else []:
        try:
            found.append(json.loads(path.read_text()))
        except ValueError:  # being written
            pass
    return found


def _written(manifest: dict) -> list[str]:
    """The keys of the chunks a run committed, from its manifest (or the per-chunk file
    beside it)."""
    if "results" in manifest:
        return [r["key"] for r in manifest["results"] if r["status"] == "written"]
    if not manifest.get("chunks_path") or not (manifest.get("summary") or {}).get("written"):
        return []
    import pyarrow.parquet as pq

    rows = pq.read_table(manifest["chunks_path"], columns=["key", "status"]).to_pylist()
    return [str(r["key"]) for r in rows if str(r["status"]) == "written"]


def _client(url: str):
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _deployment_runs(url: str, name: str) -> tuple[object, list]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with override_settings(api={"url": url}), _client(url) as client:
        deployment = client.read_deployment_by_name(name)
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                                     sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=200)
    return deployment, runs


def _stop(proc: subprocess.Popen, timeout: float = 30) -> tuple[str, str, float]:
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=timeout)
    took = time.monotonic() - sent
    return (*_logs(proc), took)


def test_scheduled_runs_commit_new_chunks_as_flow_runs_of_the_deployment_and_sigterm_stops_serve(tmp_path, flow_file):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    flow = flow_file(INBOX_FLOW.replace("PATTERN", str(inbox / "*.csv")))
    out = tmp_path / "out"
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    (inbox / "a.csv").write_text("x\n1\n2\n")
    env = clean_env(DISTETL_HOME=str(tmp_path / "home"))
    proc = _serve(flow, out, "--interval", "3", "--keep-cluster", "--workers", "1", "--json", "--poll", "1",
                  "--prefect-port", str(port), env=env)
    try:
        def committed_by_runs() -> list[dict]:
            return [m for m in _manifests(out, "inbox") if _written(m)]

        wait_until(lambda: committed_by_runs() or not _alive(proc), 60, "a scheduled run to commit a.csv")
        (inbox / "b.csv").write_text("x\n3\n")  # new data arrives between two scheduled runs
        wait_until(lambda: len(committed_by_runs()) >= 2 or not _alive(proc), 30,
                   "a later scheduled run to commit b.csv")
        committing = committed_by_runs()
        assert [_written(m) for m in committing[:2]] == [["file=a.csv"], ["file=b.csv"]]

        # Both are flow runs of the deployment, Completed, the same flow runs the manifests name.
        deployment, runs = _deployment_runs(url, "inbox/inbox")
        assert deployment.concurrency_limit == 1 or deployment.global_concurrency_limit.limit == 1
        assert deployment.schedules and deployment.schedules[0].active
        by_id = {str(r.id): r for r in runs}
        for manifest in committing[:2]:
            run = by_id[manifest["flow_run_id"]]
            assert run.state.is_completed(), run.state
            assert run.deployment_id == deployment.id
            assert run.name.startswith("inbox · 1 chunks")
        done = [r for r in runs if r.state.is_completed()]
        assert len(done) >= 2
        # One at a time: no two runs of the deployment overlapped.
        spans = sorted((r.start_time, r.end_time) for r in done if r.start_time and r.end_time)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans
        # A run with nothing new ends Completed and says so.
        ours = {m["flow_run_id"] for m in committing}
        idle = wait_until(lambda: [r for r in _deployment_runs(url, "inbox/inbox")[1]
                                   if r.state.is_completed() and str(r.id) not in ours] or not _alive(proc),
                          20, "a scheduled run with nothing new")
        assert "nothing to run" in (idle[0].state.message or ""), idle[0].state

        # A chunk that fails ends its scheduled run's flow run Failed, naming the chunk.
        (inbox / "bad.csv").write_text("x\n4\n")
        failed = wait_until(lambda: [line for line in _json_lines(proc) if line["state"] == "FAILED"]
                            or not _alive(proc), 20, "a scheduled run with a failing chunk")
        assert failed[0]["exit_code"] == 1
        state = _run(url, failed[0]["flow_run_id"]).state
        assert state.is_failed() and "1 of 1 chunk(s) failed: file=bad.csv" in state.message, state

        family = _descendants(proc.pid)
        assert len(family) >= 2, "serve's Prefect server and its warm Dask worker run under it"
        stdout, stderr, took = _stop(proc)
    except AssertionError as failure:
        raise AssertionError(f"{failure}\nserve's stderr:\n{_logs(proc)[1][-3000:]}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr
    assert took < 15, f"stopping took {took:.1f}s"
    assert "Traceback" not in stderr, stderr
    assert "stopped by SIGTERM" in stderr
    gone, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"processes left behind: {[p.pid for p in alive]}"
    lines = _json_lines(proc)
    assert {line["flow_run_id"] for line in lines} >= {m["flow_run_id"] for m in committing}
    outcomes = {(line["state"], line["exit_code"]) for line in lines}
    # The run SIGTERM lands in (if any) ends Cancelled, or keeps the Failed its flow run
    # already had when the stop came as the run was finishing; either way it exits 143.
    assert {("COMPLETED", 0), ("FAILED", 1)} <= outcomes <= {("COMPLETED", 0), ("FAILED", 1), ("CANCELLED", 143),
                                                            ("FAILED", 143)}
    assert not list((tmp_path / "home" / "prefect" / "servers").glob("*.json")), "serve's server record stays"


@pytest.fixture
def scheduling_server(tmp_path):
    """A Prefect server with every service on (the scheduler), as `distetl cluster up` starts."""
    server = EmbeddedServer(tmp_path / "scheduling-server", all_services=True)
    url = server.start()
    yield url
    server.stop()


def test_a_late_run_processes_its_own_window_and_sigterm_stops_the_run_in_progress(tmp_path, flow_file,
                                                                                    scheduling_server):
    from prefect.states import Scheduled

    url = scheduling_server
    flow = flow_file(DAYS_FLOW)
    out = tmp_path / "out"
    marker = tmp_path / "hanging"
    env = clean_env(PREFECT_API_URL=url, DISTETL_HOME=str(tmp_path / "home"), HANG_DAY="2024-03-13",
                    HANG_MARKER=str(marker))
    proc = _serve(flow, out, "--cron", "0 2 * * *", "--tz", "Europe/Paris", "--keep-cluster", "--workers", "1",
                  "--poll", "1", env=env)
    try:
        deployment = wait_until(lambda: _alive(proc) and _deployment_or_none(url, "days/days"), 60,
                                "serve to register the deployment")
        # Two runs scheduled days ago (serve was down): 23:30 UTC is already the next day in Paris.
        with override_settings(api={"url": url}), _client(url) as client:
            first = client.create_flow_run_from_deployment(
                deployment.id, state=Scheduled(scheduled_time=dt.datetime(2024, 3, 9, 23, 30, tzinfo=dt.timezone.utc)))
        wait_until(lambda: _manifests(out, "days") or not _alive(proc), 60, "the late run to finish")
        manifest = _manifests(out, "days")[0]
        assert manifest["flow_run_id"] == str(first.id)
        assert manifest["plan"]["relative"] == {"start": "today-1d", "end": "today", "today": "2024-03-10",
                                                "tz": "Europe/Paris"}
        assert sorted(_written(manifest)) == ["date=2024-03-09", "date=2024-03-10"]
        assert _run(url, first.id).state.is_completed()

        with override_settings(api={"url": url}), _client(url) as client:
            second = client.create_flow_run_from_deployment(
                deployment.id, state=Scheduled(scheduled_time=dt.datetime(2024, 3, 12, 23, 30, tzinfo=dt.timezone.utc)))
        wait_until(lambda: marker.exists() or not _alive(proc), 60, "the second run's hanging chunk")
        family = _descendants(proc.pid)
        stdout, stderr, took = _stop(proc)
    except AssertionError as failure:
        raise AssertionError(f"{failure}\nserve's stderr:\n{_logs(proc)[1][-3000:]}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr
    assert took < 15, f"stopping took {took:.1f}s"
    assert "Traceback" not in stderr, stderr
    stopped = [m for m in _manifests(out, "days") if m["flow_run_id"] == str(second.id)]
    assert stopped and stopped[0]["interrupted"] == "SIGTERM"
    assert "date=2024-03-13" not in _written(stopped[0])
    assert _run(url, second.id).state.is_cancelled()
    gone, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"processes left behind: {[p.pid for p in alive]}"
    after, _ = _deployment_runs(url, "days/days")
    assert after.paused, "serve pauses its deployment when it stops"


def _deployment_or_none(url: str, name: str):
    from prefect.exceptions import ObjectNotFound

    try:
        with override_settings(api={"url": url}), _client(url) as client:
            return client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None


def _run(url: str, flow_run_id):
    with override_settings(api={"url": url}), _client(url) as client:
        return client.read_flow_run(flow_run_id)


@pytest.mark.parametrize("argv, expected", [
    ([], "a schedule: --cron EXPR and/or --interval SECONDS"),
    (["--cron", "every day"], "a cron expression of five fields"),
    (["--interval", "0"], "--interval above 0 seconds"),
    (["--interval", "5", "--tz", "Mars/Olympus"], "an IANA time zone"),
    (["--interval", "5", "--keep-cluster", "--scheduler", "tcp://127.0.0.1:1"], "--keep-cluster alone"),
])
def test_usage_errors_exit_2_before_anything_starts(argv, expected, tmp_path, flow_file, capsys):
    flow = flow_file(DAYS_FLOW)
    code = main(["serve", str(flow), "--output", str(tmp_path / "out"), *argv])
    assert code == 2
    assert expected in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "out").exists()


def test_a_server_without_its_scheduler_is_refused(tmp_path, flow_file, prefect_api, capsys, monkeypatch):
    """The session's server runs without the scheduler service, like a run's own server."""
    monkeypatch.setenv("DISTETL_HOME", str(tmp_path / "home"))
    code = main(["serve", str(flow_file(DAYS_FLOW)), "--output", str(tmp_path / "out"), "--interval", "5"])
    assert code == 2
    assert "its scheduler service is off" in capsys.readouterr().err.replace("\n", " ")
