"""Faults real clusters have: a worker SIGKILLed mid-run, the driver SIGKILLed mid-run,
and two runs of the same backfill at once (the second is refused: see tests/test_lease.py). Real ``dask scheduler``/``dask worker``
processes on 127.0.0.1; the flow logs every extract (and whether its target already
existed) so a recomputed committed chunk cannot go unnoticed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

import distetl
from distetl.engine.loader import load_pipeline

from cluster_helpers import (
    DaskProcesses, clean_env, expected_table, logged_flow_source, manifest_task_runs, read_exec_log,
    task_run_states, wait_until,
)
from conftest import REPO, last_run

DAYS = 20


def _days(n: int) -> list[str]:
    return [f"2024-01-{d:02d}" for d in range(1, n + 1)]


def _targets(out: Path) -> dict[str, tuple[int, int]]:
    """Committed targets: day → (inode, mtime) (to prove files untouched)."""
    found = {}
    for path in out.glob("t/date=*/part-0.parquet"):
        st = path.stat()
        found[path.parent.name.split("=", 1)[1]] = (st.st_ino, st.st_mtime_ns)
    return found


def _check_output(out: Path, n: int) -> None:
    """Every target is a complete Parquet file equal to a clean run's; nothing else."""
    assert sorted(_targets(out)) == _days(n)
    for day in _days(n):
        assert pq.read_table(out / "t" / f"date={day}" / "part-0.parquet").equals(expected_table(day)), day
    leftovers = [p for p in out.rglob("*") if p.is_file() and "_distetl" not in p.parts and p.name != "part-0.parquet"]
    assert leftovers == [], leftovers


def _no_recompute_after_commit(log: Path) -> None:
    started_on_committed = [(key, pid) for event, key, pid, existed in read_exec_log(log) if event == "start" and existed]
    assert started_on_committed == [], "a committed chunk was computed again"


class _Killer:
    """Kills (SIGKILL) the worker process that has just started a chunk, once ``after``
    chunks have started, while that chunk sleeps in its extract."""

    def __init__(self, log: Path, after: int):
        self.log, self.after = log, after
        self.victim: tuple[str, int] | None = None
        self.at_line = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            seen = 0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                lines = read_exec_log(self.log)
                fresh = [line for line in lines[seen:] if line[0] == "start"]
                seen = len(lines)
                if fresh and sum(1 for line in lines if line[0] == "start") >= self.after:
                    _, key, pid, _ = fresh[-1]
                    os.kill(pid, signal.SIGKILL)
                    self.victim, self.at_line = (key, pid), seen
                    return
                time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test
            self.error = exc


@pytest.mark.parametrize("allowed_failures", [None, 0], ids=["rescheduled", "killed-worker-error"])
def test_worker_killed_mid_run_commits_every_chunk_exactly_once(allowed_failures, tmp_path, flow_file, prefect_api):
    log = tmp_path / "exec.log"
    pipeline = load_pipeline(str(flow_file(logged_flow_source(log, n_days=DAYS, sleep=0.3))))
    out = tmp_path / "out"
    scheduler_env = {} if allowed_failures is None else {
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(allowed_failures)}
    with DaskProcesses(tmp_path / "dask") as procs:
        procs.start(n_workers=2, scheduler_env=scheduler_env)
        killer = _Killer(log, after=5)
        killer.thread.start()
        report = distetl.run(pipeline, str(out), scheduler=procs.address, chunks_per_task=3)
        killer.thread.join(timeout=5)
        assert killer.error is None and killer.victim is not None, "the kill did not happen mid-run"
        victim_key, victim_pid = killer.victim
        assert not psutil.pid_exists(victim_pid) or psutil.Process(victim_pid).status() == psutil.STATUS_ZOMBIE

        lines = read_exec_log(log)
        starts = Counter(key for event, key, _, _ in lines if event == "start")
        ends = Counter(key for event, key, _, _ in lines if event == "end")
        _no_recompute_after_commit(log)
        assert all(n == 1 for key, n in ends.items() if key != victim_key), "a chunk was committed twice"
        if allowed_failures is None:
            # Dask reran the lost batch on a live worker: only the chunk that was
            # running on the dead worker ran twice; the run is complete.
            assert report.ok, [(r.key, r.error) for r in report.failed]
            assert {k for k, n in starts.items() if n > 1} == {victim_key}
            # A chunk the dead worker committed is "written" if its progress event got out
            # before the kill, else "skipped" (found committed when the batch reran).
            assert report.written + report.skipped == DAYS
            victim_commits = {key for event, key, pid, _ in lines if event == "end" and pid == victim_pid}
            assert {r.key for r in report.results if r.status == "skipped"} <= victim_commits
        else:
            # KilledWorker: Dask gave up on the lost batch at once; distetl reran its chunks
            # one by one (each its own task; those committed before the kill are skipped
            # on the worker), so the chunk on the killed worker ran again and the run is
            # complete. The kill was not for memory: nothing says "out of memory".
            assert report.ok, [(r.key, r.error) for r in report.failed]
            assert {k for k, n in starts.items() if n > 1} == {victim_key}
            assert report.written + report.skipped == DAYS
            before = _targets(out)
            rerun = distetl.run(pipeline, str(out), scheduler=procs.address)
            assert rerun.ok and rerun.to_run == 0 and _targets(out) == before
            _no_recompute_after_commit(log)

    _check_output(out, DAYS)
    # Every batch's task run reached a final state in the driver's API.
    by_chunk = manifest_task_runs(report.manifest_path)
    states = task_run_states(prefect_api, set(by_chunk.values()))
    assert set(states) == set(by_chunk.values())
    assert set(states.values()) == {"COMPLETED"}


def test_driver_killed_mid_run_rerun_commits_only_the_missing_chunks(tmp_path, flow_file, prefect_api):
    """SIGKILL the driver (the CLI, with its own embedded Prefect API) mid-run. Its
    batches on the cluster stop after the chunk they were writing, its Prefect server
    exits, and the rerun takes over its lease and commits exactly the chunks that were
    missing. (The rerun reports to another Prefect API, which does not have the killed
    run's flow run: it says so; tests/test_lease.py covers the marking on a shared API.)"""
    log = tmp_path / "exec.log"
    n = 24
    path = flow_file(logged_flow_source(log, n_days=n, sleep=0.3))
    out = tmp_path / "out"
    with DaskProcesses(tmp_path / "dask") as procs:
        procs.start(n_workers=2)
        env = clean_env(DISTETL_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect-home"))
        driver = psutil.Popen(
            [sys.executable, "-m", "distetl.cli", "run", str(path), "--output", str(out),
             "--scheduler", procs.address, "--chunks-per-task", "6", "--no-progress"],
            env=env, cwd=str(REPO), stdout=open(tmp_path / "driver.log", "wb"), stderr=-2,
        )
        servers: list[psutil.Process] = []
        try:
            wait_until(lambda: sum(1 for e in read_exec_log(log) if e[0] == "start") >= 6, 120,
                       "six chunks to start")
            servers = [p for p in driver.children(recursive=True) if "prefect.server" in " ".join(p.cmdline())]
            lines_at_kill = len(read_exec_log(log))
            driver.send_signal(signal.SIGKILL)
            driver.wait(timeout=10)
            assert len(servers) == 1

            def idle() -> bool:
                from distributed import Client

                with Client(procs.address, timeout="10s", set_as_default=False) as client:
                    executing = client.run(lambda dask_worker: len(dask_worker.state.executing))
                return all(count == 0 for count in executing.values())

            wait_until(idle, 60, "the orphaned batches to stop")
            _, alive = psutil.wait_procs(servers, timeout=40)
            assert not alive, "the killed driver's Prefect server is still running"
        finally:
            for proc in [driver, *servers]:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        after_kill = [e for e in read_exec_log(log)[lines_at_kill:] if e[0] == "start"]
        assert len(after_kill) <= 2, f"orphaned batches kept going: {after_kill}"

        committed = _targets(out)
        missing = {f"date={d}" for d in _days(n)} - {f"date={d}" for d in committed}
        assert 0 < len(committed) < n and missing
        rerun = distetl.run(load_pipeline(str(path)), str(out), scheduler=procs.address)

    assert rerun.ok and rerun.already_committed == len(committed)
    taken = rerun.lease_taken_over_from
    assert taken and taken["pid"] == driver.pid and "its driver is gone" in taken["reason"], taken
    assert taken["flow_run_id"] and taken["prefect_api"] != prefect_api and rerun.crashed_runs_marked == []
    assert {r.key for r in rerun.results if r.status == "written"} == missing
    assert {d: v for d, v in _targets(out).items() if d in committed} == committed, "committed files were rewritten"
    _no_recompute_after_commit(log)
    _check_output(out, n)


def test_two_runs_of_the_same_backfill_at_once_one_is_refused(tmp_path, flow_file, prefect_api):
    """Both start together; one takes the output's lease and does the whole backfill, the
    other exits 2 naming it (host and pid) before any compute."""
    log = tmp_path / "exec.log"
    n = 20
    path = flow_file(logged_flow_source(log, n_days=n, sleep=0.1))
    out = tmp_path / "out"
    with DaskProcesses(tmp_path / "dask") as procs:
        procs.start(n_workers=2)
        runs = [
            psutil.Popen(
                [sys.executable, "-m", "distetl.cli", "run", str(path), "--output", str(out), "--scheduler",
                 procs.address, "--chunks-per-task", "2", "--json"],
                env=dict(os.environ), cwd=str(REPO), stdout=-1, stderr=-1, text=True,
            )
            for _ in range(2)
        ]
        try:
            results = [run.communicate(timeout=180) for run in runs]
        finally:
            for run in runs:
                if run.poll() is None:
                    run.kill()
    codes = sorted(run.returncode for run in runs)
    assert codes == [0, 2], [stderr[-3000:] for _, stderr in results]
    (winner, (stdout, _)), (loser, (_, refusal)) = sorted(zip(runs, results), key=lambda r: r[0].returncode)
    assert f"pid {winner.pid} on {socket.gethostname()}" in refusal and "Fix: wait for it to finish" in refusal
    summary = json.loads(stdout)["summary"]
    assert summary["failed"] == 0 and summary["written"] == n
    _no_recompute_after_commit(log)
    _check_output(out, n)
    manifests = list((out / "_distetl" / "logged" / "runs").glob("*.json"))
    assert len(manifests) == 1
    assert not (out / "_distetl" / "logged" / "lease.json").exists()


def test_runs_starting_together_on_a_new_output_all_pass_the_workers_path_check(tmp_path):
    """Before its lease, a remote run proves the workers see the output folder with a probe
    file under ``{output}/_distetl/`` (removed after; the folders made for it only when the
    check fails). Runs starting at the same moment on a new output must not trip over each
    other's probes, nor remove the folder another run is writing its lease in (both once
    raised FileNotFoundError in the second run: exit 1 instead of the lease's exit 2)."""
    from distributed import Client, LocalCluster

    from distetl.engine.runners import OUTPUT_FOLDER, _check_paths_seen

    errors: list[str] = []
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc) as client:
        facts = {w: {"host": "here"} for w in client.scheduler_info()["workers"]}

        def check(out: str, barrier: threading.Barrier, delay: float) -> None:
            barrier.wait()
            time.sleep(delay)  # staggered: one run's cleanup meets another's start
            try:
                _check_paths_seen(client, facts, [(OUTPUT_FOLDER, out)])
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(f"{type(exc).__name__}: {exc}")

        def take_lease(out: str, barrier: threading.Barrier, delay: float) -> None:
            # A run whose check passed writes under {output}/_distetl/ at once (its lease).
            barrier.wait()
            time.sleep(delay)
            try:
                folder = os.path.join(out, "_distetl", "p")
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, "lease.json"), "w") as handle:
                    handle.write("{}")
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(f"lease: {type(exc).__name__}: {exc}")

        for i in range(60):
            out = str(tmp_path / f"out{i}")
            barrier = threading.Barrier(4)
            threads = [threading.Thread(target=check, args=(out, barrier, j * (i % 12) * 0.0005))
                       for j in range(3)]
            threads.append(threading.Thread(target=take_lease, args=(out, barrier, (i % 7) * 0.0004)))
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            left = [p.name for p in Path(out).rglob("*") if p.is_file() and p.name != "lease.json"]
            assert left == [], f"the check left its probe files behind: {left}"
            assert (Path(out) / "_distetl" / "p" / "lease.json").exists()
    assert errors == []


def test_scheduler_killed_mid_run_ends_the_run_with_a_clear_error_and_the_rerun_does_the_rest(
        tmp_path, flow_file, prefect_api):
    """SIGKILL the scheduler mid-run: the run ends within 30 s with exit 1 and an error
    naming the scheduler's address, its manifest lists exactly the chunks committed (the
    rest not run), its flow run is Failed in Prefect, the lease is released, and the
    workers left without a scheduler commit nothing more (they once went on committing
    for seconds after the lease was released); a rerun against a new scheduler commits
    exactly the rest."""
    log = tmp_path / "exec.log"
    n = 30
    path = flow_file(logged_flow_source(log, n_days=n, sleep=0.3))
    out = tmp_path / "out"
    with DaskProcesses(tmp_path / "dask") as procs:
        procs.start(n_workers=2)
        workers = [psutil.Process(w.pid) for w in procs.workers]
        driver = psutil.Popen(
            [sys.executable, "-m", "distetl.cli", "run", str(path), "--output", str(out), "--scheduler",
             procs.address, "--chunks-per-task", "3", "--json"],
            env=dict(os.environ), cwd=str(REPO), stdout=-1, stderr=-1, text=True,
        )
        try:
            # Mid-batch: some chunks committed, the batches in flight still computing.
            wait_until(lambda: sum(1 for e in read_exec_log(log) if e[0] == "end") >= 5, 120, "five chunks to commit")
            killed = time.monotonic()
            procs.scheduler.kill()
            stdout, stderr = driver.communicate(timeout=60)
            took = time.monotonic() - killed
            committed = _targets(out)
            # The workers close themselves without their scheduler; what they were
            # running commits nothing more once the driver has ended.
            _, alive = psutil.wait_procs(workers, timeout=30)
            assert not alive, procs.logs()
        finally:
            if driver.poll() is None:
                driver.kill()
    assert driver.returncode == 1 and took <= 30, (driver.returncode, took, stderr[-3000:])
    assert f"the Dask scheduler {procs.address} was lost mid-run" in stderr and "Fix: start the scheduler" in stderr
    assert "Traceback" not in stderr, stderr[-6000:]
    assert _targets(out) == committed, "a worker without a scheduler committed after the run ended"
    manifest, records = last_run(out, "logged")
    assert manifest["scheduler_lost"] and procs.address in manifest["scheduler_lost"]
    assert json.loads(stdout)["summary"] == manifest["summary"]
    summary = manifest["summary"]
    done = {r["key"] for r in records if r["status"] in ("written", "skipped")}
    assert done == {f"date={d}" for d in committed} and 0 < len(done) < n, (sorted(done), sorted(committed))
    assert summary["written"] + summary["skipped"] == len(committed) and summary["failed"] == 0
    assert summary["not_run"] == n - len(committed)
    assert not (out / "_distetl" / "logged" / "lease.json").exists(), "the lease was not released"
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(manifest["flow_run_id"]).state
    assert state.type.value in ("FAILED", "CRASHED") and "was lost mid-run" in (state.message or ""), state

    with DaskProcesses(tmp_path / "dask2") as procs2:
        procs2.start(n_workers=2)
        rerun = distetl.run(load_pipeline(str(path)), str(out), scheduler=procs2.address)
    assert rerun.ok and rerun.already_committed == len(committed)
    assert {r.key for r in rerun.results if r.status == "written"} == {f"date={d}" for d in _days(n)} - {
        f"date={d}" for d in committed}
    assert {d: v for d, v in _targets(out).items() if d in committed} == committed, "committed files were rewritten"
    _no_recompute_after_commit(log)
    _check_output(out, n)
