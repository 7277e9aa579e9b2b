"""Which Prefect servers are live on distetl's embedded database.

One server per database: SQLite takes one writer at a time and Prefect does not support
several servers on one SQLite file. Every server distetl starts on a database records
itself there (``servers/<pid>-<role>.json``): a run's own server (role ``run``) and
``distetl ui``'s or ``distetl serve``'s (role ``ui``). A run that finds a live ``ui``
server on its database reports to it instead of starting its own
(:func:`distetl.engine.prefect_api.prefect_api`); ``distetl ui`` and ``distetl serve``
refuse to start while another server is live there.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Optional

__all__ = ["live_servers", "registered", "running_ui"]


def _servers_dir(home: Path) -> Path:
    return Path(home) / "servers"


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


def live_servers(home: Path) -> list[dict[str, Any]]:
    """The servers recorded on the database under ``home`` whose process still runs
    (records of dead processes are removed)."""
    out = []
    folder = _servers_dir(home)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        pids = [record.get("pid"), record.get("server_pid")]
        if record.get("host") == socket.gethostname() and not any(isinstance(p, int) and _pid_alive(p) for p in pids):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        out.append(record)
    return out


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
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


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
