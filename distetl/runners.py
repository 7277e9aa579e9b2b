"""Where chunk tasks run: a local Dask cluster, a remote scheduler, or one thread.

This module builds the Prefect task runner and checks, before anything is planned as
running, that a remote scheduler answers.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from distetl.errors import ClusterError, ConfigError

__all__ = ["RunnerSpec", "SCHEDULER_ENV"]

SCHEDULER_ENV = "DISTETL_SCHEDULER"
RUNNERS = ("local", "remote", "sequential")


@dataclass(frozen=True)
class RunnerSpec:
    """Which runner a backfill uses.

    Attributes:
        kind: ``local`` (a LocalCluster, one process per worker, one thread each),
            ``remote`` (an existing scheduler), or ``sequential`` (Prefect's
            ``ThreadPoolTaskRunner(max_workers=1)``: the baseline).
        workers: Worker processes for ``local``; defaults to the number of cores.
        scheduler: ``tcp://host:port`` for ``remote``.
        connect_timeout: Seconds to wait for a remote scheduler.
    """

    kind: str = "local"
    workers: int | None = None
    scheduler: str | None = None
    connect_timeout: float = 10.0

    @classmethod
    def from_options(
        cls, runner: str | None, workers: int | None, scheduler: str | None, connect_timeout: float = 10.0
    ) -> "RunnerSpec":
        """Resolve command-line options and ``DISTETL_SCHEDULER`` into one spec.

        A scheduler address (flag or environment) implies ``remote``.

        Raises:
            ConfigError: On conflicting or unknown options.
        """
        scheduler = scheduler or os.environ.get(SCHEDULER_ENV) or None
        kind = runner or ("remote" if scheduler else "local")
        if kind not in RUNNERS:
            raise ConfigError(f"--runner one of {', '.join(RUNNERS)}", repr(kind), "pass --runner local")
        if kind == "remote" and not scheduler:
            raise ConfigError(
                "a scheduler address for --runner remote", "none",
                f"pass --scheduler tcp://HOST:8786 or set {SCHEDULER_ENV}",
            )
        if scheduler and kind != "remote":
            raise ConfigError(
                f"no scheduler address with --runner {kind}", repr(scheduler),
                f"drop --runner {kind} (the address implies remote) or unset {SCHEDULER_ENV}",
            )
        if workers is not None and workers < 1:
            raise ConfigError("--workers 1 or more", str(workers), "pass e.g. --workers 2")
        if workers is not None and kind != "local":
            raise ConfigError(
                f"--workers only with --runner local", f"--workers {workers} with {kind}",
                "size a remote cluster where it is started (distetl cluster up --workers N)",
            )
        return cls(kind=kind, workers=workers, scheduler=scheduler, connect_timeout=connect_timeout)

    @property
    def n_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    def check(self) -> None:
        """Fail fast when a remote scheduler cannot be reached.

        Raises:
            ClusterError: With the address and the fix, within ``connect_timeout``.
        """
        if self.kind != "remote":
            return
        parsed = urlparse(self.scheduler if "://" in self.scheduler else f"tcp://{self.scheduler}")
        if parsed.scheme not in ("tcp", "tls") or not parsed.hostname or not parsed.port:
            raise ClusterError(
                "a scheduler address like tcp://HOST:8786", repr(self.scheduler),
                "pass --scheduler tcp://HOST:PORT (tls://HOST:PORT with Dask security config)",
            )
        try:
            with socket.create_connection((parsed.hostname, parsed.port), timeout=self.connect_timeout):
                pass
        except OSError as exc:
            raise ClusterError(
                f"a Dask scheduler listening at {self.scheduler}",
                f"{type(exc).__name__}: {exc}",
                "start one (distetl cluster up, or `dask scheduler`) or fix --scheduler / "
                f"{SCHEDULER_ENV}; raise --connect-timeout for slow networks",
            ) from None

    def task_runner(self) -> Any:
        """The Prefect task runner for this spec."""
        if self.kind == "sequential":
            from prefect.task_runners import ThreadPoolTaskRunner

            return ThreadPoolTaskRunner(max_workers=1)
        from prefect_dask import DaskTaskRunner

        if self.kind == "remote":
            return DaskTaskRunner(
                address=self.scheduler,
                client_kwargs={"timeout": f"{self.connect_timeout}s"},
            )
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": self.n_workers,
                "threads_per_worker": 1,
                "processes": True,
                "host": "127.0.0.1",
                "dashboard_address": ":0",
            },
        )

    def describe(self) -> str:
        if self.kind == "local":
            return f"local Dask cluster, {self.n_workers} worker process(es)"
        if self.kind == "remote":
            return f"remote Dask scheduler {self.scheduler}"
        return "sequential (one thread)"
