"""Run a Prefect API server (uvicorn) that stops when the process that started it dies.

``python -m distetl.engine.uvicorn_child uvicorn ARGS…``: ``ARGS`` go to uvicorn. The parent holds the
write end of this process's stdin; when the parent exits -- even by SIGKILL -- stdin
reads end-of-file and the server shuts down gracefully (SIGTERM to itself), so a killed
driver does not leave its embedded Prefect server running.

``python -m distetl.engine.uvicorn_child --keep HOME SECONDS uvicorn ARGS…``: a kept
server (:mod:`distetl.engine.servers`), not tied to its starter: it shuts down once no
live process has used the database under ``HOME`` for ``SECONDS`` seconds.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

__all__ = ["main"]

#: Seconds a server may take to shut down after its parent died before it is ended.
GRACE_SECONDS = 20.0


def _watch_parent() -> None:
    try:
        while sys.stdin.buffer.read(1 << 16):
            pass
    except (OSError, ValueError):
        pass
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_SECONDS)
    os._exit(0)


def _watch_use(home: str, idle_s: float) -> None:
    from distetl.engine.servers import retire_when_idle

    try:
        retire_when_idle(Path(home), idle_s)
    finally:  # idle, or its home is gone: either way the server stops
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_SECONDS)
    os._exit(0)


def main(argv: list[str]) -> None:
    """Start the watchdog (of the parent's stdin, or with ``--keep`` of the database's
    use), then run uvicorn with ``argv`` (after ``uvicorn``)."""
    if argv[:1] == ["--keep"]:
        home, idle_s, argv = argv[1], float(argv[2]), argv[3:]
        watch = threading.Thread(target=_watch_use, args=(home, idle_s), name="distetl-idle-watch", daemon=True)
    else:
        watch = threading.Thread(target=_watch_parent, name="distetl-parent-watch", daemon=True)
    if argv and argv[0] == "uvicorn":
        argv = argv[1:]
    watch.start()
    import uvicorn.main

    sys.argv = ["uvicorn", *argv]
    uvicorn.main.main()


if __name__ == "__main__":
    main(sys.argv[1:])
