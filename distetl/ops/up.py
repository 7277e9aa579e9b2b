"""``distetl cluster up|down|status``: a laptop cluster that outlives any single run.

``up`` starts, on 127.0.0.1, a Prefect API server (with its UI), a ``dask scheduler``
with the dashboard on, and ``dask worker`` processes (one thread each) -- each in its
own session, so they keep running after the command returns -- and records their pids,
addresses and logs in ``$DISTETL_HOME/cluster/`` (``./.distetl/cluster`` by default).
``down`` stops what that record names; ``status`` says what is still answering.

The same pieces on several hosts are the standard commands; see ``cluster/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from rich.console import Console

from distetl.errors import ClusterError, ConfigError
from distetl.engine.prefect_api import EmbeddedServer, api_healthy, quiet_prefect_env, state_home

__all__ = ["ClusterState", "cluster_command", "cluster_dir", "start_cluster", "stop_cluster"]

#: Seconds ``up`` waits for the scheduler, every worker and the Prefect API.
START_TIMEOUT = 90.0


def cluster_dir() -> Path:
    """Where ``cluster up`` keeps its record and logs: ``$DISTETL_HOME/cluster``."""
    return state_home() / "cluster"


@dataclass
class ClusterState:
    """What ``cluster up`` started (saved as ``state.json``).

    Attributes:
        scheduler: Scheduler address, ``tcp://127.0.0.1:PORT``.
        dashboard: Dask dashboard URL.
        prefect_api: Prefect API URL (``PREFECT_API_URL`` for drivers).
        prefect_ui: Prefect UI URL.
        workers: Worker processes started.
        pids: Process (and process-group) ids by role: ``prefect``, ``scheduler``,
            ``workers``.
        logs: Folder of the processes' logs.
        started_at: Unix time of ``up``.
    """

    scheduler: str
    dashboard: str
    prefect_api: str
    prefect_ui: str
    workers: int
    pids: dict[str, int] = field(default_factory=dict)
    logs: str = ""
    started_at: float = 0.0

    @classmethod
    def load(cls, home: Optional[Path] = None) -> Optional["ClusterState"]:
        path = (home or cluster_dir()) / "state.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def save(self, home: Optional[Path] = None) -> Path:
        path = (home or cluster_dir()) / "state.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)
        return path

    def alive(self) -> dict[str, bool]:
        """Whether each recorded process group still has its leader running."""
        return {role: _leader_alive(pid) for role, pid in self.pids.items()}


def _leader_alive(pid: int) -> bool:
    """Whether ``pid`` runs and still leads its own process group (what we started)."""
    try:
        os.kill(pid, 0)
        if os.getpgid(pid) != pid:
            return False
    except (ProcessLookupError, PermissionError):
        return False
    with contextlib.suppress(OSError, IndexError):  # Linux: a zombie has exited
        with open(f"/proc/{pid}/stat", "rb") as handle:
            if handle.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False
    return True


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    handle = open(log, "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", *args], env=env, stdout=handle, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(log.parent),
        )
    finally:
        handle.close()


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def start_cluster(
    workers: Optional[int] = None,
    scheduler_port: int = 8786,
    dashboard_port: int = 8787,
    prefect_port: int = 4200,
    home: Optional[Path] = None,
    timeout: float = START_TIMEOUT,
) -> ClusterState:
    """Start a Prefect API, a Dask scheduler and ``workers`` Dask workers on 127.0.0.1.

    Args:
        workers: Worker processes, one thread each (default: one per core).
        scheduler_port: Scheduler port.
        dashboard_port: Dask dashboard port.
        prefect_port: Prefect API and UI port.
        home: Folder for the record and logs (default :func:`cluster_dir`).
        timeout: Seconds to wait for everything to answer.

    Returns:
        The saved :class:`ClusterState`.

    Raises:
        ConfigError: If a cluster is already up, a port is taken or an option is invalid.
        ClusterError: If a piece does not come up (everything started is stopped again).
    """
    quiet_prefect_env()
    home = Path(home or cluster_dir())
    n = workers or os.cpu_count() or 1
    if n < 1:
        raise ConfigError("--workers 1 or more", str(n), "pass e.g. --workers 4")
    existing = ClusterState.load(home)
    if existing is not None and any(existing.alive().values()):
        raise ConfigError(
            f"no distetl cluster running from {home}",
            f"one is up (scheduler {existing.scheduler}, dashboard {existing.dashboard})",
            "use it, or stop it first with `distetl cluster down`",
        )
    ports = {"--scheduler-port": scheduler_port, "--dashboard-port": dashboard_port,
             "--prefect-port": prefect_port}
    if len(set(ports.values())) != len(ports):
        raise ConfigError("three different ports", f"{ports}", "pass distinct ports")
    for option, port in ports.items():
        if not _port_free(port):
            raise ConfigError(
                f"port {port} free on 127.0.0.1 for {option}", "it is in use",
                f"stop what listens there, or pass {option} with another port",
            )
    home.mkdir(parents=True, exist_ok=True)
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    scheduler = f"tcp://127.0.0.1:{scheduler_port}"
    state = ClusterState(
        scheduler=scheduler, dashboard=f"http://127.0.0.1:{dashboard_port}/status",
        prefect_api=f"http://127.0.0.1:{prefect_port}/api", prefect_ui=f"http://127.0.0.1:{prefect_port}",
        workers=n, logs=str(logs), started_at=time.time(),
    )
    try:
        server = EmbeddedServer(home / "prefect", port=prefect_port, ui=True, tied=False, all_services=True)
        server.start(timeout=timeout)
        assert server.process is not None
        state.pids["prefect"] = server.process.pid
        state.save(home)
        env = dict(os.environ)
        env["PREFECT_API_URL"] = state.prefect_api
        env.pop("DISTETL_SCHEDULER", None)
        state.pids["scheduler"] = _spawn(
            ["dask", "scheduler", "--host", "127.0.0.1", "--port", str(scheduler_port),
             "--dashboard-address", f"127.0.0.1:{dashboard_port}"],
            logs / "scheduler.log", env,
        ).pid
        state.save(home)
        state.pids["workers"] = _spawn(
            ["dask", "worker", scheduler, "--nworkers", str(n), "--nthreads", "1", "--host", "127.0.0.1",
             "--name", "distetl", "--local-directory", str(home / "workers"), "--death-timeout", "60"],
            logs / "workers.log", env,
        ).pid
        state.save(home)
        _wait_for_workers(state, n, timeout, logs)
    except BaseException:
        stop_cluster(home, quiet=True)
        raise
    return state


def _wait_for_workers(state: ClusterState, n: int, timeout: float, logs: Path) -> None:
    from distributed import Client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [role for role, ok in state.alive().items() if not ok]
        if dead:
            role = dead[0]
            raise ClusterError(
                f"the {role} process of the cluster running", "it exited",
                f"read {logs / (role + '.log') if role != 'prefect' else 'prefect/server.log'}: "
                f"{_tail(logs / (role + '.log'))[-600:]}",
            )
        try:
            with Client(state.scheduler, timeout="5s", set_as_default=False) as client:
                client.wait_for_workers(n, timeout=max(1.0, deadline - time.monotonic()))
                return
        except (OSError, TimeoutError):
            time.sleep(0.2)
    raise ClusterError(
        f"{n} Dask worker(s) connected to {state.scheduler} within {timeout:.0f}s", "fewer",
        f"read the logs in {logs}: {_tail(logs / 'workers.log')[-600:]}",
    )


def stop_cluster(home: Optional[Path] = None, quiet: bool = False, timeout: float = 20.0) -> Optional[ClusterState]:
    """Stop what ``cluster up`` started (workers, then scheduler, then Prefect).

    Each piece gets SIGTERM (a graceful close: workers leave the scheduler, Prefect
    flushes its database), then SIGKILL after ``timeout`` seconds.

    Returns:
        The record of what was stopped, or None if no cluster was recorded.
    """
    home = Path(home or cluster_dir())
    state = ClusterState.load(home)
    if state is None:
        return None
    for role in ("workers", "scheduler", "prefect"):
        pid = state.pids.get(role)
        if pid and _leader_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _leader_alive(pid) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            _reap(pid)
    with contextlib.suppress(FileNotFoundError):
        (home / "state.json").unlink()
    return state


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our child (cluster up and down in one process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def describe(state: ClusterState) -> list[str]:
    """The lines ``up`` and ``status`` print: addresses, and how to use them."""
    return [
        f"scheduler:   {state.scheduler}",
        f"dashboard:   {state.dashboard}",
        f"prefect UI:  {state.prefect_ui}",
        f"prefect API: {state.prefect_api}",
        f"workers:     {state.workers} process(es), 1 thread each",
        f"logs:        {state.logs}",
        "",
        "Run a backfill on it:",
        f"  export DISTETL_SCHEDULER={state.scheduler}",
        f"  export PREFECT_API_URL={state.prefect_api}",
        "  distetl run flows/nycflights.py --output ./output",
        "Stop it: distetl cluster down",
    ]


def cluster_status(home: Optional[Path] = None) -> tuple[Optional[ClusterState], dict[str, Any]]:
    """What is recorded and what answers: processes, scheduler workers, Prefect API."""
    state = ClusterState.load(home)
    if state is None:
        return None, {}
    facts: dict[str, Any] = {"processes": state.alive(), "prefect_api": api_healthy(state.prefect_api)}
    try:
        from distributed import Client

        with Client(state.scheduler, timeout="3s", set_as_default=False) as client:
            facts["workers"] = len(client.nthreads())
    except (OSError, TimeoutError):
        facts["workers"] = None
    return state, facts


def cluster_command(args: argparse.Namespace, console: Console) -> int:
    """``distetl cluster up|down|status``. Addresses go to stdout, notes to stderr.

    Returns:
        The exit code: 0 done (or, for ``status``, everything answers), 1 otherwise.
    """
    if args.action == "up":
        console.print(f"starting a Prefect API, a Dask scheduler and {args.workers or os.cpu_count()} "
                      "worker(s) on 127.0.0.1 …")
        state = start_cluster(args.workers, args.scheduler_port, args.dashboard_port, args.prefect_port)
        print("\n".join(describe(state)), flush=True)
        return 0
    if args.action == "down":
        state = stop_cluster()
        if state is None:
            console.print(f"no cluster recorded in {cluster_dir()}: nothing to stop")
        else:
            console.print(f"stopped the cluster at {state.scheduler} (Prefect {state.prefect_ui})")
        return 0
    state, facts = cluster_status()
    if state is None:
        console.print(f"no cluster recorded in {cluster_dir()}; start one with `distetl cluster up`")
        return 1
    print("\n".join(describe(state)[:6]))
    print(f"processes:   " + ", ".join(f"{k} {'up' if v else 'DOWN'}" for k, v in facts["processes"].items()))
    print(f"answering:   scheduler with {facts['workers'] if facts['workers'] is not None else 'NO ANSWER'} "
          f"worker(s); Prefect API {'yes' if facts['prefect_api'] else 'NO'}")
    healthy = all(facts["processes"].values()) and facts["prefect_api"] and facts["workers"] == state.workers
    return 0 if healthy else 1
