"""Alerts: --notify URL, --notify-on, --on-failure COMMAND, against a real HTTP server
on 127.0.0.1 and real `distetl run` subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from distetl.ops.alerts import alert_payload, send_alerts, status_of
from distetl.engine.execute import BLOCKED, FAILED, WRITTEN, ChunkResult
from distetl.state.manifest import RunReport

from cluster_helpers import wait_until
from conftest import REPO, cli, last_run

SECRET = "SEKRET-d1stetl-9f3a"

FLOW = """
import os, time
import pandas as pd
from distetl import IdRange, Pipeline

def _listed(name):
    return [int(x) for x in os.environ.get(name, "").split(",") if x]

def extract(chunk):
    if chunk["start"] in _listed("BAD"):
        raise ValueError(f"source of {chunk.key} is corrupt (" + os.environ.get("LEAK", "") + ")")
    if chunk["start"] in _listed("HANG"):
        open(os.environ["HANG_MARKER"], "w").close()
        time.sleep(600)
    return pd.DataFrame({"id": range(chunk["start"], chunk["stop"])})

pipeline = Pipeline(name="alerting", plan=IdRange(start=0, stop=6, size=1), extract=extract,
                    target="{output}/alerting/part-{first}.parquet")
"""


class Hook:
    """A webhook endpoint on 127.0.0.1 that records every POST and answers ``status``."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.status = 200
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hook.posts.append({"path": self.path, "type": self.headers.get("Content-Type"),
                                   "raw": body.decode(), "json": json.loads(body)})
                self.send_response(hook.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/tokenpart"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    endpoint = Hook()
    yield endpoint
    endpoint.close()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone"


def _run(flow: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return cli("run", str(flow), "--output", str(out), "--runner", "sequential", "--no-progress", *extra, env=env)


def test_a_failed_run_posts_once_and_runs_the_command_without_any_secret(tmp_path, flow_file, hook, prefect_api):
    flow = flow_file(FLOW)
    out = tmp_path / "out"
    got = tmp_path / "stdin.json"
    command = f"{sys.executable} -c \"import sys; open(r'{got}', 'w').write(sys.stdin.read())\""
    proc = cli("run", str(flow), "--output", str(out), "--workers", "2", "--no-progress",
               "--notify", hook.url, "--on-failure", command, "--storage-option", f"secret={SECRET}",
               env={"BAD": "1,4", "LEAK": SECRET, "AWS_SECRET_ACCESS_KEY": "AKIAENVSECRETVALUE"})
    assert proc.returncode == 1, proc.stderr
    assert len(hook.posts) == 1, hook.posts
    post = hook.posts[0]
    assert post["path"] == "/hooks/T000/B000/tokenpart" and post["type"].startswith("application/json")
    body = post["json"]
    manifest, _ = last_run(out, "alerting")
    assert body["status"] == "failed" and body["exit_code"] == 1
    assert body["pipeline"] == "alerting" and body["run_id"] == manifest["run_id"]
    assert body["counts"] == {"total": 6, "written": 4, "skipped": 0, "failed": 2, "blocked": 0, "not_run": 0,
                              "rows": 4}
    assert sorted(c["key"] for c in body["failed_chunks"]) == ["ids=1-1", "ids=4-4"]  # in the order they failed
    assert all("is corrupt" in c["error"] and "ValueError" in c["error"] for c in body["failed_chunks"])
    assert body["failed_chunks_not_listed"] == 0 and body["blocked_chunks"] == 0
    assert Path(body["manifest"]).parent == out / "_distetl" / "alerting" / "runs"
    assert json.loads(Path(body["manifest"]).read_text())["run_id"] == body["run_id"]
    flow_run = manifest["flow_run_id"]
    assert body["prefect"]["flow_run_id"] == flow_run and body["prefect"]["state"] == "FAILED"
    assert body["prefect"]["flow_run_url"] == prefect_api[: -len("/api")] + f"/runs/flow-run/{flow_run}"
    assert body["stages"][0]["failed"] == 2 and "2 of 6 chunk(s) failed" in body["text"]
    assert "storage_options" not in body

    # The command got the same JSON on stdin.
    assert json.loads(got.read_text()) == body
    # No credential in a payload: not the storage option (though the chunk's own error
    # quoted it), not the AWS variable; the webhook's path (its token) is not printed.
    for text in (post["raw"], got.read_text()):
        assert SECRET not in text and "AKIAENVSECRETVALUE" not in text
    assert "***" in body["failed_chunks"][0]["error"]
    assert "tokenpart" not in proc.stderr
    assert "alert sent: POST http://127.0.0.1:" in proc.stderr and "alert sent: ran" in proc.stderr


def test_a_clean_run_posts_nothing_unless_notify_on_always(tmp_path, flow_file, hook, prefect_api):
    flow = flow_file(FLOW)
    out = tmp_path / "out"
    marker = tmp_path / "ran"
    command = f"{sys.executable} -c \"open(r'{marker}', 'w').close()\""
    first = _run(flow, out, "--notify", hook.url, "--on-failure", command)
    assert first.returncode == 0, first.stderr
    assert hook.posts == [] and not marker.exists()

    again = _run(flow, out, "--notify", hook.url, "--notify-on", "always", "--on-failure", command)
    assert again.returncode == 0, again.stderr
    assert len(hook.posts) == 1 and not marker.exists(), "commands are for failures only"
    body = hook.posts[0]["json"]
    assert body["status"] == "ok" and body["exit_code"] == 0
    assert body["counts"]["skipped"] == 6 and body["failed_chunks"] == []
    assert body["prefect"]["flow_run_id"] is None, "nothing ran: no flow run"

    dry = _run(flow, out, "--notify", hook.url, "--notify-on", "always", "--dry-run")
    assert dry.returncode == 0 and len(hook.posts) == 1, "a dry run sends nothing"


def test_an_alert_that_cannot_be_delivered_never_changes_the_exit_code(tmp_path, flow_file, hook, prefect_api):
    flow = flow_file(FLOW)
    out = tmp_path / "out"
    hook.status = 500
    failing = _run(flow, out, "--notify", hook.url, "--notify", _closed_port_url(),
                   "--on-failure", "no-such-program-distetl --x", env={"BAD": "2"})
    assert failing.returncode == 1, failing.stderr
    assert len(hook.posts) == 2, "a 500 is retried once"
    assert "alert to http://127.0.0.1:" in failing.stderr and "HTTP 500" in failing.stderr
    assert "ConnectionRefusedError" in failing.stderr
    assert "alert command no-such-program-distetl failed" in failing.stderr
    assert "Traceback" not in failing.stderr and "tokenpart" not in failing.stderr

    clean = _run(flow, out, "--notify", _closed_port_url(), "--notify-on", "always",
                 "--on-failure", f"{sys.executable} -c \"raise SystemExit(3)\"")
    assert clean.returncode == 0, clean.stderr
    assert "failed" in clean.stderr and "exit code is unchanged" in clean.stderr


@pytest.mark.parametrize("url", ["ftp://example.com/x", "hooks.example.com/x", "http://", "http://h:99999/"])
def test_a_bad_notify_url_is_a_usage_error(url, tmp_path, flow_file):
    proc = cli("run", str(flow_file(FLOW)), "--output", str(tmp_path / "out"), "--notify", url)
    assert proc.returncode == 2
    assert "--notify" in proc.stderr and "http:// or https://" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_stopped_run_alerts_too(tmp_path, flow_file, hook, prefect_api):
    flow = flow_file(FLOW)
    out = tmp_path / "out"
    marker = tmp_path / "hanging"
    proc = subprocess.Popen(
        [sys.executable, "-m", "distetl.cli", "run", str(flow), "--output", str(out), "--runner", "sequential",
         "--no-progress", "--notify", hook.url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO), start_new_session=True,
        env={**os.environ, "HANG": "3", "HANG_MARKER": str(marker)},
    )
    try:
        wait_until(lambda: marker.exists() or proc.poll() is not None, 120, "the hanging chunk to start")
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr
    assert len(hook.posts) == 1, stderr
    body = hook.posts[0]["json"]
    assert body["status"] == "stopped" and body["interrupted"] == "SIGTERM" and body["exit_code"] == 143
    assert body["counts"]["written"] == 3 and body["counts"]["not_run"] == 3
    assert body["prefect"]["state"] == "CANCELLED", body["prefect"]


def _report(failed: int, **extra) -> RunReport:
    report = RunReport(pipeline="p", output="s3://bucket/out", runner="local", run_id="ab" * 16,
                       started_at="2024-03-01T00:00:00Z", total=failed + 3, to_run=failed + 3,
                       storage_options={"key": "AKIAOPTIONKEY", "secret": SECRET,
                                        "endpoint_url": "http://minio:9000"}, **extra)
    report.results = [ChunkResult(key=f"k={i}", path=f"/o/{i}", status=FAILED,
                                  error=f"boom {SECRET} at http://user:pw@minio:9000/b " + "x" * 2000)
                      for i in range(failed)]
    report.results += [ChunkResult(key="w", path="/o/w", status=WRITTEN, rows=5),
                       ChunkResult(key="b1", path="/o/b1", status=BLOCKED, error="blocked"),
                       ChunkResult(key="b2", path="/o/b2", status=BLOCKED, error="blocked")]
    return report


def test_payload_caps_failed_chunks_truncates_errors_and_scrubs_credentials():
    body = alert_payload(_report(60))
    assert len(body["failed_chunks"]) == 50 and body["failed_chunks_not_listed"] == 10
    assert body["counts"]["failed"] == 60 and body["counts"]["blocked"] == 2 and body["blocked_chunks"] == 2
    assert all(len(c["error"]) <= 500 for c in body["failed_chunks"])
    raw = json.dumps(body)
    assert SECRET not in raw and "AKIAOPTIONKEY" not in raw and "user:pw" not in raw and "minio:9000" in raw
    assert "storage_options" not in body
    assert body["status"] == "failed" and body["exit_code"] == 1
    json.dumps(body)  # plain JSON


def test_status_and_when():
    stopped = _report(0, interrupted="SIGINT")
    assert status_of(stopped) == "stopped" and alert_payload(stopped)["exit_code"] == 130
    clean = _report(0)
    clean.results = [r for r in clean.results if r.status == WRITTEN]
    assert status_of(clean) == "ok"
    assert send_alerts(clean, [_closed_port_url()], ["false"], when="failure") == []   # nothing fires


def test_the_prefect_native_route_an_automation_on_failed_flow_runs_fires(tmp_path, flow_file, hook, monkeypatch):
    """The README's Prefect-native route: a notification block and an automation on
    `prefect.flow-run.Failed`, on a server running every service (as `distetl cluster
    up`'s does), fire for a distetl run with a failed chunk."""
    import time

    from prefect.automations import Automation, EventTrigger, SendNotification
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from distetl.engine.prefect_api import EmbeddedServer

    server = EmbeddedServer(tmp_path / "prefect", all_services=True)
    url = server.start()
    monkeypatch.setenv("PREFECT_API_URL", url)
    try:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: url}):
            block_id = CustomWebhookNotificationBlock(name="hook", url=hook.url,
                                                      json_data={"text": "{{subject}}: {{body}}"}
                                                      ).save("distetl-failures", overwrite=True)
            Automation(
                name="distetl run failed",
                trigger=EventTrigger(expect={"prefect.flow-run.Failed"},
                                     match={"prefect.resource.id": "prefect.flow-run.*"}),
                actions=[SendNotification(block_document_id=block_id, subject="{{ flow.name }} failed",
                                          body="{{ flow_run.name }}: {{ flow_run.state.message }}")],
            ).create()
        proc = _run(flow_file(FLOW), tmp_path / "out", env={"BAD": "2", "PREFECT_API_URL": url})
        assert proc.returncode == 1, proc.stderr
        wait_until(lambda: hook.posts, 60, "the automation's notification")
    finally:
        server.stop()
    assert hook.posts[0]["json"]["text"] == "alerting failed: alerting · 6 chunks: 1 of 6 chunk(s) failed: ids=2-2"
