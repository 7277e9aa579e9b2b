"""Which Prefect servers are live on distetl's embedded database.

One server per database: SQLite takes one writer at a time and Prefect does not support
several servers on one SQLite file. Every server distetl starts on a database records
itself there (``servers/<pid>-<role>.json``): a run's own server (role ``run``) and
``distetl ui``'s or ``distetl serve``'s (role ``ui``). A run that finds a live ``ui``
server on its database reports to it instead of starting its own
(:func:`distetl.engine.prefect_api.prefect_api`); ``distetl ui`` and ``distetl serve``
refuse to start while another server is live there.

A run's server may also be *kept* (role ``kept``, see
:func:`distetl.engine.prefect_api.keep_seconds`): it outlives the run that launched it
and serves every later run on the database until it has had no user for a while. Each
process using it holds a *client* record (``servers/clients/<pid>.json``, :func:`client`);
the server itself (:mod:`distetl.engine.uvicorn_child`) stops once no live process has
held one for its idle time (:func:`retire_when_idle`). Launching one happens under a file
lock (:func:`kept_lock`), so two runs starting at once share one server.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

__all__ = ["live_servers", "registered", "running_ui", "pid_alive", "client", "live_clients", "kept_lock", "kept_server",
           "record_kept", "retire_kept", "retire_when_idle", "KEPT"]

#: The role of a kept server's record.
KEPT = "kept"



def _servers_dir(home: Path) -> Path:
    return Path(home) / "servers"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    return _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):  # Linux: a zombie has exited
        with open(f"/proc/{pid}/stat", "rb") as handle:
            if handle.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False
    return True


def _live_records(folder: Path, pid_keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """The JSON records in ``folder`` (sorted by name) of which a process named under
    ``pid_keys`` still runs; records of this host's dead processes are removed."""
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        pids = [record.get(key) for key in pid_keys]
        if record.get("host") == socket.gethostname() and not any(isinstance(p, int) and _pid_alive(p) for p in pids):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        out.append(record)
    return out


def live_servers(home: Path) -> list[dict[str, Any]]:
    """The servers recorded on the database under ``home`` whose process still runs
    (records of dead processes are removed)."""
    return _live_records(_servers_dir(home), ("pid", "server_pid"))


@contextlib.contextmanager
def registered(home: Path, url: str, role: str, server_pid: Optional[int] = None,
               ui_url: Optional[str] = None) -> Iterator[Path]:
    """Record a server on the database under ``home`` for the block.

    Args:
        home: The server's ``PREFECT_HOME`` (the database's folder).
        url: Its API URL.
        role: ``run`` (a run's own server) or ``ui`` (``distetl ui``).
        server_pid: The server process's pid.
        ui_url: Where its UI is, for ``ui``.
    """
    folder = _servers_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{os.getpid()}-{role}.json"
    record = {"role": role, "url": url, "ui_url": ui_url, "pid": os.getpid(), "server_pid": server_pid,
              "host": socket.gethostname(), "started": time.time()}
    _write(path, record)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def _write(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def _clients_dir(home: Path) -> Path:
    return _servers_dir(home) / "clients"


_CLIENT_COUNTS: dict[Path, int] = {}
_CLIENT_LOCK = threading.Lock()


@contextlib.contextmanager
def client(home: Path) -> Iterator[None]:
    """Record this process as a user of the kept server on the database under ``home``
    for the block (nested blocks in one process share one record)."""
    key = Path(home)
    path = _clients_dir(key) / f"{os.getpid()}.json"
    with _CLIENT_LOCK:
        if not _CLIENT_COUNTS.get(key):
            path.parent.mkdir(parents=True, exist_ok=True)
            _write(path, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        _CLIENT_COUNTS[key] = _CLIENT_COUNTS.get(key, 0) + 1
    try:
        yield
    finally:
        with _CLIENT_LOCK:
            _CLIENT_COUNTS[key] -= 1
            if not _CLIENT_COUNTS[key]:
                del _CLIENT_COUNTS[key]
                with contextlib.suppress(OSError):
                    path.unlink()


def live_clients(home: Path) -> list[int]:
    """Pids of the live processes using the kept server on ``home`` (records of dead
    ones are removed)."""
    return [record["pid"] for record in _live_records(_clients_dir(home), ("pid",))]


@contextlib.contextmanager
def kept_lock(home: Path) -> Iterator[None]:
    """Hold the database's lock for looking up, launching or retiring its kept server."""
    folder = _servers_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".kept.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _kept_path(home: Path, pid: int) -> Path:
    return _servers_dir(home) / f"{pid}-{KEPT}.json"


def kept_server(home: Path) -> Optional[dict[str, Any]]:
    """The record of the live kept server on the database under ``home`` started on this
    host (a home shared by several hosts has one per host at most), or None."""
    here = socket.gethostname()
    return next((r for r in live_servers(home) if r.get("role") == KEPT and r.get("host") == here), None)


def record_kept(home: Path, url: str, pid: int, idle_s: float) -> None:
    """Record a kept server (process ``pid``, API at ``url``) on the database."""
    _servers_dir(home).mkdir(parents=True, exist_ok=True)
    _write(_kept_path(home, pid), {"role": KEPT, "url": url, "ui_url": None, "pid": pid, "server_pid": pid,
                                   "host": socket.gethostname(), "started": time.time(), "idle_s": idle_s})


def retire_kept(home: Path, timeout: float = 20.0, locked: bool = False) -> bool:
    """Stop the kept server on ``home`` if no live process uses it.

    Args:
        home: The database's folder.
        timeout: Seconds to wait for it to stop (then it is killed).
        locked: The caller holds :func:`kept_lock` (a second lock in one process would
            wait for itself).

    Returns:
        True if none is left running (there was none, or it stopped); False if a live
        process still uses it.
    """
    with contextlib.nullcontext() if locked else kept_lock(home):
        record = kept_server(home)
        if record is None:
            return True
        if live_clients(home):
            return False
        with contextlib.suppress(OSError):
            _kept_path(home, record["pid"]).unlink()
        with contextlib.suppress(ProcessLookupError):
            os.kill(record["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(record["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(record["pid"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record["pid"], signal.SIGKILL)
        return True


def retire_when_idle(home: Path, idle_s: float, poll: float = 0.5) -> None:
    """In a kept server's process: return once no live process has used it for
    ``idle_s`` seconds, its record taken away (the caller then stops the server).

    The last look for clients and the record's removal happen under :func:`kept_lock`,
    as a run's registration as a client and its lookup of the record do: a run either
    registered before (the server stays) or finds no record (it launches another).
    """
    path = _kept_path(home, os.getpid())
    last_used = time.monotonic()
    while True:
        time.sleep(poll)
        if live_clients(home):
            last_used = time.monotonic()
            continue
        if time.monotonic() - last_used < idle_s:
            continue
        with kept_lock(home):
            if live_clients(home):
                last_used = time.monotonic()
                continue
            with contextlib.suppress(OSError):
                path.unlink()
            return


def running_ui(home: Path, wait: float = 30.0) -> Optional[str]:
    """The API URL of a live ``distetl ui`` on the database under ``home`` (waiting up to
    ``wait`` seconds for one that is still starting to answer), or None."""
    from distetl.engine.prefect_api import api_healthy  # prefect_api imports this module

    deadline = time.monotonic() + wait
    while True:
        records = [r for r in live_servers(home) if r.get("role") == "ui"]
        for record in records:
            if api_healthy(record["url"], timeout=2.0):
                return str(record["url"])
        if not records or time.monotonic() > deadline:
            return None
        time.sleep(0.5)
