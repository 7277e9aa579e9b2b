"""A chunk's own log lines: what its code logs (``logging``) and warns on a worker comes
back with its result (the last 50 lines / 20 KB), goes to Prefect as logs of its batch's
task run (read back from a real Prefect API), and ``distetl logs FLOW KEY`` prints a
chunk's error and lines from the run records."""

from __future__ import annotations

import json

import httpx

import distetl
from distetl.engine.loader import load_pipeline

from conftest import cli

FLOW = '''
import logging
import warnings
import pandas as pd
from distetl import ChunkList, Pipeline

log = logging.getLogger("mine")

def extract(chunk):
    n = chunk["n"]
    log.info("chunk n=%d rows=%d", n, 10)
    if n == 2:
        warnings.warn("odd day n=2")
    if n == 3:
        for i in range(500):
            log.info("noisy line %d", i)
    if n == 4:
        log.warning("about to fail on n=4")
        raise ValueError("bad day n=4")
    return pd.DataFrame({"n": [n] * 10})

pipeline = Pipeline(name="chatty", plan=ChunkList(list(range(6)), key_field="n"), extract=extract,
                    target="{output}/chatty/n={n}/part-0.parquet")
'''


def _logs_of(api: str, task_run_id: str) -> list[str]:
    body = {"logs": {"task_run_id": {"any_": [task_run_id]}}, "limit": 200, "offset": 0, "sort": "TIMESTAMP_ASC"}
    return [entry["message"] for entry in httpx.post(f"{api}/logs/filter", json=body).raise_for_status().json()]


def test_a_chunks_log_lines_reach_its_result_prefect_and_distetl_logs(tmp_path, flow_file, prefect_api):
    path = flow_file(FLOW, "chattyflow.py")
    out = tmp_path / "out"
    report = distetl.run(load_pipeline(str(path)), str(out), workers=2, chunks_per_task=2, progress=False)
    results = {r.key: r for r in report.results}
    assert [k for k, r in results.items() if r.status == "failed"] == ["n=4"]
    assert "INFO mine: chunk n=0 rows=10" in results["n=0"].log
    assert "odd day n=2" in results["n=2"].log and "UserWarning" in results["n=2"].log
    noisy = results["n=3"].log.splitlines()
    assert noisy[0] == "[451 earlier line(s) dropped; the last 50 kept]" and len(noisy) == 51
    assert noisy[-1].endswith("mine: noisy line 499")
    assert "WARNING mine: about to fail on n=4" in results["n=4"].log

    # In Prefect: the failed chunk's error and lines under its batch's task run.
    lines = _logs_of(report.prefect_api, results["n=4"].task_run_id)
    assert any(m.startswith("chunk n=4 failed: ValueError: bad day n=4") for m in lines), lines
    assert any(m.startswith("n=4 | ") and "about to fail on n=4" in m for m in lines), lines
    assert any(m.startswith("n=0 | ") for m in _logs_of(report.prefect_api, results["n=0"].task_run_id))

    shown = cli("logs", str(path), "n=4", "--output", str(out))
    assert shown.returncode == 0, shown.stderr
    assert "error: ValueError: bad day n=4" in shown.stderr and "about to fail on n=4" in shown.stderr
    as_json = json.loads(cli("logs", str(path), "n=3", "--output", str(out), "--json").stdout)
    assert as_json["status"] == "written" and as_json["log"].startswith("[451 earlier line(s) dropped")

    unknown = cli("logs", str(path), "n=99", "--output", str(out))
    assert unknown.returncode == 2 and "Expected chunk 'n=99'" in unknown.stderr and "Fix:" in unknown.stderr
    never = cli("logs", str(path), "n=1", "--output", str(tmp_path / "elsewhere"))
    assert never.returncode == 2 and "run records of pipeline 'chatty'" in never.stderr
