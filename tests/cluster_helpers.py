"""Real Dask clusters for tests: a ``dask scheduler`` and ``dask worker`` processes on
127.0.0.1 with free ports, started apart from the test process and always stopped.

Also: a flow-file source whose extract logs every execution (to prove no chunk is
recomputed), and psutil helpers to watch for Prefect server processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import psutil

__all__ = [
    "DaskProcesses", "free_port", "wait_until", "logged_flow_source", "read_exec_log",
    "prefect_server_processes", "ProcessWatcher", "clean_env", "expected_table",
    "task_run_states", "manifest_task_runs",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any Prefect API URL or scheduler address:
    what a freshly started cluster process sees."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "DISTETL_SCHEDULER")}
    env.update(extra)
    return env


class DaskProcesses:
    """A ``dask scheduler`` and ``dask worker`` processes, each in its own session.

    Args:
        workdir: Folder for logs and worker scratch space (workers run with it as cwd,
            so they never see the test's flow files by path).
        hide: Folders (existing, outside ``workdir``) hidden from the workers.
        env: Environment of every process (default: :func:`clean_env`).
    """

    def __init__(self, workdir: Path, env: Optional[dict[str, str]] = None, hide: Sequence[Path] = ()):
        self.workdir = Path(workdir)
        #: Folders the workers do not see: each worker runs in its own mount namespace
        #: (``unshare -m``) with an empty tmpfs over each, as on a host with no shared disk.
        self.hide = [str(Path(h).resolve()) for h in hide]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = env if env is not None else clean_env()
        self.port = free_port()
        self.dashboard_port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler: Optional[subprocess.Popen] = None
        self.workers: list[subprocess.Popen] = []

    def _spawn(self, args: list[str], log_name: str, extra_env: Optional[dict[str, str]] = None,
               hide: Sequence[str] = ()) -> subprocess.Popen:
        log = open(self.workdir / log_name, "ab")
        env = {**self.env, **(extra_env or {})}
        command = [sys.executable, "-m", "dask", *args]
        if hide:  # a mount namespace of its own, an empty tmpfs over each hidden folder
            script = 'for d in "$@"; do mount -t tmpfs distetl-hidden "$d" || exit 97; done; exec ' + " ".join(
                shlex.quote(c) for c in command)
            command = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *hide]
        try:
            return subprocess.Popen(
                command, cwd=str(self.workdir), env=env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            log.close()

    def start(self, n_workers: int = 2, nanny: bool = True, timeout: float = 60.0,
              scheduler_env: Optional[dict[str, str]] = None) -> "DaskProcesses":
        """Start the scheduler and ``n_workers`` single-threaded workers; wait for all.

        Args:
            scheduler_env: Extra environment for the scheduler only (Dask config such
                as ``DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES``).
        """
        self.scheduler = self._spawn(
            ["scheduler", "--host", "127.0.0.1", "--port", str(self.port),
             "--dashboard-address", f"127.0.0.1:{self.dashboard_port}"], "scheduler.log",
            extra_env=scheduler_env,
        )
        for i in range(n_workers):
            self.add_worker(f"w{i}", nanny=nanny)
        if n_workers:
            self.wait_for_workers(n_workers, timeout)
        else:
            wait_until(self._scheduler_listens, timeout, f"the scheduler at {self.address}")
        return self

    def _scheduler_listens(self) -> bool:
        with contextlib.closing(socket.socket()) as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def add_worker(self, name: str, nanny: bool = True, extra_env: Optional[dict[str, str]] = None) -> subprocess.Popen:
        """Start one more worker process against the scheduler."""
        args = ["worker", self.address, "--nthreads", "1", "--host", "127.0.0.1", "--name", name,
                "--no-dashboard", "--local-directory", str(self.workdir / f"space-{name}"),
                "--death-timeout", "60"]
        if not nanny:
            args.append("--no-nanny")
        proc = self._spawn(args, f"worker-{name}.log", extra_env=extra_env, hide=self.hide)
        self.workers.append(proc)
        return proc

    def worker_addresses(self) -> set[str]:
        from distributed import Client

        with Client(self.address, timeout="10s", set_as_default=False) as client:
            return set(client.nthreads())

    def wait_for_workers(self, n: int, timeout: float = 60.0) -> None:
        from distributed import Client

        with Client(self.address, timeout=f"{timeout}s", set_as_default=False) as client:
            client.wait_for_workers(n, timeout=timeout)

    def logs(self) -> str:
        """Tail of every log, for assertion messages."""
        out = []
        for path in sorted(self.workdir.glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)

    def stop(self) -> None:
        """Stop every process and its children (TERM, then KILL)."""
        procs = [p for p in [*self.workers, self.scheduler] if p is not None]
        for proc in procs:
            _signal_group(proc, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
        for proc in procs:  # orphans left in the groups
            _signal_group(proc, signal.SIGKILL)

    def __enter__(self) -> "DaskProcesses":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def logged_flow_source(log_path: Path, *, n_days: int, sleep: float, name: str = "logged",
                       extra: str = "") -> str:
    """A flow file whose extract appends ``start <key> <pid> <committed>`` to ``log_path``
    (O_APPEND, one write per line) each time it runs -- ``committed`` is 1 if the chunk's
    target already existed then -- sleeps ``sleep`` seconds, and whose transform appends
    ``end <key> <pid>`` just before the commit. The output depends only on the day.
    ``extra`` is inserted after the imports (e.g. an import the workers lack)."""
    return f'''
import os, time
import pandas as pd
import pyarrow as pa
from distetl import DateRange, Pipeline
{extra}
LOG = {str(log_path)!r}

def _log(line):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)

def extract(chunk, ctx):
    target = f"{{ctx.output}}/t/date={{chunk['date']}}/part-0.parquet"
    _log(f"start {{chunk.key}} {{os.getpid()}} {{int(os.path.exists(target))}}")
    time.sleep({sleep!r})
    day = pd.Timestamp(chunk["date"])
    return pd.DataFrame({{"day": [chunk["date"]] * 50, "i": range(50),
                          "v": [day.dayofyear * 1000 + i for i in range(50)]}})

def transform(frame, chunk):
    _log(f"end {{chunk.key}} {{os.getpid()}} 0")
    return frame

pipeline = Pipeline(
    name={name!r},
    plan=DateRange(start="2024-01-01", end=str((pd.Timestamp("2024-01-01") + pd.Timedelta(days={n_days - 1})).date())),
    extract=extract,
    transform=transform,
    target="{{output}}/t/date={{date}}/part-0.parquet",
    schema=pa.schema([("day", pa.string()), ("i", pa.int64()), ("v", pa.int64())]),
)
'''


def expected_table(day: str):
    """The table the logged flow commits for one day (what a clean run writes)."""
    import pandas as pd
    import pyarrow as pa

    stamp = pd.Timestamp(day)
    frame = pd.DataFrame({"day": [day] * 50, "i": range(50), "v": [stamp.dayofyear * 1000 + i for i in range(50)]})
    schema = pa.schema([("day", pa.string()), ("i", pa.int64()), ("v", pa.int64())])
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


def read_exec_log(log_path: Path) -> list[tuple[str, str, int, bool]]:
    """``(event, chunk key, pid, target existed)`` per logged line, in order; ``event`` is
    ``start`` (extract began) or ``end`` (transform ran, the commit follows)."""
    if not log_path.exists():
        return []
    out = []
    for line in log_path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] in ("start", "end"):
            out.append((parts[0], parts[1], int(parts[2]), parts[3] == "1"))
    return out


def is_prefect_server(proc: psutil.Process) -> bool:
    """Whether a process is a Prefect API server (uvicorn serving prefect.server, or
    ``prefect server start``)."""
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return ("uvicorn" in cmd and "prefect.server" in cmd) or ("prefect" in cmd and "server start" in cmd)


def prefect_server_processes(roots: Iterable[int]) -> dict[int, tuple[int, str]]:
    """Prefect server processes among ``roots`` and their descendants:
    pid → (the root it descends from, command line)."""
    found = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            if is_prefect_server(proc):
                with contextlib.suppress(psutil.Error):
                    found[proc.pid] = (pid, " ".join(proc.cmdline()))
    return found


class ProcessWatcher:
    """Samples the descendants of some processes in a thread, recording every Prefect
    server process that ever appears among them.

    Args:
        roots: Callable returning the pids to watch (re-evaluated every sample).
        interval: Seconds between samples.
    """

    def __init__(self, roots, interval: float = 0.05):
        self.roots = roots
        self.interval = interval
        self.servers: dict[int, tuple[int, str]] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.servers.update(prefect_server_processes(self.roots()))
            self.samples += 1
            self._stop.wait(self.interval)

    @contextlib.contextmanager
    def running(self) -> Iterator["ProcessWatcher"]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=10)


def task_run_states(api_url: str, task_run_ids: Iterable[str]) -> dict[str, str]:
    """State type of each task run the API at ``api_url`` has (absent ids are missing)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    wanted = sorted({UUID(i) for i in task_run_ids})
    out: dict[str, str] = {}
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            for start in range(0, len(wanted), 200):
                runs = client.read_task_runs(
                    task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=wanted[start:start + 200])), limit=200,
                    sort=TaskRunSort.EXPECTED_START_TIME_ASC,
                )
                out.update({str(r.id): r.state.type.value for r in runs if r.state is not None})
    return out


def manifest_task_runs(manifest_path: str) -> dict[str, str]:
    """Chunk key → task run id, from a run's per-chunk records (found from its manifest)."""
    from distetl.state.manifest import read_chunks
    from distetl.storage import Storage

    return {r["key"]: r["task_run_id"] for r in read_chunks(Storage.for_url(manifest_path), manifest_path)}
