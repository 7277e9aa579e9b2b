"""One run per output at a time: the run lease ``{output}/_distetl/{pipeline}/lease.json``.

A run of a pipeline takes the lease of its output before any compute and holds it to the
end. The lease is a small JSON document naming the run (run id, host, pid, start time,
Prefect flow run and API) with a heartbeat the holder rewrites every few seconds.

* **Taking it** is an atomic create: locally a file linked into place only if nothing is
  there (see :meth:`distetl.storage.Storage.write_new`); on S3 a create-only ``PutObject``
  (``If-None-Match: *``). Of two runs starting together, exactly one gets it.
* **A live holder** (its heartbeat younger than the TTL, and, on the same host, its pid
  alive) makes the next run fail with :class:`~distetl.errors.ConfigError` (exit code 2)
  naming it. ``--force`` does not override this.
* **A holder that is gone** (same host and its pid no longer runs, or no heartbeat for
  the TTL) is taken over under a short-lived takeover lock ``lease.json.takeover``
  (itself created create-only, so of several runs taking over at once exactly one
  does): re-read the lease, and if it is still the one judged stale, delete it and
  create ours create-only. Where creates are not exclusive (S3 with
  ``create_only=false``, other object stores) the new lease is read back to check it
  names this run. The caller learns who held it (to say so and to mark its Prefect
  flow run Crashed).

This module uses no Prefect and no Dask.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from distetl.errors import ConfigError
from distetl.storage import Storage

__all__ = ["LeaseInfo", "RunLease", "TakenOver", "lease_ttl", "parse_time", "pid_alive", "DEFAULT_TTL",
           "HEARTBEAT_EVERY", "TAKEOVER_LOCK_TTL"]

log = logging.getLogger("distetl.state.lease")

#: Seconds without a heartbeat after which a lease is considered abandoned.
DEFAULT_TTL = 60.0

#: Seconds between heartbeats (at most; a third of the TTL when that is shorter).
HEARTBEAT_EVERY = 5.0

#: Seconds after which a takeover lock (held for a few storage calls) counts as left
#: behind by a run that died while taking over.
TAKEOVER_LOCK_TTL = 10.0

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def lease_ttl() -> float:
    """The lease TTL in seconds: ``DISTETL_LEASE_TTL``, else :data:`DEFAULT_TTL`.

    Raises:
        ConfigError: If ``DISTETL_LEASE_TTL`` is not a positive number.
    """
    raw = os.environ.get("DISTETL_LEASE_TTL")
    if not raw:
        return DEFAULT_TTL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError("DISTETL_LEASE_TTL as a positive number of seconds", repr(raw),
                          f"set e.g. DISTETL_LEASE_TTL=60, or unset it (default {DEFAULT_TTL:.0f})")
    return value


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime(_TIME_FORMAT)


def parse_time(stamp: str) -> float:
    """Seconds since the epoch of a UTC time as leases and manifests write it
    (``2024-01-02T03:04:05Z``, with or without fractions of a second).

    Raises:
        ValueError: If it is not such a time.
    """
    text = stamp.rstrip("Z")
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S"):
        try:
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.timezone.utc).timestamp()
        except ValueError:
            continue
    raise ValueError(f"not a lease time: {stamp!r}")


def _short(stamp: str) -> str:
    """A lease time for messages: to the second."""
    return stamp.split(".")[0].rstrip("Z") + "Z" if stamp else "?"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


@dataclass
class LeaseInfo:
    """The content of a lease: who holds it and since when.

    Attributes:
        pipeline: The pipeline's name.
        run_id: The holding run's id (as in its manifest).
        host: Host name of the run's driver.
        pid: Process id of the run's driver on ``host``.
        started_at: When the run started (UTC, ISO 8601).
        heartbeat_at: The holder's last heartbeat (UTC, ISO 8601).
        flow_run_id: The run's Prefect flow run, once it exists.
        prefect_api: The Prefect API that flow run is recorded at.
    """

    pipeline: str
    run_id: str
    host: str
    pid: int
    started_at: str
    heartbeat_at: str
    flow_run_id: Optional[str] = None
    prefect_api: Optional[str] = None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "LeaseInfo":
        """Parse a lease document.

        Raises:
            ValueError: If it is not a complete lease.
        """
        raw = json.loads(data.decode())
        if not isinstance(raw, dict):
            raise ValueError("a lease is a JSON object")
        names = set(cls.__dataclass_fields__)
        info = cls(**{k: v for k, v in raw.items() if k in names})
        info.pid = int(info.pid)
        parse_time(info.heartbeat_at)
        return info

    def describe(self) -> str:
        """``run 1a2b3c4d (pid 123 on host h, started …, last heartbeat …)``."""
        return (f"run {self.run_id[:8]} (pid {self.pid} on {self.host}, started {_short(self.started_at)}, "
                f"last heartbeat {_short(self.heartbeat_at)})")


@dataclass
class TakenOver:
    """A lease this run took over from a run that is gone.

    Attributes:
        previous: The lease as the gone run left it.
        reason: Why it counts as gone (dead pid, or no heartbeat for the TTL).
    """

    previous: LeaseInfo
    reason: str

    def message(self) -> str:
        """What the run says about it."""
        p = self.previous
        return (f"took over the lease of run {p.run_id[:8]} (pid {p.pid} on {p.host}, "
                f"last heartbeat {_short(p.heartbeat_at)}): {self.reason}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.previous), "reason": self.reason}


@dataclass
class RunLease:
    """The lease of one pipeline on one output, for one run.

    Use as a context manager: entering acquires it and starts the heartbeat; leaving
    stops the heartbeat and deletes the lease if it still names this run.

    Args:
        storage: The output's storage.
        output: The output root (normalised, as ``Targets.output``).
        pipeline: The pipeline's name.
        run_id: This run's id.
        started_at: This run's start time (UTC, ISO 8601); now if empty.
        ttl: Seconds without a heartbeat after which a lease is abandoned (default
            :func:`lease_ttl`).
        heartbeat_every: Seconds between heartbeats (default: 5, or a third of the TTL).

    Attributes:
        taken_over: Set by :meth:`acquire` when the lease of a gone run was taken over.
        lost: Set by the heartbeat if another run took the lease from this one.
    """

    storage: Storage
    output: str
    pipeline: str
    run_id: str
    started_at: str = ""
    ttl: Optional[float] = None
    heartbeat_every: Optional[float] = None
    taken_over: Optional[TakenOver] = field(default=None, init=False)
    lost: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.ttl = float(self.ttl) if self.ttl is not None else lease_ttl()
        self.heartbeat_every = self.heartbeat_every or min(HEARTBEAT_EVERY, self.ttl / 3)
        now = _now()
        self.info = LeaseInfo(self.pipeline, self.run_id, socket.gethostname(), os.getpid(),
                              self.started_at or now, now)
        self.held = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        """Where the lease lives: ``{output}/_distetl/{pipeline}/lease.json``."""
        return f"{self.output.rstrip('/')}/_distetl/{self.pipeline}/lease.json"

    # -- acquire -----------------------------------------------------------------------

    def acquire(self, timeout: float = 20.0) -> Optional[TakenOver]:
        """Take the lease: create it, or take over the lease of a run that is gone.

        Args:
            timeout: Seconds to keep trying while other runs take the same lease over.

        Returns:
            The previous holder when its lease was taken over (also in
            :attr:`taken_over`), else None.

        Raises:
            ConfigError: If a live run holds the lease, naming it and the fix.
            StorageError, OSError: If the storage cannot be used.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.info.heartbeat_at = _now()
            if self.storage.write_new(self.url, self.info.to_bytes()) and (
                    self.storage.creates_exclusively or self._still_ours()):
                self.held = True
                return None
            found = self._read()
            if found is not None:
                current, raw = found
                reason = self._gone(current, raw)
                if reason is None:
                    raise self._live_error(current)
                if self._take_over(raw):
                    unknown = LeaseInfo(self.pipeline, "unknown", "unknown", 0, "", "")
                    self.taken_over = TakenOver(current or unknown, reason)
                    self.held = True
                    return self.taken_over
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"to take the lease {self.url}", f"other runs taking it over at the same time for {timeout:.0f}s",
                    f"run again; if it keeps happening and no run of {self.pipeline!r} is starting, "
                    f"delete {self.takeover_url}",
                )
            time.sleep(0.05)

    def _read(self) -> Optional[tuple[Optional[LeaseInfo], bytes]]:
        """The lease now: ``(info, raw bytes)``; info is None if it stays unreadable
        (a torn or foreign file); None if there is no lease."""
        for attempt in range(5):
            raw = self.storage.read_bytes(self.url)
            if raw is None:
                return None
            try:
                return LeaseInfo.from_bytes(raw), raw
            except (ValueError, TypeError, KeyError):
                time.sleep(0.1 * (attempt + 1))
        return None if raw is None else (None, raw)

    def _gone(self, current: Optional[LeaseInfo], raw: bytes) -> Optional[str]:
        """Why the holder counts as gone, or None if it is live."""
        if current is None:
            modified = self.storage.mtime(self.url)
            if modified is not None and time.time() - modified > self.ttl:
                return f"its lease file is unreadable and older than the TTL ({self.ttl:.0f}s)"
            raise ConfigError(
                f"a readable lease at {self.url}", f"{len(raw)} bytes that are not a lease",
                f"if no run of {self.pipeline!r} is active on this output, delete {self.url}",
            )
        age = time.time() - parse_time(current.heartbeat_at)
        if current.host == socket.gethostname() and not pid_alive(current.pid):
            return f"its driver is gone (no process {current.pid} on {current.host})"
        if age > self.ttl:
            return f"its driver is gone (no heartbeat for {age:.0f}s; TTL {self.ttl:.0f}s)"
        return None

    @property
    def takeover_url(self) -> str:
        """The short-lived lock a run holds while it replaces a gone run's lease."""
        return f"{self.url}.takeover"

    def _take_over(self, stale: bytes) -> bool:
        """Replace the lease judged stale with ours, if it is still exactly that one.

        Under the takeover lock (created create-only, held for a few storage calls), so
        of several runs taking over at once one replaces the lease and the others then
        find it live. Runs that find no lease at all create it create-only and need no
        lock. A lock left by a taker that died is removed once its pid is gone (same
        host) or it is older than :data:`TAKEOVER_LOCK_TTL`.

        Returns:
            True if this run now holds the lease.
        """
        if not self.storage.write_new(self.takeover_url, self.info.to_bytes()):
            self._clear_stale_takeover_lock()
            return False
        try:
            if self.storage.read_bytes(self.url) != stale:
                return False  # renewed, released or taken over meanwhile
            self.storage.delete(self.url)
            self.info.heartbeat_at = _now()
            return self.storage.write_new(self.url, self.info.to_bytes()) and (
                self.storage.creates_exclusively or self._still_ours())
        finally:
            self.storage.delete(self.takeover_url)

    def _clear_stale_takeover_lock(self) -> None:
        raw = self.storage.read_bytes(self.takeover_url)
        if raw is None:
            return
        try:
            holder = LeaseInfo.from_bytes(raw)
            dead = holder.host == socket.gethostname() and not pid_alive(holder.pid)
            old = time.time() - parse_time(holder.heartbeat_at) > TAKEOVER_LOCK_TTL
        except (ValueError, TypeError, KeyError):
            modified = self.storage.mtime(self.takeover_url)
            dead, old = False, modified is not None and time.time() - modified > TAKEOVER_LOCK_TTL
        if (dead or old) and self.storage.read_bytes(self.takeover_url) == raw:
            log.warning("distetl: removing the takeover lock %s left by a run that died taking over",
                        self.takeover_url)
            self.storage.delete(self.takeover_url)

    def _still_ours(self) -> bool:
        found = self._read()
        return found is not None and found[0] is not None and found[0].run_id == self.run_id

    def _live_error(self, current: LeaseInfo) -> ConfigError:
        return ConfigError(
            f"no other live run of pipeline {self.pipeline!r} on {self.output}",
            f"{current.describe()} holding {self.url}",
            f"wait for it to finish, or stop it (kill {current.pid} on host {current.host}); if that "
            f"host is gone, the lease expires {self.ttl:.0f}s after its last heartbeat "
            "(DISTETL_LEASE_TTL) and the next run takes it over. --force does not override a live run",
        )

    # -- while held ----------------------------------------------------------------------

    def set_flow_run(self, flow_run_id: str, api_url: Optional[str] = None) -> None:
        """Record the run's Prefect flow run (and its API) in the lease at once.

        Args:
            flow_run_id: The flow run's id.
            api_url: Its Prefect API; default ``PREFECT_API_URL`` of this process.
        """
        self.info.flow_run_id = flow_run_id
        self.info.prefect_api = api_url or os.environ.get("PREFECT_API_URL")
        if self.held:
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - the next heartbeat writes it
                log.warning("distetl: could not record the flow run in the lease (%s: %s)", type(exc).__name__, exc)

    def beat(self) -> bool:
        """Rewrite the heartbeat, if the lease still names this run.

        Returns:
            False (and logs a warning, once) if another run has taken the lease.
        """
        with self._lock:
            if not self.held or self.lost:
                return False
            found = self._read()
            current = found[0] if found else None
            if current is None or current.run_id != self.run_id:
                self.lost = True
                holder = current.describe() if current else "nobody"
                log.warning("distetl: the lease %s no longer names this run %s (now: %s); another run "
                            "of %r may be writing the same output", self.url, self.run_id[:8], holder,
                            self.pipeline)
                return False
            self.info.heartbeat_at = _now()
            self.storage.write_atomic(self.url, self.info.to_bytes())
            return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            try:
                if not self.beat() and self.lost:
                    return
            except Exception as exc:  # noqa: BLE001 - a missed beat is not fatal; the next may work
                log.warning("distetl: lease heartbeat failed (%s: %s); retrying", type(exc).__name__, exc)

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it still names this run."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._lock:
            if not self.held:
                return
            self.held = False
            try:
                if not self.lost and self._still_ours():
                    self.storage.delete(self.url)
            except Exception as exc:  # noqa: BLE001 - never hide the run's own outcome
                log.warning("distetl: could not release the lease %s (%s: %s); the next run takes it over "
                            "once this process has exited, or TTL after its last heartbeat", self.url, type(exc).__name__, exc)

    def __enter__(self) -> "RunLease":
        self.acquire()
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="distetl-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
