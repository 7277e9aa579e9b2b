"""The kept Prefect server: a run without ``PREFECT_API_URL`` launches one server per
``DISTETL_HOME`` that later runs report to, and that stops once no run has used it for
``DISTETL_KEEP_SERVER`` seconds (600 by default; the test session sets 0, so each test
here sets it). Real runs, a real server, its records read back from its API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from distetl import handoff
from distetl.engine import prefect_api
from distetl.engine.servers import client, kept_server, live_clients, retire_kept

from cluster_helpers import free_port
from conftest import REPO, cli, last_run
from test_run_start_and_exit import _servers_on

FLOW = """
import pandas as pd
from distetl import IdRange, Pipeline

pipeline = Pipeline(name="kept", plan=IdRange(start=0, stop=2, size=1),
                    extract=lambda chunk: pd.DataFrame({"id": range(chunk["start"], chunk["stop"])}),
                    target="{output}/kept/part-{first}.parquet")
"""


def _flow_run_state(api: str, flow_run_id: str) -> str:
    with urllib.request.urlopen(f"{api}/flow_runs/{flow_run_id}", timeout=10) as resp:
        return json.loads(resp.read())["state"]["type"]


def _wait_gone(pid: int, seconds: float) -> float:
    """Seconds until process ``pid`` is gone (or a zombie); fails after ``seconds``."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                if handle.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    return time.monotonic() - start
        except OSError:
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"Expected process {pid} to stop within {seconds} s; got it still running")


def test_later_runs_report_to_the_kept_server_and_ui_takes_it_over(tmp_path, flow_file, monkeypatch, migrated_home):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    home = migrated_home
    database = (home / "prefect").resolve()
    env = {"DISTETL_HOME": str(home), "DISTETL_KEEP_SERVER": ""}  # empty: the default, 600 s
    flow = flow_file(FLOW)
    try:
        first = cli("run", str(flow), "--output", str(tmp_path / "a"), "--workers", "1", "--no-progress", env=env)
        assert first.returncode == 0, first.stderr
        assert "kept for later runs until 10 min without one" in " ".join(first.stderr.split()), first.stderr
        record = kept_server(database)
        assert record is not None and record["idle_s"] == prefect_api.DEFAULT_KEEP_S
        assert _servers_on(database) == [record["pid"]], "one server on the database, kept after the run"
        assert live_clients(database) == [], "the finished run no longer uses it"

        second = cli("run", str(flow), "--output", str(tmp_path / "b"), "--workers", "1", "--no-progress", env=env)
        assert second.returncode == 0, second.stderr
        assert _servers_on(database) == [record["pid"]], "the second run started no server of its own"
        for out in ("a", "b"):
            manifest, records = last_run(tmp_path / out, "kept")
            assert sorted(r["status"] for r in records) == ["written", "written"]
            assert manifest["prefect_api"] == record["url"]
            assert _flow_run_state(record["url"], manifest["flow_run_id"]) == "COMPLETED"

        # While a process uses it, `distetl ui` refuses (one server per SQLite database) ...
        with client(database):
            refused = cli("ui", "--port", str(free_port()), env=env, timeout=60)
        assert refused.returncode == 2, refused.stderr
        assert "kept server for runs, in use by a running `distetl run`" in " ".join(refused.stderr.split())
        assert "Fix:" in refused.stderr
        assert _servers_on(database) == [record["pid"]]

        # ... and once idle, `distetl ui` stops it and serves the same database with the UI.
        port = free_port()
        ui = subprocess.Popen([sys.executable, "-m", "distetl.cli", "ui", "--port", str(port)], cwd=str(REPO),
                              env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert ui.stdout is not None
            line = ui.stdout.readline()
            assert line.strip() == f"prefect UI:  http://127.0.0.1:{port}", (line, ui.poll())
            assert kept_server(database) is None
            ui_api = f"http://127.0.0.1:{port}/api"
            manifest, _ = last_run(tmp_path / "b", "kept")
            assert _flow_run_state(ui_api, manifest["flow_run_id"]) == "COMPLETED"
            assert record["pid"] not in _servers_on(database)
        finally:
            ui.terminate()
            ui.communicate(timeout=60)
        assert _servers_on(database) == []
    finally:
        handoff.stop_warm(home)  # the first run left a warm run process too (the default)
        retire_kept(database)


def test_it_stops_after_its_idle_time_and_never_while_used(tmp_path, monkeypatch, migrated_home):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("DISTETL_KEEP_SERVER", "2")
    home = migrated_home
    database = home / "prefect"
    try:
        with prefect_api.prefect_api(home) as url:
            record = kept_server(database)
            assert record is not None and record["url"] == url and record["idle_s"] == 2.0
            time.sleep(3.0)  # past its idle time, but this process uses it
            assert prefect_api.api_healthy(url), "a kept server in use does not stop"
            assert live_clients(database) == [os.getpid()]
        assert live_clients(database) == []
        left = time.monotonic()
        took = _wait_gone(record["pid"], 30)
        assert took >= 1.5, f"stopped {took:.1f} s after its last use; its idle time is 2 s"
        assert time.monotonic() - left < 20
        assert kept_server(database) is None and not prefect_api.api_healthy(url)
    finally:
        retire_kept(database)


def test_runs_starting_at_once_share_one_kept_server(tmp_path, flow_file, monkeypatch, migrated_home):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    home = migrated_home
    database = (home / "prefect").resolve()
    env = {**os.environ, "DISTETL_HOME": str(home), "DISTETL_KEEP_SERVER": "30"}
    flow = flow_file(FLOW)
    try:
        runs = [subprocess.Popen([sys.executable, "-m", "distetl.cli", "run", str(flow), "--output",
                                  str(tmp_path / f"out{i}"), "--workers", "1", "--no-progress"], cwd=str(REPO), env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        for run in runs:
            _, err = run.communicate(timeout=300)
            assert run.returncode == 0, err
        record = kept_server(database)
        assert record is not None and _servers_on(database) == [record["pid"]]
        apis = {last_run(tmp_path / f"out{i}", "kept")[0]["prefect_api"] for i in range(2)}
        assert apis == {record["url"]}
    finally:
        handoff.stop_warm(home)
        assert retire_kept(database)
    assert _servers_on(database) == []


def test_a_bad_keep_setting_is_refused_before_anything_starts(tmp_path, flow_file, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    home = tmp_path / "home"
    proc = cli("run", str(flow_file(FLOW)), "--output", str(tmp_path / "out"), "--no-progress",
               env={"DISTETL_HOME": str(home), "DISTETL_KEEP_SERVER": "ten minutes"})
    assert proc.returncode == 2, proc.stderr
    text = " ".join(proc.stderr.split())
    assert "DISTETL_KEEP_SERVER as seconds" in text and "'ten minutes'" in text and "Fix:" in text, text
    assert not (tmp_path / "out").exists() and not Path(home / "prefect" / "prefect.db").exists()
