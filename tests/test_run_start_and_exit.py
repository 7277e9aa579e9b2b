"""A run's fixed cost: ``distetl run`` launches its Prefect server as the command starts
(the run then waits for that one server) and leaves with ``os._exit`` after its exit
handlers; neither may lose output, change an exit code or leave a server behind."""

from __future__ import annotations

import os
from pathlib import Path

from distetl.engine import prefect_api
from distetl.engine.servers import registered

from conftest import cli, last_run

FLOW = """
import pandas as pd
from distetl import IdRange, Pipeline

pipeline = Pipeline(name="early", plan=IdRange(start=0, stop=3, size=1),
                    extract=lambda chunk: pd.DataFrame({"id": range(chunk["start"], chunk["stop"])}),
                    target="{output}/early/part-{first}.parquet")
"""


def _servers_on(database: Path) -> list[int]:
    """Pids of live processes whose PREFECT_HOME is ``database`` (Prefect servers on it)."""
    wanted = f"PREFECT_HOME={database}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as handle:
                zombie = handle.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except OSError:
            continue
        if wanted in environ and not zombie:
            pids.append(int(entry))
    return pids


def test_runs_with_their_own_server_leave_none_behind_and_lose_no_output(tmp_path, flow_file, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # the session's shared server may have set it
    home = tmp_path / "home"
    env = {"DISTETL_HOME": str(home)}
    database = (home / "prefect").resolve()
    flow, out = flow_file(FLOW), tmp_path / "out"

    first = cli("run", str(flow), "--output", str(out), "--workers", "1", "--no-progress", env=env)
    assert first.returncode == 0, first.stderr
    manifest, records = last_run(out, "early")
    assert sorted(r["status"] for r in records) == ["written"] * 3
    # The whole report reached the pipe before os._exit: its last line names the flow run.
    assert first.stderr.rstrip().endswith(f"/runs/flow-run/{manifest['flow_run_id']}"), first.stderr[-500:]
    assert _servers_on(database) == [], "the run's server stops with the run"

    # Nothing to run: the server launched as the command started is stopped unused.
    again = cli("run", str(flow), "--output", str(out), "--workers", "1", "--no-progress", env=env)
    assert again.returncode == 0, again.stderr
    assert "nothing to run: all 3 chunks already committed" in again.stderr + again.stdout
    assert _servers_on(database) == [], "an unused early server is stopped before the command exits"

    # Bad input: exit 2, its error printed whole, no server left.
    bad = flow_file(FLOW.replace("part-{first}", "part-{frist}"), name="badflow.py")
    refused = cli("run", str(bad), "--output", str(tmp_path / "out2"), "--no-progress", env=env)
    assert refused.returncode == 2, refused.stderr
    assert "frist" in refused.stderr and "Fix:" in refused.stderr, refused.stderr
    assert _servers_on(database) == []


def test_the_run_takes_the_server_launched_early(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    home = tmp_path / "home"
    assert prefect_api.launch_early(home) is True
    assert prefect_api.launch_early(home) is False, "one early server per database"
    early = prefect_api._EARLY[home / "prefect"]
    try:
        with prefect_api.prefect_api(home) as url:
            assert url == early.url and prefect_api.api_healthy(url)
            assert prefect_api._EARLY == {}, "taken by the run"
        assert early.process is None, "stopped with the run's block"
    finally:
        prefect_api.stop_early()
        early.stop()


def test_no_early_server_where_the_run_would_not_use_it(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert prefect_api.launch_early(home) is False  # the run reports to the given API
    monkeypatch.delenv("PREFECT_API_URL")
    with registered(home / "prefect", "http://127.0.0.1:9/api", "ui"):  # a `distetl ui` on that home
        assert prefect_api.launch_early(home) is False
    assert prefect_api._EARLY == {}
    prefect_api.stop_early()  # nothing to stop
