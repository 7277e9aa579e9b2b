"""``distetl ui``: Prefect's UI on the embedded database, opened in a real headless browser.

A run without ``PREFECT_API_URL`` records itself in ``$DISTETL_HOME/prefect`` through a
server that stops with the run. ``distetl ui`` then serves that database; Chromium
renders the finished flow run's page, which must show the run's name (the screenshot is
kept under ``tests/artifacts/``). While the UI is up, a run reports to it instead of
starting a server of its own (one server per SQLite database), and a second ``distetl
ui`` on the database refuses.

Chromium comes from the system's packages (``apt-get install -y chromium``; ``.ci/run``
installs it when missing). Without it this test fails, saying how to install it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cluster_helpers import clean_env, free_port
from conftest import REPO

ARTIFACTS = REPO / "tests" / "artifacts"

FLOW = '''
import pandas as pd
from distetl import ChunkList, Pipeline

def extract(chunk):
    return pd.DataFrame({"part": [chunk["part"]], "n": [len(chunk["part"])]})

pipeline = Pipeline(name="ui_tour", plan=ChunkList(["north", "south", "east"], key_field="part"),
                    extract=extract, target="{output}/ui_tour/part={part}/part-0.parquet")
'''


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium is needed to check the UI in a real browser and is not installed: run "
                "`apt-get update && apt-get install -y chromium` (as root; .ci/run does this when "
                "`command -v chromium` finds nothing)", pytrace=False)


def _browse(browser: str, url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1400,900",
         f"--user-data-dir={profile}", "--virtual-time-budget=15000", *extra, url],
        capture_output=True, text=True, timeout=120,
    )


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _cli(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """The distetl command with exactly ``env`` (conftest's ``cli`` adds the test
    process's environment, which may name the session's Prefect API)."""
    return subprocess.run([sys.executable, "-m", "distetl.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=str(REPO))


def _run(flow: Path, out: Path, env: dict, *args: str) -> dict:
    proc = _cli("run", str(flow), "--output", str(out), "--runner", "sequential", "--json", *args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.timeout(400)
def test_ui_shows_a_finished_run_in_a_real_browser(tmp_path, flow_file):
    browser = _chromium()
    home = tmp_path / "home"
    env = clean_env(DISTETL_HOME=str(home))  # no PREFECT_API_URL: the run uses the embedded database
    assert "PREFECT_API_URL" not in env
    flow = flow_file(FLOW)
    report = _run(flow, tmp_path / "out", env)
    assert report["summary"]["written"] == 3 and report["flow_run_id"]
    run_api = report["prefect_api"]
    assert not _answers(f"{run_api}/health"), f"the run's own server stops with the run ({run_api})"
    assert (home / "prefect" / "prefect.db").exists()

    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "distetl.cli", "ui", "--port", str(port)], cwd=str(REPO),
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _answers(f"http://127.0.0.1:{port}/api/health"):
            assert ui.poll() is None, ui.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "distetl ui did not answer within 120 s"
            time.sleep(0.1)
        assert ui.stdout is not None
        assert ui.stdout.readline().strip() == f"prefect UI:  http://127.0.0.1:{port}"

        # The finished run's page, rendered by Chromium: the flow run's name in the DOM.
        page = f"http://127.0.0.1:{port}/runs/flow-run/{report['flow_run_id']}"
        dom = _browse(browser, page, tmp_path / "profile-dom", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        name = "ui_tour · 3 chunks"  # the flow run's name: pipeline · chunks to run
        assert f"Flow Run: {name}" in dom.stdout, dom.stdout[-3000:]
        assert name in dom.stdout and "Completed" in dom.stdout

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "ui-flow-run.png"
        shot.unlink(missing_ok=True)
        taken = _browse(browser, page, tmp_path / "profile-shot", f"--screenshot={shot}")
        assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
        print(f"screenshot of the flow run's page: {shot}")
        _assert_not_blank(shot)

        # While the UI is up, a run reports to it (no second server on the database) ...
        again = _run(flow, tmp_path / "out", env, "--force")
        assert again["prefect_api"] == f"http://127.0.0.1:{port}/api"
        dom = _browse(browser, f"http://127.0.0.1:{port}/runs/flow-run/{again['flow_run_id']}",
                      tmp_path / "profile-dom2", "--dump-dom")
        assert "Flow Run: ui_tour · 3 chunks" in dom.stdout
        # ... and a second UI on the same database refuses.
        second = _cli("ui", "--port", str(free_port()), env=env, timeout=60)
        assert second.returncode == 2 and "already serving" in second.stderr, second.stderr

        ui.send_signal(signal.SIGINT)
        assert ui.wait(timeout=60) == 0
        assert not _answers(f"http://127.0.0.1:{port}/api/health")
        assert not list((home / "prefect" / "servers").glob("*.json"))
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait()


def _assert_not_blank(png: Path) -> None:
    """The screenshot is a rendered page: many colours, not one flat error/blank page."""
    import matplotlib.image as mpimg
    import numpy as np

    pixels = mpimg.imread(str(png))
    assert pixels.shape[0] >= 800 and pixels.shape[1] >= 1300, pixels.shape
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50, f"{png} looks blank ({len(colours)} colours)"


def test_ui_refuses_while_a_run_has_its_own_server_on_the_database(tmp_path):
    """Simulated with a record of a live run's server (this test process)."""
    from distetl.ops.ui import registered

    home = tmp_path / "home"
    env = clean_env(DISTETL_HOME=str(home))
    with registered(home / "prefect", "http://127.0.0.1:9/api", "run"):
        proc = _cli("ui", "--port", str(free_port()), env=env, timeout=60)
    assert proc.returncode == 2
    text = " ".join(proc.stderr.split())
    assert f"the server of a running `distetl run` (pid {os.getpid()}" in text
    assert "start `distetl ui` when that run has finished" in text
