"""Stopping a run cleanly on SIGINT or SIGTERM.

Plain Python: nothing here imports Prefect or Dask. A :class:`StopSignal` is installed
around the part of a run that computes. The first SIGINT or SIGTERM sets its event and
runs its callbacks (in a thread of their own, never inside the signal handler), so the
run can cancel its outstanding batches, mark its flow run Cancelled and write its
manifest. A second signal ends the process at once with the conventional exit code
(130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, Callable, Optional

__all__ = ["RunInterrupted", "StopSignal", "exit_code_for"]

_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


def exit_code_for(signum: int) -> int:
    """The shell's exit code for a process ended by ``signum`` (128 + the number)."""
    return 128 + int(signum)


class RunInterrupted(KeyboardInterrupt):
    """Raised by :func:`distetl.run` after a run stopped on SIGINT or SIGTERM.

    The run has already cancelled its outstanding batches, kept every committed chunk,
    marked its Prefect flow run Cancelled and written its manifest.

    Attributes:
        report: The run's :class:`~distetl.state.manifest.RunReport` (``report.interrupted``
            names the signal).
        signum: The signal number.
    """

    def __init__(self, report: Any, signum: int):
        self.report = report
        self.signum = signum
        super().__init__(f"run {getattr(report, 'run_id', '')} stopped by {_NAMES.get(signum, signum)}")

    @property
    def exit_code(self) -> int:
        """130 for SIGINT, 143 for SIGTERM."""
        return exit_code_for(self.signum)


class StopSignal:
    """The stop request of one run: set by the first SIGINT/SIGTERM, or by :meth:`request`.

    Use as a context manager in the main thread to install the handlers (elsewhere it
    only offers :meth:`request`). Handlers are restored on exit.

    Args:
        on_second: Called with the signal number when a second signal arrives, just
            before the process exits (e.g. to print a line).
    """

    def __init__(self, on_second: Optional[Callable[[int], None]] = None):
        self.event = threading.Event()
        self.signum: Optional[int] = None
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._previous: dict[int, Any] = {}
        self._on_second = on_second

    @property
    def stopped(self) -> bool:
        """Whether a stop was requested."""
        return self.event.is_set()

    @property
    def name(self) -> Optional[str]:
        """``SIGINT``, ``SIGTERM``, or None when no stop was requested."""
        return _NAMES.get(self.signum, str(self.signum)) if self.signum is not None else None

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (in its own thread) when the stop is requested; at once if it
        already was."""
        with self._lock:
            if not self.event.is_set():
                self._callbacks.append(callback)
                return
        threading.Thread(target=callback, name="distetl-stop", daemon=True).start()

    def request(self, signum: int = signal.SIGINT) -> None:
        """Ask the run to stop, as the first signal would.

        Takes no lock (it runs in the signal handler, which may interrupt a thread
        holding one): it sets the event, and a thread of its own runs the callbacks.
        """
        if self.event.is_set():
            return
        self.signum = signum
        self.event.set()
        threading.Thread(target=self._fire, name="distetl-stop", daemon=True).start()

    def _fire(self) -> None:
        with self._lock:
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            threading.Thread(target=callback, name="distetl-stop", daemon=True).start()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            if self._on_second is not None:
                try:
                    self._on_second(signum)
                except Exception:  # noqa: BLE001 - exiting regardless
                    pass
            sys.stderr.flush()
            os._exit(exit_code_for(self.signum or signum))
        self.request(signum)

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for signum in _NAMES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def reinstall(self) -> None:
        """Install the handlers again (in the main thread, while in the ``with`` block),
        over whatever a library put in their place since (Prefect's flow engine installs
        a SIGTERM handler of its own for each flow run and restores ours after it)."""
        if self._previous and threading.current_thread() is threading.main_thread():
            for signum in _NAMES:
                signal.signal(signum, self._handle)

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
