"""Worker plugins of distetl's local clusters: a close free of a spurious traceback,
and worker processes that leave a terminal's Ctrl-C to the driver.

When a cluster closes, each worker stops its periodic heartbeat and then closes its
connection pool. A heartbeat already waiting for the scheduler's answer at that moment
fails with ``CommClosedError`` and Dask logs it at ERROR with a full traceback
("Failed to communicate with scheduler during heartbeat."), although nothing went
wrong: the worker itself closed the connection. A slow scheduler (a busy driver) widens
the window; ``serve``'s SIGTERM and a run's end then print a traceback now and then.

:class:`QuietClose` installs a logging filter in the worker's process that drops that
one message while no worker of the process is running (all closing or closed). A
heartbeat failure while a worker runs (the scheduler is gone, the network broke) is
still logged in full.

:class:`NoCtrlC` makes the worker's process ignore SIGINT as the worker starts. Ctrl-C
signals the terminal's whole process group: worker processes would each die of it with
a traceback while the driver stops the run cleanly (:mod:`distetl.engine.stopping`) and
closes them itself. The driver keeps its own handler all along, so a Ctrl-C while a
local cluster starts stops the run (a worker still starting may die of it then).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from distributed import WorkerPlugin

__all__ = ["QuietClose", "NoCtrlC", "HEARTBEAT_FAILED"]

#: The start of the message Dask logs when a heartbeat fails.
HEARTBEAT_FAILED = "Failed to communicate with scheduler during heartbeat"

_LOGGER = "distributed.worker"


class _ClosingHeartbeatFilter(logging.Filter):
    """Drops the heartbeat failure while no worker in this process is running."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(HEARTBEAT_FAILED):
            return True
        return _any_worker_running()


def _any_worker_running() -> bool:
    from distributed.core import Status
    from distributed.worker import Worker

    running = {Status.running, Status.paused, Status.closing_gracefully}
    return any(w.status in running for w in list(getattr(Worker, "_instances", ())))


class QuietClose(WorkerPlugin):
    """Installs the closing-heartbeat filter once per worker process."""

    name = "distetl-quiet-close"

    def setup(self, worker: Any) -> None:
        logger = logging.getLogger(_LOGGER)
        if not any(isinstance(f, _ClosingHeartbeatFilter) for f in logger.filters):
            logger.addFilter(_ClosingHeartbeatFilter())


class NoCtrlC(WorkerPlugin):
    """Makes the worker's process ignore SIGINT (from its main thread, where a worker
    process started by a nanny runs its event loop; elsewhere it does nothing)."""

    name = "distetl-no-ctrl-c"

    def setup(self, worker: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
