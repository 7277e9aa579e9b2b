"""Handing ``distetl run`` to the home's warm run process (the client side).

A one-chunk run spent most of its ~2.5 s importing Prefect, Dask and pandas and starting
Dask's dashboard. The first ``distetl run`` on a ``DISTETL_HOME`` therefore leaves a warm
run process behind (:mod:`distetl.warm`): it has imported all of that once, and forks
one child per later run. The ``distetl`` command then only connects, passes its
arguments, working folder, environment and its terminal (stdin, stdout and stderr, as
file descriptors), forwards SIGINT, SIGTERM and SIGHUP to the child and exits with the
child's exit code. The child runs the very same command (:func:`distetl.cli.main`), so
output, exit codes, stops and records are those of a run in the command's own process.

The process is found by an abstract Unix socket whose name is a hash of what its imports
and its process depend on (:func:`key`): the Python executable, version and flags, the
home and user, the environment variables read at import time (``PREFECT_*``, ``DASK_*``,
``PYTHON*``…), the process's cgroup, CPU affinity, umask and limits, site-packages'
listing and the files of distetl, Prefect, Dask, pandas and pyarrow. Change any of them
(a ``pip install``, an edit of distetl, another ``PREFECT_LOGGING_LEVEL``, another batch
job) and the next run finds none, runs in its own process and starts a fresh one; the old
one stops once idle. The warm process serves its own user's commands only. It stops once no run
has used it for ``DISTETL_KEEP_SERVER`` seconds, as the kept Prefect server does
(:func:`distetl.engine.prefect_api.keep_seconds`); 0 turns both off.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

__all__ = ["key", "address", "forward", "launch", "applies", "stop_warm", "warm_pids", "IMPORT_TIME_ENV"]

#: Environment variables read at import time by the libraries the warm process imports
#: (prefixes): a different value means another warm process. Prefect's settings are
#: read again in each child (with its folder's ``.env`` and ``prefect.toml``).
IMPORT_TIME_ENV = ("PREFECT_", "DASK_", "PYTHON", "ARROW_", "OMP_", "MKL_", "OPENBLAS_", "MALLOC_", "LD_", "TZ",
                   "LANG", "LC_", "HOME")

#: distetl's own variables that name the warm process (the others are read per run).
DISTETL_ENV = ("DISTETL_HOME", "DISTETL_KEEP_SERVER")

#: Packages whose files make up the warm process's code (with distetl itself).
PACKAGES = ("prefect", "prefect_dask", "distributed", "dask", "pandas", "pyarrow", "numpy")

#: Seconds a command waits for the warm process to take its run before it runs the
#: command itself (the process may still be importing).
ACCEPT_TIMEOUT = 30.0


def _code_stamp() -> str:
    """Newest modification time and count of distetl's own ``.py`` files, and the
    ``__init__`` modification times of :data:`PACKAGES` (a reinstall changes them)."""
    root = Path(__file__).resolve().parents[1]
    newest, count = 0, 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and entry.name != "__pycache__":
                    stack.append(entry.path)
                elif entry.name.endswith(".py"):
                    newest, count = max(newest, entry.stat().st_mtime_ns), count + 1
    stamps = [f"{root}:{newest}:{count}"]
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        origin = getattr(spec, "origin", None) if spec else None
        stamps.append(f"{name}:{os.stat(origin).st_mtime_ns if origin else '-'}")
    return ";".join(stamps)


def _process_context() -> str:
    """What the operating system gives a process that a forked child would not get from
    the command: its cgroup (a batch job's), CPU affinity, umask and resource limits."""
    import resource

    parts = []
    with contextlib.suppress(OSError):
        with open("/proc/self/cgroup", encoding="utf-8", errors="replace") as handle:
            parts.append(handle.read())
    with contextlib.suppress(AttributeError, OSError):
        parts.append(str(sorted(os.sched_getaffinity(0))))
    mask = os.umask(0)
    os.umask(mask)
    parts.append(oct(mask))
    for limit in ("RLIMIT_AS", "RLIMIT_DATA", "RLIMIT_NOFILE", "RLIMIT_CPU", "RLIMIT_NPROC", "RLIMIT_STACK"):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            parts.append(f"{limit}={resource.getrlimit(getattr(resource, limit))}")
    return "\0".join(parts)


def key(home: Path, env: Mapping[str, str]) -> str:
    """The warm process a command with ``env`` on ``home`` may hand its run to: a hash of
    the interpreter (executable, version, flags), the home, the environment read at import
    time, the process's OS context (:func:`_process_context`) and the code
    (:func:`_code_stamp`)."""
    import sysconfig

    digest = hashlib.sha256()
    digest.update(f"{sys.executable}\0{sys.version}\0{sys.flags}\0{sys.warnoptions}\0{sys._xoptions}\0".encode())
    digest.update(f"{Path(home).resolve()}\0{os.getuid()}\0{os.getgid()}\0{os.getgroups()}\0".encode())
    for name in sorted(env):
        if name.startswith(IMPORT_TIME_ENV) or name in DISTETL_ENV:
            digest.update(f"{name}={env[name]}\0".encode())
    digest.update(_process_context().encode())
    for folder in dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]):
        with contextlib.suppress(OSError):  # an install or uninstall changes its listing
            digest.update(f"{folder}:{os.stat(folder).st_mtime_ns}\0".encode())
    digest.update(_code_stamp().encode())
    return digest.hexdigest()[:32]


def address(name: str) -> str:
    """The abstract Unix socket of the warm process ``name`` (Linux)."""
    return f"\0distetl-run-{name}"


def applies(argv: Sequence[str]) -> bool:
    """Whether ``distetl ARGV`` may be handed over: a ``run`` (not a dry run, no help),
    on Linux, with the three standard streams open."""
    if not sys.platform.startswith("linux") or not argv or argv[0] != "run":
        return False
    if any(a in ("--dry-run", "-h", "--help") for a in argv[1:]):
        return False
    try:
        return all(os.fstat(fd) is not None for fd in (0, 1, 2))
    except OSError:
        return False


def _lines(sock: socket.socket) -> Any:
    buffer = b""
    while True:
        data = sock.recv(4096)
        if not data:
            return
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield json.loads(line)


def forward(name: str, argv: Sequence[str], env: Mapping[str, str]) -> Optional[int]:
    """Hand ``distetl ARGV`` to the warm process ``name``; its exit code, or None when
    no such process takes it (the caller then runs the command itself)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    request = {"argv": list(argv), "cwd": os.getcwd(), "env": dict(env), "path0": sys.path[0] if sys.path else "",
               "executable": sys.executable}
    try:
        sock.settimeout(ACCEPT_TIMEOUT)
        sock.connect(address(name))
        sock.sendmsg([json.dumps(request).encode() + b"\n"],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
        replies = _lines(sock)
        first = next(replies, None)
    except (OSError, ValueError):
        sock.close()
        return None
    except KeyboardInterrupt:  # before the run started: it will not (its child sees the socket close)
        sock.close()
        print("interrupted before the run started", file=sys.stderr, flush=True)
        return 130
    if not first or "pid" not in first:
        sock.close()
        return None
    sock.settimeout(None)
    pid = int(first["pid"])

    def relay(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    previous = {s: signal.signal(s, relay) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(s) is not signal.SIG_IGN}  # an ignored signal stays ignored
    try:
        for reply in replies:
            if "code" in reply:
                return int(reply["code"])
    except (OSError, ValueError):
        pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sock.close()
    print(f"error: Expected the run (pid {pid}, in distetl's warm run process) to report its exit code; got none: "
          "it ended without one. Fix: rerun (committed chunks are skipped); set DISTETL_KEEP_SERVER=0 to run in "
          "the command's own process", file=sys.stderr, flush=True)
    return 1


def launch(name: str, home: Path, env: Mapping[str, str], idle_s: float) -> None:
    """Start the warm process ``name`` for later runs (detached; it stops once idle for
    ``idle_s`` seconds, or at once when one with that name runs already). Its log is
    ``HOME/warm.log``."""
    home = Path(home)
    with contextlib.suppress(OSError):
        home.mkdir(parents=True, exist_ok=True)
        with open(home / "warm.log", "ab") as log:
            subprocess.Popen([sys.executable, "-m", "distetl.warm", name, repr(idle_s), str(home)], env=dict(env),
                             cwd=str(home), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True, close_fds=True)


def warm_pids(home: Path) -> list[int]:
    """Pids of the live warm run processes started for ``home`` (from ``HOME/warm.log``)."""
    import re

    log = Path(home) / "warm.log"
    if not log.is_file():
        return []
    pids = []
    for pid in dict.fromkeys(int(p) for p in re.findall(r"\(pid (\d+)\): ready", log.read_text(errors="replace"))):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"distetl.warm" in handle.read():
                    pids.append(pid)
        except OSError:
            continue
    return pids


def stop_warm(home: Path) -> list[int]:
    """Stop the warm run processes of ``home`` (runs they forked go on to their end);
    returns their pids."""
    pids = warm_pids(home)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    return pids
