"""``distetl cluster up|status|down``: a laptop cluster outside any single run, with
working dashboards, used by a backfill through the addresses it prints."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import urllib.request
from pathlib import Path

import psutil

from cluster_helpers import clean_env, free_port, logged_flow_source, task_run_states
from conftest import cli


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.status, resp.read().decode(errors="replace")


def _printed(stdout: str) -> dict[str, str]:
    """``name: value`` lines of ``cluster up`` / ``status``."""
    out = {}
    for line in stdout.splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith(" "):
            out[name.strip()] = value.strip()
    return out


def test_cluster_up_serves_dashboards_runs_a_backfill_and_comes_down(tmp_path, flow_file):
    home = tmp_path / "home"
    env = clean_env(DISTETL_HOME=str(home), PREFECT_HOME=str(tmp_path / "prefect-client"))
    ports = [free_port() for _ in range(3)]
    up_args = ("cluster", "up", "--workers", "2", "--scheduler-port", str(ports[0]),
               "--dashboard-port", str(ports[1]), "--prefect-port", str(ports[2]))
    state_file = home / "cluster" / "state.json"
    try:
        up = cli(*up_args, env=env, timeout=240)
        assert up.returncode == 0, up.stderr[-3000:]
        printed = _printed(up.stdout)
        assert printed["scheduler"] == f"tcp://127.0.0.1:{ports[0]}"
        assert printed["dashboard"] == f"http://127.0.0.1:{ports[1]}/status"
        assert printed["prefect UI"] == f"http://127.0.0.1:{ports[2]}"
        assert f"export DISTETL_SCHEDULER={printed['scheduler']}" in up.stdout
        pids = json.loads(state_file.read_text())["pids"]
        assert set(pids) == {"prefect", "scheduler", "workers"}

        # Both dashboards serve pages.
        status, page = _get(printed["dashboard"])
        assert status == 200 and "Dask" in page and "bokeh" in page.lower()
        status, page = _get(printed["prefect UI"])
        assert status == 200 and "<html" in page.lower()
        assert _get(printed["prefect API"] + "/health")[0] == 200

        # A second `up` refuses; `status` sees everything answering.
        again = cli(*up_args, env=env)
        assert again.returncode == 2 and "distetl cluster down" in again.stderr
        status_run = cli("cluster", "status", env=env)
        assert status_run.returncode == 0, status_run.stdout + status_run.stderr
        assert "scheduler with 2 worker(s); Prefect API yes" in status_run.stdout

        # A backfill through the printed addresses runs on the cluster and is recorded
        # in the cluster's Prefect API.
        flow = flow_file(logged_flow_source(tmp_path / "exec.log", n_days=6, sleep=0.0))
        run_env = dict(env, DISTETL_SCHEDULER=printed["scheduler"], PREFECT_API_URL=printed["prefect API"])
        run = cli("run", str(flow), "--output", str(tmp_path / "out"), "--json", env=run_env)
        assert run.returncode == 0, run.stderr[-3000:]
        report = json.loads(run.stdout)
        assert report["summary"]["written"] == 6 and report["prefect_api"] == printed["prefect API"]
        assert report["runner"] == f"remote Dask scheduler {printed['scheduler']}"
        ids = {r["task_run_id"] for r in report["results"]}
        assert set(task_run_states(printed["prefect API"], ids).values()) == {"COMPLETED"}

        down = cli("cluster", "down", env=env)
        assert down.returncode == 0, down.stderr
        procs = [psutil.Process(pid) for pid in pids.values() if psutil.pid_exists(pid)]
        _, alive = psutil.wait_procs(procs, timeout=30)
        assert all(p.status() == psutil.STATUS_ZOMBIE for p in alive), alive
        assert not state_file.exists()
        assert cli("cluster", "status", env=env).returncode == 1
        assert cli("cluster", "down", env=env).returncode == 0  # nothing to stop is fine
    finally:
        _kill_recorded(state_file)


def _kill_recorded(state_file: Path) -> None:
    """Whatever failed above: no process of this cluster survives the test."""
    if not state_file.exists():
        return
    for pid in json.loads(state_file.read_text()).get("pids", {}).values():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
