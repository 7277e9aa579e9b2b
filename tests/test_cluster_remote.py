"""Runs on a remote Dask cluster by address: a real ``dask scheduler`` and two ``dask worker``
processes on 127.0.0.1 (random free ports) that the test starts apart from itself, with
no PREFECT_API_URL in their environment and a working directory that holds no flow file.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

import distetl
from distetl.errors import ClusterError
from distetl.engine.loader import load_pipeline
from distetl.engine.prefect_api import EmbeddedServer
from distetl.engine.runners import RunnerSpec

from cluster_helpers import (
    DaskProcesses, ProcessWatcher, clean_env, expected_table, free_port, logged_flow_source,
    manifest_task_runs, read_exec_log, task_run_states, wait_until,
)
from conftest import REPO


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and two workers in their own processes and sessions."""
    procs = DaskProcesses(tmp_path_factory.mktemp("dask-remote"))
    try:
        procs.start(n_workers=2)
        yield procs
    finally:
        procs.stop()


def _cluster_pids(cluster: DaskProcesses) -> list[int]:
    return [cluster.scheduler.pid, *(w.pid for w in cluster.workers)]


def _check_files(out: Path, days: list[str]) -> None:
    for day in days:
        table = pq.read_table(out / "t" / f"date={day}" / "part-0.parquet")
        assert table.equals(expected_table(day)), day
    assert not list(out.rglob("*.tmp"))


def test_run_by_address_on_workers_that_never_saw_the_flow_file(cluster, flow_file, tmp_path, prefect_api):
    log = tmp_path / "exec.log"
    path = flow_file(logged_flow_source(log, n_days=12, sleep=0.0), name="remote_flow.py")
    pipeline = load_pipeline(str(path))
    path.unlink()  # the workers cannot read it from anywhere: only the shipped source exists
    out = tmp_path / "out"
    watcher = ProcessWatcher(lambda: _cluster_pids(cluster))

    with watcher.running():
        report = distetl.run(pipeline, str(out), scheduler=cluster.address)

    assert report.ok, [r.error for r in report.failed]
    assert report.written == report.total == 12
    assert report.runner == f"remote Dask scheduler {cluster.address}"
    workers = cluster.worker_addresses()
    assert {r.worker for r in report.results} <= workers, "every chunk ran on the cluster's workers"
    pids = {pid for _, _, pid, _ in read_exec_log(log)}
    assert os.getpid() not in pids and pids, pids
    _check_files(out, [f"2024-01-{d:02d}" for d in range(1, 13)])

    # Every chunk's task run is recorded, in a final state, in the API the driver used.
    by_chunk = manifest_task_runs(report.manifest_path)
    assert set(by_chunk) == {r.key for r in report.results} and all(by_chunk.values())
    states = task_run_states(prefect_api, by_chunk.values())
    assert set(states) == set(by_chunk.values())
    assert set(states.values()) == {"COMPLETED"}
    assert watcher.samples > 0 and watcher.servers == {}, "no cluster process may start a Prefect server"


def test_scheduler_from_environment_and_edited_flow_file_is_not_stale(cluster, flow_file, tmp_path,
                                                                       prefect_api, monkeypatch):
    """DISTETL_SCHEDULER alone selects the cluster; a flow file edited between two runs on
    the same long-lived workers runs as edited."""
    monkeypatch.setenv("DISTETL_SCHEDULER", cluster.address)
    log = tmp_path / "exec.log"
    source = logged_flow_source(log, n_days=3, sleep=0.0, name="edited")
    path = flow_file(source, name="edited_flow.py")
    out = tmp_path / "out"

    first = distetl.run(load_pipeline(str(path)), str(out))
    assert first.ok and first.written == 3 and first.runner.startswith("remote Dask scheduler")
    assert {r.worker for r in first.results} <= cluster.worker_addresses()

    path.write_text(source.replace("day.dayofyear * 1000 + i", "day.dayofyear * 1000 + i + 7"))
    second = distetl.run(load_pipeline(str(path)), str(out), force=True)
    assert second.ok and second.written == 3
    values = pq.read_table(out / "t" / "date=2024-01-02" / "part-0.parquet").column("v").to_pylist()
    assert values[:3] == [2007, 2008, 2009], "workers ran the old flow code"


def test_without_prefect_api_url_one_embedded_server_serves_driver_and_workers(cluster, flow_file, tmp_path):
    """The CLI, with no PREFECT_API_URL anywhere, starts exactly one Prefect server; no
    worker starts its own; every chunk's task run is in that server's database."""
    home = tmp_path / "home"
    path = flow_file(logged_flow_source(tmp_path / "exec.log", n_days=16, sleep=0.1), name="embedded_flow.py")
    out = tmp_path / "out"
    env = clean_env(DISTETL_HOME=str(home), PREFECT_HOME=str(tmp_path / "prefect-home"))
    proc = psutil.Popen(
        [sys.executable, "-m", "distetl.cli", "run", str(path), "--output", str(out),
         "--scheduler", cluster.address, "--json"],
        env=env, cwd=str(REPO), stdout=-1, stderr=-1, text=True,
    )
    watcher = ProcessWatcher(lambda: [proc.pid, *_cluster_pids(cluster)])
    try:
        with watcher.running():
            stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    report = json.loads(stdout)
    assert report["summary"]["written"] == 16

    assert len(watcher.servers) == 1, watcher.servers
    [(server_pid, (root, command))] = watcher.servers.items()
    assert root == proc.pid and "prefect.server" in command, "the one server is the driver's"
    assert not psutil.pid_exists(server_pid) or psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE

    by_chunk = {r["key"]: r["task_run_id"] for r in report["results"]}
    assert len(by_chunk) == 16 and all(by_chunk.values())
    server = EmbeddedServer(home / "prefect")
    try:
        url = server.start()
        states = task_run_states(url, by_chunk.values())
    finally:
        server.stop()
    assert set(states) == set(by_chunk.values()), "every chunk's task run is in the driver's API"
    assert set(states.values()) == {"COMPLETED"}


def test_workers_missing_a_dependency_fail_before_any_chunk_runs(cluster, flow_file, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTETL_HOME", str(tmp_path / "home"))
    log = tmp_path / "exec.log"
    path = flow_file(logged_flow_source(log, n_days=3, sleep=0.0, extra="import helper_only_here"),
                     name="needs_helper.py")
    # On the driver's path, not beside the flow (modules beside it travel with it):
    # fine on the driver, missing on the workers.
    elsewhere = tmp_path / "driver-only"
    elsewhere.mkdir()
    (elsewhere / "helper_only_here.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(elsewhere))
    pipeline = load_pipeline(str(path))

    with pytest.raises(ClusterError) as caught:
        distetl.run(pipeline, str(tmp_path / "out"), scheduler=cluster.address)

    message = str(caught.value)
    assert "No module named 'helper_only_here'" in message and "install `helper_only_here`" in message
    assert any(address in message for address in cluster.worker_addresses())
    assert "Fix:" in message
    assert not (tmp_path / "out").exists() and not log.exists()
    assert not (tmp_path / "home" / "prefect").exists(), "no Prefect API was started"


@pytest.fixture
def silent_listener():
    """A TCP listener that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.mark.parametrize("case", ["refused", "silent", "dashboard", "worker", "no-port"])
def test_wrong_or_unreachable_scheduler_fails_within_the_timeout(case, cluster, silent_listener, flow_file,
                                                                  tmp_path, monkeypatch):
    monkeypatch.setenv("DISTETL_HOME", str(tmp_path / "home"))
    address = {
        "refused": f"tcp://127.0.0.1:{free_port()}",
        "silent": silent_listener,
        "dashboard": f"tcp://127.0.0.1:{cluster.dashboard_port}",
        "worker": sorted(cluster.worker_addresses())[0],
        "no-port": "127.0.0.1",
    }[case]
    pipeline = load_pipeline(str(flow_file(logged_flow_source(tmp_path / "exec.log", n_days=2, sleep=0))))
    timeout = 2.0
    started = time.monotonic()
    with pytest.raises(ClusterError) as caught:
        distetl.run(pipeline, str(tmp_path / "out"), runner=RunnerSpec.from_options(None, None, address, timeout))
    elapsed = time.monotonic() - started

    message = str(caught.value)
    assert elapsed < 3 * timeout + 1, f"took {elapsed:.1f}s"
    assert address in message and "Fix:" in message and message.startswith("Expected ")
    expected = {"refused": "Connection refused", "silent": "did not answer as a Dask scheduler",
                "dashboard": "not the scheduler", "worker": "a Dask Worker", "no-port": "tcp://HOST:8786"}[case]
    assert expected in message
    assert not (tmp_path / "out").exists() and not (tmp_path / "home" / "prefect").exists()


def test_cli_with_bad_scheduler_in_environment_exits_2_fast(tmp_path):
    from conftest import cli

    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = cli("run", str(REPO / "flows" / "nycflights.py"), "--output", str(tmp_path / "out"),
               "--connect-timeout", "1", env={"DISTETL_SCHEDULER": address, "DISTETL_HOME": str(tmp_path / "h")})
    assert proc.returncode == 2, proc.stderr
    assert address in proc.stderr and "Fix:" in proc.stderr and "DISTETL_SCHEDULER" in proc.stderr
    assert time.monotonic() - started < 30
    assert not (tmp_path / "out").exists()


def test_no_workers_or_another_distetl_on_a_worker_is_named(tmp_path, flow_file, monkeypatch):
    monkeypatch.setenv("DISTETL_HOME", str(tmp_path / "home"))
    pipeline = load_pipeline(str(flow_file(logged_flow_source(tmp_path / "exec.log", n_days=2, sleep=0))))
    out = str(tmp_path / "out")
    fakes = {}
    for name, body in (("other", '__version__ = "0.0.1-other"\n'),
                       ("broken", 'raise ImportError("simulated broken install")\n')):
        package = tmp_path / f"fake-{name}" / "distetl"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(body)
        fakes[name] = str(package.parent)

    with DaskProcesses(tmp_path / "dask") as procs:
        procs.start(n_workers=0)
        spec = RunnerSpec.from_options(None, None, procs.address, 1.5)
        with pytest.raises(ClusterError, match="at least one Dask worker connected") as caught:
            distetl.run(pipeline, out, runner=spec)
        assert f"dask worker {procs.address}" in str(caught.value)

        for name, expected in (("other", "distetl 0.0.1-other on worker"), ("broken", "simulated broken install")):
            worker = procs.add_worker(name, extra_env={"PYTHONPATH": fakes[name]})
            procs.wait_for_workers(1)
            with pytest.raises(ClusterError) as caught:
                distetl.run(pipeline, out, runner=spec)
            message = str(caught.value)
            assert expected in message and distetl.__version__ in message and "Fix:" in message
            assert next(iter(procs.worker_addresses())) in message
            worker.terminate()
            worker.wait(timeout=30)
            wait_until(lambda: not procs.worker_addresses(), 30, "the worker to leave")
    assert not Path(out).exists()
