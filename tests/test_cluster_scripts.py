"""The multi-host recipe of cluster/README.md, run on one host: cluster/make-tls-certs.sh,
cluster/scheduler.sh and cluster/worker.sh with TLS, and a driver that reaches the
scheduler through Dask's standard security configuration (environment variables)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from distetl.errors import ClusterError
from distetl.engine.runners import RunnerSpec

from cluster_helpers import clean_env, free_port, logged_flow_source, wait_until
from conftest import REPO, cli

SCRIPTS = REPO / "cluster"


@pytest.fixture
def script_env():
    """The scripts find `dask` and `prefect` on PATH, as on a host with distetl installed."""
    env = clean_env()
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def _start(args: list[str], env: dict, log) -> subprocess.Popen:
    return subprocess.Popen(["bash", *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="make-tls-certs.sh needs openssl")
def test_tls_cluster_from_the_scripts_runs_a_backfill(tmp_path, flow_file, script_env, prefect_api):
    certs = tmp_path / "certs"
    made = subprocess.run(["bash", str(SCRIPTS / "make-tls-certs.sh"), str(certs), "127.0.0.1"],
                          capture_output=True, text=True, env=script_env, timeout=120)
    assert made.returncode == 0, made.stderr
    port, dashboard = free_port(), free_port()
    address = f"tls://127.0.0.1:{port}"
    tls = lambda role: ["--tls-ca-file", str(certs / "ca.pem"), "--tls-cert", str(certs / f"{role}.pem"),  # noqa: E731
                        "--tls-key", str(certs / f"{role}-key.pem")]
    procs: list[subprocess.Popen] = []
    with open(tmp_path / "cluster.log", "wb") as log:
        try:
            procs.append(_start([str(SCRIPTS / "scheduler.sh"), "127.0.0.1", str(port), str(dashboard), "--",
                                 "--protocol", "tls", *tls("scheduler")], script_env, log))
            procs.append(_start([str(SCRIPTS / "worker.sh"), address, "2", "--", *tls("worker"),
                                 "--host", "127.0.0.1", "--local-directory", str(tmp_path / "space")],
                                script_env, log))

            # Without the client's TLS configuration: a fast error that says what to set.
            wait_until(lambda: _listening(port), 60, "the TLS scheduler")
            spec = RunnerSpec.from_options(None, None, address, 5.0)
            with pytest.raises(ClusterError) as caught:
                spec.check()
            assert address in str(caught.value) and "DASK_DISTRIBUTED__COMM__TLS__CA_FILE" in str(caught.value)

            # With it (Dask's standard environment variables), a run goes through.
            flow = flow_file(logged_flow_source(tmp_path / "exec.log", n_days=4, sleep=0.0))
            env = dict(os.environ,
                       DISTETL_SCHEDULER=address,
                       DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION="True",
                       DASK_DISTRIBUTED__COMM__TLS__CA_FILE=str(certs / "ca.pem"),
                       DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=str(certs / "client.pem"),
                       DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=str(certs / "client-key.pem"))
            run = cli("run", str(flow), "--output", str(tmp_path / "out"), "--json", "--connect-timeout", "30",
                      env=env)
            assert run.returncode == 0, run.stderr[-3000:] + (tmp_path / "cluster.log").read_text()[-3000:]
            report = json.loads(run.stdout)
            assert report["summary"]["written"] == 4
            assert {r["worker"].split("://")[0] for r in report["results"]} == {"tls"}
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def _listening(port: int) -> bool:
    import socket

    with contextlib.closing(socket.socket()) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
