"""Shared fixtures: one real Prefect API server for the session, a private Prefect home,
and helpers to build small pipelines in flow files.

Under pytest-xdist (``pytest tests -n auto``) every worker process imports this file
itself, so each worker has its own temporary home (``DISTETL_HOME``, ``PREFECT_HOME``),
its own session-scoped Prefect server on a free port, and its own ``tmp_path`` tree:
tests never share a database, a port or a fixed path between workers.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Before anything imports prefect: a private home and no telemetry.
# One home per process: pytest's own, or each xdist worker's (``gw0``, ``gw1``…).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
_HOME = Path(tempfile.mkdtemp(prefix=f"distetl-tests-{_WORKER}-"))
os.environ["PREFECT_HOME"] = str(_HOME / "prefect-client")
os.environ["DISTETL_HOME"] = str(_HOME / "distetl")
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("DISTETL_SCHEDULER", None)
# A run without PREFECT_API_URL starts its own server and stops it with the run (the
# kept server, the default, would outlive each test; tests of it set this themselves).
os.environ["DISTETL_KEEP_SERVER"] = "0"

import pytest  # noqa: E402

from distetl.engine.prefect_api import EmbeddedServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect API server (subprocess on 127.0.0.1, a free port) shared by the
    session: by the whole run without xdist, by one worker process under xdist."""
    server = EmbeddedServer(_HOME / "server")
    try:
        url = server.start()
    except Exception:  # noqa: BLE001 - another worker took the free port first: once more on a new one
        server = EmbeddedServer(_HOME / "server-retry")
        url = server.start()
    os.environ["PREFECT_API_URL"] = url
    _SERVER_HOMES.append(server.home)
    yield url
    os.environ.pop("PREFECT_API_URL", None)
    server.stop()


_SERVER_HOMES: list[Path] = []


@pytest.fixture
def migrated_home(tmp_path, prefect_server) -> Path:
    """A fresh ``DISTETL_HOME`` whose Prefect database is already made: a copy (SQLite's
    backup) of the session server's, so that a server started there skips Prefect's
    migrations (~8 s on 2 cores). For tests of what a home's own server does, not of
    creating its database."""
    import sqlite3

    home = tmp_path / "home"
    (home / "prefect").mkdir(parents=True)
    source = sqlite3.connect(_SERVER_HOMES[-1] / "prefect.db")
    target = sqlite3.connect(home / "prefect" / "prefect.db")
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    return home


@pytest.fixture
def prefect_api(prefect_server, monkeypatch):
    """Point this test's runs at the session's Prefect API: subprocesses through the
    environment, this process's Prefect clients through a settings context (Prefect reads
    the environment once, when first imported, which may have been before this test)."""
    from distetl.engine.prefect_api import override_settings

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    with override_settings(api={"url": prefect_server}):
        yield prefect_server


@pytest.fixture
def flow_file(tmp_path):
    """Write a flow file in a temporary folder (outside any package) and return its path."""

    def write(source: str, name: str = "tmpflow.py") -> Path:
        path = tmp_path / "flows" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
        return path

    return write


def last_run(out: Path, pipeline: str) -> tuple[dict, list[dict]]:
    """The newest run's JSON manifest under ``out`` (through ``latest.json``, a pointer)
    and its per-chunk records (from the run's ``.chunks.parquet``)."""
    import json

    from distetl.state.manifest import read_chunks
    from distetl.storage import Storage

    latest = json.loads((Path(out) / "_distetl" / pipeline / "latest.json").read_text())
    manifest = json.loads(Path(latest["manifest"]).read_text())
    return manifest, read_chunks(Storage.for_url(str(out)), latest["chunks"])


def cli(*args: str, env: dict | None = None, timeout: float = 300):
    """Run the distetl command in a subprocess; returns CompletedProcess."""
    import subprocess

    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "distetl.cli", *args], capture_output=True, text=True,
        env=full_env, timeout=timeout, cwd=str(REPO),
    )


def pytest_sessionfinish(session, exitstatus):
    """A safety net: stop the warm run processes and kept Prefect servers this session's
    runs left (tests stop theirs; one a failed test left would idle for minutes)."""
    import signal

    marker = str(_HOME).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue
        if (b"distetl.warm" in cmdline or b"--keep" in cmdline) and marker in environ:
            try:
                os.kill(int(entry), signal.SIGTERM)
            except ProcessLookupError:
                pass
