"""The warm run process: after a first ``distetl run`` on a home, later runs are handed
to a process that has imported Prefect, Dask and pandas once and forks one child per run
(:mod:`distetl.handoff`, :mod:`distetl.warm`). The command's environment, working
folder, output, exit code and Ctrl-C must all be those of a run in its own process.
Real commands, a real warm process, real runs (``DISTETL_KEEP_SERVER`` set here: the
test session turns it off)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from distetl import handoff
from distetl.engine.servers import pid_alive, retire_kept

from conftest import REPO, last_run

FLOW = """
import json, multiprocessing, os, time
import pandas as pd
from distetl import IdRange, Pipeline

if multiprocessing.parent_process() is None:  # the driver, not a Dask worker
    if os.environ.get("KILL_DRIVER"):
        os.kill(os.getpid(), 9)
    with open(os.environ["WHO"], "a") as handle:
        handle.write(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "mark": os.environ.get("MARK"),
                                 "cwd": os.getcwd()}) + "\\n")

def extract(chunk):
    if chunk["start"] == int(os.environ.get("BAD", "-1")):
        raise ValueError(f"chunk {chunk['start']} is bad on purpose")
    time.sleep(float(os.environ.get("EACH_S", "0")))
    return pd.DataFrame({"id": range(chunk["start"], chunk["stop"]), "mark": os.environ.get("MARK", "-")})

pipeline = Pipeline(name="warm", plan=IdRange(start=0, stop=N, size=1), extract=extract,
                    target="{output}/warm/part-{first}.parquet")
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "DISTETL_SCHEDULER")}
    env.update(DISTETL_HOME=str(tmp_path / "home"), DISTETL_KEEP_SERVER="60", WHO=str(tmp_path / "who.jsonl"))
    env.update(extra)
    return env


def _start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distetl.cli", *args], cwd=str(cwd), env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _who(tmp_path: Path) -> list[dict]:
    path = tmp_path / "who.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _warm_pid(home: Path, timeout: float = 90) -> int:
    """The pid of the home's warm process once it is ready (from its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = home / "warm.log"
        found = re.findall(r"\(pid (\d+)\): ready", log.read_text()) if log.exists() else []
        if found:
            return int(found[-1])
        time.sleep(0.2)
    raise AssertionError(f"Expected the warm process to log that it is ready within {timeout} s; got "
                         f"{(home / 'warm.log').read_text() if (home / 'warm.log').exists() else 'no log'}")


def _cleanup(home: Path, pids: list[int]) -> None:
    stopped = handoff.stop_warm(home)
    assert {p for p in pids if pid_alive(p)} <= set(stopped), (pids, stopped)
    retire_kept(home / "prefect")
    deadline = time.monotonic() + 30
    while any(pid_alive(pid) for pid in stopped) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert handoff.warm_pids(home) == []


def test_later_runs_go_to_the_warm_process_with_their_env_folder_output_and_exit_codes(tmp_path, flow_file,
                                                                                      migrated_home):
    flow = flow_file(FLOW.replace("stop=N", "stop=3"))
    home = migrated_home  # tmp_path / "home", its Prefect database made
    work = tmp_path / "work"
    work.mkdir()
    warm: list[int] = []
    try:
        first = _start(["run", str(flow), "--output", "out1", "--no-progress"], _env(tmp_path, MARK="one"), work)
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
        assert _who(tmp_path)[-1]["pid"] == first.pid, "the first run ran in the command's own process"
        warm.append(_warm_pid(home))

        second = _start(["run", str(flow), "--output", "out2", "--no-progress", "--json"],
                        _env(tmp_path, MARK="two"), work)
        out, err = second.communicate(timeout=300)
        assert second.returncode == 0, err
        who = _who(tmp_path)[-1]
        assert who["pid"] != second.pid and who["ppid"] == warm[0], "the run was forked by the warm process"
        assert who["mark"] == "two" and who["cwd"] == str(work), "the command's environment and folder"
        assert json.loads(out)["summary"]["written"] == 3, out[-2000:]  # its stdout is the command's
        table = pq.read_table(work / "out2" / "warm")  # --output out2: relative to the command's folder
        assert set(table.column("mark").to_pylist()) == {"two"}, "the workers got the command's environment"
        assert "flow run:" in err, "its stderr is the command's"
        manifest, records = last_run(work / "out2", "warm")
        assert sorted(r["status"] for r in records) == ["written"] * 3 and manifest["flow_state"] == "COMPLETED"

        failing = _start(["run", str(flow), "--output", "out3", "--no-progress"],
                         _env(tmp_path, MARK="three", BAD="1"), work)
        _, err = failing.communicate(timeout=300)
        assert failing.returncode == 1, err
        assert "chunk 1 is bad on purpose" in err
        assert _who(tmp_path)[-1]["ppid"] == warm[0]

        refused = _start(["run", "nosuch.py", "--output", "out4"], _env(tmp_path), work)
        _, err = refused.communicate(timeout=120)
        assert refused.returncode == 2 and "Fix:" in err and "nosuch.py" in err, err
        assert not (work / "out4").exists()

        # A run killed by a signal: its command exits 128 + N, as if it had run itself.
        killed = _start(["run", str(flow), "--output", "out5"], _env(tmp_path, KILL_DRIVER="1"), work)
        _, err = killed.communicate(timeout=120)
        assert killed.returncode == 128 + signal.SIGKILL, (killed.returncode, err)

        # Another user's command is refused (the peer's credentials): nothing runs. (As
        # root, a forked process of this test becomes `nobody`; this harness runs as root.)
        runs = len(_who(tmp_path))
        assert os.getuid() == 0, "Expected to run as root (to act as another user); got another uid"
        name = re.findall(r"warm process (\w+) \(pid \d+\): ready", (home / "warm.log").read_text())[-1]
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the forked process
            try:
                os.chdir("/")
                os.setuid(65534)
                os.write(write, repr(handoff.forward(name, ["run", str(flow), "--output", "/tmp/x"], {})).encode())
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        assert os.read(read, 100).decode() == "None", "another user's command was not refused"
        os.close(read)

        # A newer warm process of the same home (say, after an edit of distetl) retires
        # the older one once it is ready.
        handoff.launch("0" * 32, home, _env(tmp_path), 60.0)
        deadline = time.monotonic() + 90
        while (_warm_pid(home) == warm[0] or handoff.warm_pids(home) != [_warm_pid(home)]) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        newer = _warm_pid(home)
        assert newer != warm[0] and handoff.warm_pids(home) == [newer], handoff.warm_pids(home)
        warm.append(newer)
        assert len(_who(tmp_path)) == runs and "refused" in (home / "warm.log").read_text()
    finally:
        _cleanup(home, warm)


def test_ctrl_c_reaches_the_run_in_the_warm_process_and_a_lost_command_stops_it(tmp_path, flow_file, migrated_home):
    flow = flow_file(FLOW.replace("stop=N", "stop=40"))
    home = migrated_home
    warm: list[int] = []
    try:
        first = _start(["run", str(flow), "--output", str(tmp_path / "warmup"), "--no-progress"],
                       _env(tmp_path), tmp_path)
        assert first.wait(timeout=300) == 0, first.communicate()[1]
        warm.append(_warm_pid(home))

        for how, sig, out in (("ctrl-c", signal.SIGINT, tmp_path / "a"), ("lost", signal.SIGKILL, tmp_path / "b")):
            proc = _start(["run", str(flow), "--output", str(out), "--no-progress"], _env(tmp_path, EACH_S="0.3"),
                          tmp_path)
            deadline = time.monotonic() + 120
            while not list((out / "warm").glob("*.parquet")) and time.monotonic() < deadline:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.1)
            child = _who(tmp_path)[-1]
            assert child["ppid"] == warm[0]
            os.killpg(proc.pid, sig)  # a terminal's Ctrl-C; or the command killed outright
            _, err = proc.communicate(timeout=60)
            if how == "ctrl-c":
                assert proc.returncode == 130, err
                assert "stopped by SIGINT" in err and "Traceback" not in err, err
            deadline = time.monotonic() + 60
            while pid_alive(child['pid']) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not pid_alive(child['pid']), f"the run's process stops ({how})"
            manifest, records = last_run(out, "warm")
            assert manifest["interrupted"] == ("SIGINT" if how == "ctrl-c" else "SIGTERM"), manifest
            assert manifest["flow_state"] == "CANCELLED"
            assert 0 < sum(r["status"] == "written" for r in records) < 40
        assert pid_alive(warm[0]), "the warm process itself goes on"
    finally:
        _cleanup(home, warm)


def test_another_import_time_environment_or_home_is_another_warm_process(tmp_path):
    env = {"PATH": "/usr/bin", "PREFECT_LOGGING_LEVEL": "WARNING", "MARK": "a"}
    base = handoff.key(tmp_path / "h", env)
    assert handoff.key(tmp_path / "h", {**env, "MARK": "b"}) == base, "a variable read at run time only"
    assert handoff.key(tmp_path / "h", {**env, "PREFECT_LOGGING_LEVEL": "DEBUG"}) != base
    assert handoff.key(tmp_path / "h", {**env, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}) != base
    assert handoff.key(tmp_path / "other", env) != base
    assert handoff.applies(["run", "f.py"]) and not handoff.applies(["run", "f.py", "--dry-run"])
    assert not handoff.applies(["status", "f.py"]) and not handoff.applies(["run", "--help"])
