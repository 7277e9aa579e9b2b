"""Watching a run: the Dask dashboard and the Prefect flow run's page are printed, and
--performance-report writes Dask's performance report."""

from __future__ import annotations

import json

from distetl.engine.watch import flow_run_url, ui_base

from conftest import cli, last_run

FLOW = """
import pandas as pd
from distetl import IdRange, Pipeline

pipeline = Pipeline(name="watched", plan=IdRange(start=0, stop=4, size=1),
                    extract=lambda chunk: pd.DataFrame({"id": range(chunk["start"], chunk["stop"])}),
                    target="{output}/watched/part-{first}.parquet")
"""


def test_a_local_run_prints_its_dashboard_and_flow_run_and_writes_a_performance_report(tmp_path, flow_file,
                                                                                    prefect_api):
    flow = flow_file(FLOW)
    out = tmp_path / "out"
    html = tmp_path / "perf.html"
    proc = cli("run", str(flow), "--output", str(out), "--workers", "2", "--no-progress",
               "--performance-report", str(html))
    assert proc.returncode == 0, proc.stderr
    assert "dashboard: http://127.0.0.1:" in proc.stderr
    manifest, _ = last_run(out, "watched")
    url = prefect_api[: -len("/api")] + f"/runs/flow-run/{manifest['flow_run_id']}"
    assert f"flow run:  {url}" in proc.stderr, "printed as soon as the flow run exists"
    assert f"flow run: {url}" in proc.stderr, "and at the end"
    assert proc.stderr.index("dashboard:") < proc.stderr.index("output:")
    assert manifest["flow_run_url"] == url and manifest["dashboard_url"].startswith("http://127.0.0.1:")
    assert html.exists() and "Dask Performance Report" in html.read_text()
    assert f"performance report: {html}" in proc.stderr


def test_performance_report_needs_a_dask_runner_and_an_existing_folder(tmp_path, flow_file):
    flow = flow_file(FLOW)
    out = tmp_path / "out"
    seq = cli("run", str(flow), "--output", str(out), "--runner", "sequential", "--performance-report",
              str(tmp_path / "p.html"))
    assert seq.returncode == 2 and "--performance-report" in seq.stderr and "sequential" in seq.stderr
    nowhere = cli("run", str(flow), "--output", str(out), "--performance-report", str(tmp_path / "no" / "p.html"))
    assert nowhere.returncode == 2 and "Fix:" in nowhere.stderr
    assert not out.exists()


def test_flow_run_url(monkeypatch):
    monkeypatch.delenv("PREFECT_UI_URL", raising=False)
    assert ui_base("http://127.0.0.1:4200/api") == "http://127.0.0.1:4200"
    assert flow_run_url("http://h:4200/api/", "abc") == "http://h:4200/runs/flow-run/abc"
    assert flow_run_url("http://user:pw@h:4200/api", "abc") == "http://***@h:4200/runs/flow-run/abc"
    assert flow_run_url("http://h:4200/api", None) is None and flow_run_url(None, "abc") is None
    monkeypatch.setenv("PREFECT_UI_URL", "https://prefect.example.com/")
    assert flow_run_url("http://h:4200/api", "abc") == "https://prefect.example.com/runs/flow-run/abc"


def test_a_run_on_its_own_prefect_api_ends_pointing_at_distetl_ui(tmp_path, flow_file, monkeypatch):
    """The run's own embedded API stops with the run, so its flow run page is dead when the
    run ends: the last line names ``distetl ui`` and the page on its port instead."""
    monkeypatch.delenv("PREFECT_UI_URL", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # the session's shared server may have set it
    flow = flow_file(FLOW)
    out = tmp_path / "out"
    proc = cli("run", str(flow), "--output", str(out), "--workers", "1", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    manifest, _ = last_run(out, "watched")
    last = proc.stderr.strip().splitlines()[-1]
    assert last == ("in the UI: run `distetl ui` here (same DISTETL_HOME), then open "
                    f"http://127.0.0.1:4200/runs/flow-run/{manifest['flow_run_id']}"), proc.stderr
    assert "\nflow run: http" not in proc.stderr, "no dead link at the end"
