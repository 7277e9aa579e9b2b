"""A chunk's own log lines: what user code logs (``logging``) and warns (``warnings``)
while the chunk runs on a worker, carried back with its result.

A handler on the root logger (installed once per process, see :func:`capture`) keeps
records of the threads that run a chunk at the moment, each into that chunk's
:class:`ChunkLog`; records of other threads go on as before (to the root's other
handlers, or to ``logging.lastResort`` when it has none). Warnings reach it through
``logging.captureWarnings`` (shown as Python shows them: once per place by default).
A chunk keeps its last :data:`MAX_LINES` lines and :data:`MAX_BYTES` bytes and counts
the ones it dropped. A chunk that logs nothing costs a thread-local lookup per record
of its thread and nothing else. On a Dask worker the root logger's level is lowered to
INFO (a chunk's ``logger.info`` lines are kept); a chunk run in the driver's own process
(``--runner sequential``) keeps what the driver's logging levels let through.

Plain Python: no Prefect, no Dask.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from typing import Iterator, Optional

__all__ = ["ChunkLog", "capture", "MAX_LINES", "MAX_BYTES"]

#: Lines kept per chunk (the last ones).
MAX_LINES = 50
#: Bytes kept per chunk (the last lines that fit).
MAX_BYTES = 20_000

_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")


class ChunkLog:
    """The last lines one chunk logged, and how many it dropped."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque()
        self.size = 0
        self.dropped = 0

    def add(self, line: str) -> None:
        line = line[:MAX_BYTES]
        self.lines.append(line)
        self.size += len(line) + 1
        while len(self.lines) > MAX_LINES or self.size > MAX_BYTES:
            self.size -= len(self.lines.popleft()) + 1
            self.dropped += 1

    def text(self) -> Optional[str]:
        """The kept lines, after a line counting the dropped ones (None: nothing logged)."""
        if not self.lines:
            return None
        head = [f"[{self.dropped} earlier line(s) dropped; the last {len(self.lines)} kept]"] if self.dropped else []
        return "\n".join(head + list(self.lines))


class _Router(logging.Handler):
    """Root handler: a record of a thread running a chunk goes to that chunk's log."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        log = getattr(self.local, "log", None)
        if log is None:
            root = logging.getLogger()
            if record.levelno >= logging.WARNING and root.handlers == [self] and logging.lastResort is not None:
                logging.lastResort.handle(record)  # as without this handler
            return
        try:
            log.add(_FORMAT.format(record))
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is skipped
            pass


_ROUTER: Optional[_Router] = None
_LOCK = threading.Lock()


def _router() -> _Router:
    global _ROUTER
    with _LOCK:
        if _ROUTER is None:
            _ROUTER = _Router()
            root = logging.getLogger()
            root.addHandler(_ROUTER)
            if _on_worker() and root.level > logging.INFO:
                root.setLevel(logging.INFO)  # so a chunk's info lines reach the handler
            logging.captureWarnings(True)
        return _ROUTER


def _on_worker() -> bool:
    """Whether this is a Dask worker process (its root logger is distetl's to set; in a
    driver running chunks in-process, the root's level stays the user's)."""
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def capture(log: ChunkLog) -> Iterator[ChunkLog]:
    """Keep the log records of this thread in ``log`` for the block."""
    router = _router()
    previous = getattr(router.local, "log", None)
    router.local.log = log
    try:
        yield log
    finally:
        router.local.log = previous
