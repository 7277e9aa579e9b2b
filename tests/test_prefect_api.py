"""The Prefect side of a run: the per-run server's services and the settings a run
leaves behind."""

from __future__ import annotations

import json
import urllib.request

import distetl
from distetl.model.pipeline import Pipeline
from distetl.model.plans import ChunkList


def _settings(api_url: str) -> dict:
    with urllib.request.urlopen(f"{api_url}/admin/settings", timeout=30) as resp:
        return json.load(resp)


def test_per_run_server_keeps_recording_and_drops_scheduling_services(prefect_server):
    services = _settings(prefect_server)["server"]["services"]
    # What a backfill's records need...
    assert services["task_run_recorder"]["enabled"] is True
    assert services["event_persister"]["enabled"] is True
    # ...and what only deployments, work pools and automations need.
    for name in ("scheduler", "late_runs", "foreman", "triggers", "pause_expirations", "repossessor"):
        assert services[name]["enabled"] is False, name


def _frame(chunk):
    import pandas as pd

    return pd.DataFrame({"key": [chunk.key], "n": [chunk.index]})


def test_run_restores_prefect_settings_and_records_a_parameterless_flow_run(tmp_path, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    before = get_current_settings()
    pipeline = Pipeline(name="settings-check", plan=ChunkList(["a", "b", "c"]), extract=_frame,
                        target="{output}/items/part-{item}.parquet")
    report = distetl.run(pipeline, str(tmp_path / "out"), runner="sequential")

    assert not report.failed and report.written == 3
    after = get_current_settings()
    assert after.flows.heartbeat_frequency == before.flows.heartbeat_frequency == 180
    assert after.api.url == before.api.url
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(report.flow_run_id)
    assert flow_run.state is not None and flow_run.state.is_completed()
    assert flow_run.parameters == {}
    assert report.task_runs_recorded == report.task_runs > 0
