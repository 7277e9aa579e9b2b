"""The warm run process: ``python -m distetl.warm NAME IDLE_S`` (started by ``distetl run``).

It listens on the abstract Unix socket of :func:`distetl.handoff.address`, imports
what a run imports (Prefect, Dask and its dashboard, pandas, pyarrow, distetl's run
layer) once, with no thread started, then forks one child per ``distetl run`` that
connects (:func:`distetl.handoff.forward`). The child takes the command's
terminal (its stdin, stdout and stderr arrive as file descriptors), working folder,
environment, ``sys.argv`` and first ``sys.path`` entry, runs :func:`distetl.cli.main`
with the command's arguments, and reports the exit code. A child whose command went away
(killed, its terminal closed) is sent SIGTERM: the run stops cleanly, as it does on a
service manager's SIGTERM. The process stops once no run has used it for ``IDLE_S``
seconds, at once when another process holds its name, and once its runs have ended when
a newer warm process of the same home (another distetl, Python or environment) is ready. Only commands of its own user are
served (the peer's credentials, ``SO_PEERCRED``). A child killed by a signal is reported
to its command as 128 + N.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from distetl.handoff import address, warm_pids

__all__ = ["main", "WARM_MODULES"]

#: What a run imports, imported once before the first fork.
WARM_MODULES = (
    "distetl.cli", "distetl.engine.backfill", "distetl.engine.flow", "distetl.engine.runners",
    "distetl.engine.prefect_api", "distetl.engine.watch", "distetl.engine.loader", "distetl.ops.alerts",
    "distetl.ops.clusters", "distetl.storage", "prefect", "prefect.task_runners", "prefect_dask", "distributed",
    "distributed.dashboard.scheduler", "pandas", "pyarrow.parquet",
)


def _receive(conn: socket.socket, fds: list[int]) -> dict[str, Any]:
    """Read a command's request; the file descriptors it passed go into ``fds`` (the
    caller closes them, whatever happens)."""
    data = b""
    while not data.endswith(b"\n"):
        size = array.array("i").itemsize
        chunk, ancillary, _, _ = conn.recvmsg(1 << 20, socket.CMSG_SPACE(3 * size), socket.MSG_CMSG_CLOEXEC)
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(payload[: len(payload) - len(payload) % size])
                fds.extend(received)
        if not chunk:
            raise ConnectionError("the command went away before its request arrived")
        data += chunk
    return json.loads(data)


def _peer_uid(conn: socket.socket) -> int:
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


def _watch_command(conn: socket.socket) -> None:
    """In a child: SIGTERM to itself once the command's end of the socket closes."""
    with contextlib.suppress(OSError):
        while conn.recv(1024):
            pass
    os.kill(os.getpid(), signal.SIGTERM)


def _child(listener: socket.socket, conn: socket.socket, request: dict[str, Any], fds: list[int],
           others: list[socket.socket]) -> None:
    """Run one command in this forked child; never returns."""
    code = 1
    try:
        listener.close()
        for other in others:  # the connections of the warm process's other runs
            other.close()
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # before the command may relay one
        # Then, while errors still go to the warm process's log: a command that gave up
        # waiting (it then ran the run itself) has closed its end, and this fails.
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        argv = list(request["argv"])
        sys.argv = ["distetl", *argv]
        if sys.path and request.get("path0"):
            sys.path[0] = request["path0"]
        sys.stdout.reconfigure(line_buffering=os.isatty(1))  # type: ignore[union-attr]
        import dask
        import numpy
        import prefect.context

        dask.config.refresh()  # DASK_* as the command has them (the key pins them too)
        prefect.context.refresh_global_settings_context()  # the folder's .env, prefect.toml, profiles
        numpy.random.seed()  # a fork shares the parent's random state
        threading.Thread(target=_watch_command, args=(conn,), name="distetl-command-watch", daemon=True).start()
        from distetl import cli

        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except KeyboardInterrupt:
            code = 130
        except BrokenPipeError:  # the reader went away (`| head`): quietly, as the command does
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            code = 128 + signal.SIGPIPE
        except BaseException:  # noqa: BLE001 - the command's own crash: print it as Python would
            traceback.print_exc()
            code = 1
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join(timeout=30)
        _flush()
        import atexit

        atexit._run_exitfuncs()
        _flush()
    except KeyboardInterrupt:  # a Ctrl-C before the command started
        code = 130
    except BaseException:  # noqa: BLE001 - report and end the child, never the warm process
        with contextlib.suppress(Exception):
            traceback.print_exc()
        _flush()
    finally:
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"code": code}).encode() + b"\n")
        os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _reap(children: dict[int, socket.socket]) -> None:
    """Reap ended children; for one a signal killed, tell its command (128 + N) -- one
    that exited has reported its code itself."""
    for pid in list(children):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0
        if not done:
            continue
        conn = children.pop(pid)
        if os.WIFSIGNALED(status):
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"code": 128 + os.WTERMSIG(status)}).encode() + b"\n")
        conn.close()


def main(argv: list[str]) -> int:
    """Serve runs for the warm process ``argv[0]`` until idle for ``argv[1]`` seconds;
    ``argv[2]`` is its home, whose older warm processes it retires (SIGUSR1: they stop
    once their runs have ended)."""
    name, idle_s = argv[0], float(argv[1])
    home = Path(argv[2]) if len(argv) > 2 else Path.cwd()
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    retired: list[int] = []
    signal.signal(signal.SIGUSR1, lambda signum, _frame: retired.append(signum))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(address(name))
    except OSError:
        return 0  # another warm process has this name
    listener.listen(16)  # commands connecting while it imports wait in the backlog
    started = time.monotonic()
    for module in WARM_MODULES:
        try:
            __import__(module)
        except Exception:  # noqa: BLE001 - the child imports it again and reports the error
            traceback.print_exc()
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if threads:
        print(f"distetl warm process {name}: imports started threads {threads}; forking is unsafe, stopping",
              file=sys.stderr, flush=True)
        return 1
    older = [pid for pid in warm_pids(home) if pid != os.getpid()]
    print(f"distetl warm process {name} (pid {os.getpid()}): ready in {time.monotonic() - started:.1f} s",
          file=sys.stderr, flush=True)
    for pid in older:  # for an older distetl, Python or environment: no run will pick them
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)
    listener.settimeout(1.0)
    children: dict[int, socket.socket] = {}  # pid -> its command's connection
    last_used = time.monotonic()
    while True:
        _reap(children)
        if children:
            last_used = time.monotonic()
        elif retired or time.monotonic() - last_used > idle_s:
            return 0
        try:
            conn, _ = listener.accept()
        except (socket.timeout, InterruptedError):
            continue
        last_used = time.monotonic()
        fds: list[int] = []
        forked = False
        try:
            if _peer_uid(conn) != os.getuid():
                raise PermissionError("a command of another user")
            conn.settimeout(10.0)
            request = _receive(conn, fds)
            conn.settimeout(None)
            pid = os.fork()
            if pid == 0:
                _child(listener, conn, request, fds, list(children.values()))
            children[pid] = conn
            forked = True
        except (OSError, ValueError, ConnectionError) as exc:
            print(f"distetl warm process {name}: a command's request was refused or failed: {exc}",
                  file=sys.stderr, flush=True)
        finally:
            if not forked:
                conn.close()
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
