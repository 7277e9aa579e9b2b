"""``distetl ui``: Prefect's UI and API on distetl's embedded database, to browse past runs.

A run without ``PREFECT_API_URL`` records itself in the Prefect database under
``$DISTETL_HOME/prefect`` (``./.distetl/prefect``) through a server of its own that stops
with the run. ``distetl ui`` serves that same database with the UI on, in the foreground,
until Ctrl-C or SIGTERM.

One server per database: SQLite takes one writer at a time and Prefect does not support
several servers on one SQLite file. Every server distetl starts on a database records
itself there (see :mod:`distetl.engine.servers`). ``distetl ui`` refuses to start while a run's
server is live on the database (it names the run's process), and a run that finds a live
``distetl ui`` on its database reports to that server instead of starting its own, so the
run shows up in the open UI as it happens.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from typing import Any

from distetl.engine.servers import kept_lock, live_clients, live_servers, registered, retire_kept, running_ui
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
    # From the kept server's retirement to this UI's record, under the lock runs take to
    # find or launch a kept server: none can slip in between.
    locked = contextlib.ExitStack()
    locked.enter_context(kept_lock(home))
    if not retire_kept(home, locked=True):
        locked.close()
        raise ConfigError(
            f"no other Prefect server on the database {home / 'prefect.db'} (SQLite takes one server at a time)",
            "distetl's kept server for runs, in use by a running `distetl run` (pids "
            f"{', '.join(map(str, live_clients(home)))})",
            "start `distetl ui` when that run has finished (an idle kept server is stopped for the UI); runs "
            "started while `distetl ui` is up report to the UI's server, so start it first next time",
        )
    for record in live_servers(home):
        locked.close()
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
        locked.close()
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
            locked.close()
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
        locked.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        server.stop()
    console.print("stopped the Prefect UI and API; the database stays")
    return 0
