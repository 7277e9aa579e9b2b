"""``distetl ui``: Prefect's UI and API on distetl's embedded database, to browse past runs.

A run without ``PREFECT_API_URL`` records itself in the Prefect database under
``$DISTETL_HOME/prefect`` (``./.distetl/prefect``) through a server of its own that stops
with the run. ``distetl ui`` serves that same database with the UI on, in the foreground,
until Ctrl-C or SIGTERM.

One server per database: SQLite takes one writer at a time and Prefect does not support
several servers on one SQLite file. Every server distetl starts on a database records
itself there (``servers/<pid>.json``). ``distetl ui`` refuses to start while a run's
server is live on the database (it names the run's process), and a run that finds a live
``distetl ui`` on its database reports to that server instead of starting its own, so the
run shows up in the open UI as it happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from distetl.errors import ConfigError

__all__ = ["add_ui_parser", "live_servers", "registered", "running_ui", "ui_command"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_WILDCARD = ("0.0.0.0", "::", "")


def add_ui_parser(sub: Any) -> None:
    """The ``ui`` subcommand's options."""
    text = ("serve Prefect's UI and API on distetl's embedded database ($DISTETL_HOME/prefect or "
            "./.distetl/prefect) to browse past runs")
    p = sub.add_parser("ui", help=text, description=text)
    p.add_argument("--port", type=int, default=4200, help="port of the UI and API (default 4200)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")


# -- which servers are live on a database -------------------------------------------------

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
    from distetl.engine.prefect_api import api_healthy

    deadline = time.monotonic() + wait
    while True:
        records = [r for r in live_servers(home) if r.get("role") == "ui"]
        for record in records:
            if api_healthy(record["url"], timeout=2.0):
                return str(record["url"])
        if not records or time.monotonic() > deadline:
            return None
        time.sleep(0.5)


# -- the command --------------------------------------------------------------------------

def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.closing(socket.socket(family, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind((host if host not in _WILDCARD else ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
        except OSError:
            return False
    return True


def ui_command(args: Any, console: Any) -> int:
    """``distetl ui``: serve the embedded database with the UI until Ctrl-C or SIGTERM.

    Raises:
        ConfigError: A run's own server, or another ``distetl ui``, is live on the
            database; the port is taken; the server does not come up.
    """
    from distetl.engine.prefect_api import EmbeddedServer, quiet_prefect_env, state_home

    quiet_prefect_env()
    home = state_home() / "prefect"
    host, port = args.host, args.port
    for record in live_servers(home):
        if record.get("role") == "ui":
            raise ConfigError(
                f"one `distetl ui` on {home}", f"one already serving at {record.get('ui_url')} (pid {record['pid']})",
                f"open {record.get('ui_url')}, or stop that one (Ctrl-C in its terminal, or kill {record['pid']})",
            )
        raise ConfigError(
            f"no other Prefect server on the database {home / 'prefect.db'} (SQLite takes one server at a time)",
            f"the server of a running `distetl run` (pid {record['pid']}, API {record.get('url')})",
            "start `distetl ui` when that run has finished; runs started while `distetl ui` is up report "
            "to the UI's server, so start it first next time",
        )
    if not _port_free(host, port):
        raise ConfigError(f"port {port} free on {host}", "something listens there",
                          f"pass another port: distetl ui --port {port + 1}")
    connect = "127.0.0.1" if host in _WILDCARD or host in _LOOPBACK else host
    shown = socket.gethostname() if host in _WILDCARD else connect
    # The UI in the browser calls the API at this URL: the browser's view of the host.
    ui_api = os.environ.get("PREFECT_UI_API_URL") or f"http://{shown}:{port}/api"
    server = EmbeddedServer(home, port=port, ui=True, tied=True, host=host, connect_host=connect, ui_api_url=ui_api)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    ui_url = f"http://{shown}:{port}"
    try:
        # Recorded before it starts: a run starting meanwhile waits for it, not a server of its own.
        with registered(home, server.url, "ui", None, ui_url):
            url = server.start()
            print(f"prefect UI:  {ui_url}", flush=True)
            print(f"prefect API: {url}", flush=True)
            print(f"database:    {home / 'prefect.db'}", flush=True)
            console.print("runs recorded in this database are listed under Flow Runs; runs started while this "
                          "serves report here as they happen. Ctrl-C stops it.", highlight=False)
            while not stop.is_set():
                if server.process is None or server.process.poll() is not None:
                    tail = (home / "server.log").read_text(errors="replace")[-1500:]
                    raise ConfigError("the Prefect server to keep running", f"it exited; log tail:\n{tail}",
                                      "check the log above")
                stop.wait(0.5)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        server.stop()
    console.print("stopped the Prefect UI and API; the database stays")
    return 0
