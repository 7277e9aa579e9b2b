"""The Prefect API a run reports to: the user's, or one distetl starts for the run.

Prefect's own ephemeral mode starts a server inside every process that lacks
``PREFECT_API_URL`` -- each Dask worker would start its own on the same SQLite file --
and drops task-run records at exit. distetl instead starts one server subprocess on a
free loopback port and points the driver and every worker at it through
``PREFECT_API_URL``.

That server is *kept* (:func:`keep_seconds`): it outlives the run, every later run on the
same ``DISTETL_HOME`` reports to it instead of paying its ~3 s start, and it stops by
itself once no run has used it for ``DISTETL_KEEP_SERVER`` seconds (600 by default; 0
starts one server per run and stops it with the run, after the run's records landed).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import math
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple

from distetl.engine.servers import (client, kept_lock, kept_server, live_servers, pid_alive, record_kept, registered,
                                    running_ui)
from distetl.errors import ConfigError
from distetl.state.results import PHASES, describe_warnings

__all__ = ["quiet_prefect_env", "override_settings", "prefect_api", "state_home", "EmbeddedServer", "launch_early",
           "stop_early", "mark_crashed", "keep_seconds", "KEEP_ENV", "DEFAULT_KEEP_S"]

#: Seconds distetl's own Prefect server stays up after the last run that used it.
KEEP_ENV = "DISTETL_KEEP_SERVER"
DEFAULT_KEEP_S = 600.0

#: Prefect server services a per-run server does without: they serve deployments,
#: schedules, work pools, pauses, concurrency leases and automations, none of which a
#: backfill's own short-lived server has. Each polls its database every few seconds,
#: which on a laptop takes CPU from the workers. Task-run recording and event storage
#: stay on. A user's environment variable for a service wins.
BACKFILL_OFF_SERVICES = (
    "SCHEDULER", "LATE_RUNS", "FOREMAN", "PAUSE_EXPIRATIONS", "REPOSSESSOR",
    "CANCELLATION_CLEANUP", "CLEANUP_RECONCILER", "TRIGGERS", "DB_VACUUM",
)


#: API URLs of the servers distetl started for runs in this process (their UI is off):
#: per-run and kept ones.
EMBEDDED_URLS: set[str] = set()

#: Kept servers' API URLs (of :data:`EMBEDDED_URLS`) and their idle time in seconds.
KEPT_URLS: dict[str, float] = {}

#: The kept servers this process launched (kept so that no ``Popen`` is collected while
#: its process runs on).
_KEPT_PROCESSES: list[subprocess.Popen[bytes]] = []


def keep_seconds() -> float:
    """How long distetl's own Prefect server stays up after the last run that used it:
    ``$DISTETL_KEEP_SERVER`` seconds, :data:`DEFAULT_KEEP_S` when unset; 0 starts one
    server per run and stops it with the run.

    Raises:
        ConfigError: The variable is not a number of seconds ≥ 0.
    """
    raw = os.environ.get(KEEP_ENV, "").strip()
    if not raw:
        return DEFAULT_KEEP_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(
            f"{KEEP_ENV} as seconds ≥ 0 (how long distetl's Prefect server stays up after the last run; "
            "0 stops it with each run)", repr(raw),
            f"set {KEEP_ENV}={DEFAULT_KEEP_S:.0f} (or 0), or unset it for the default")
    return seconds


def quiet_prefect_env() -> None:
    """Offline-friendly defaults: no telemetry, no analytics (set only if unset)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.3")


def state_home() -> Path:
    """Where distetl keeps local state (the embedded Prefect database): ``$DISTETL_HOME``
    or ``./.distetl``."""
    return Path(os.environ.get("DISTETL_HOME") or Path.cwd() / ".distetl").resolve()


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api_healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether a Prefect API answers its health check."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class EmbeddedServer:
    """A Prefect API server subprocess on 127.0.0.1 with its database under ``home``.

    Args:
        home: Directory for ``PREFECT_HOME`` (database, logs).
        port: Port to bind; a free one when None.
        ui: Serve Prefect's UI too.
        tied: Stop the server when this process dies, however it dies (its stdin is a
            pipe from this process; see :mod:`distetl.engine.uvicorn_child`). False for a server that
            must outlive its starter (``distetl cluster up``).
        all_services: Run every Prefect server service. False (a per-run server) turns
            off those in :data:`BACKFILL_OFF_SERVICES`.
        host: Address to listen on (``distetl ui --host``).
        connect_host: Address this process reaches it at (default: ``host``).
        ui_api_url: The API URL the UI in a browser calls (default: :attr:`url`).
        keep: For a kept server: the seconds without any user after which it stops by
            itself (:mod:`distetl.engine.servers`); it is not tied to this process.
    """

    def __init__(self, home: Path, port: int | None = None, ui: bool = False, tied: bool = True,
                 all_services: bool = False, host: str = "127.0.0.1", connect_host: str | None = None,
                 ui_api_url: str | None = None, keep: float = 0.0):
        self.keep = keep
        self.host = host
        self.connect_host = connect_host or host
        self.ui_api_url = ui_api_url
        self.home = Path(home)
        self.port = port or _free_port()
        self.ui = ui
        self.tied = tied
        self.all_services = all_services
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.connect_host}:{self.port}/api"

    def start(self, timeout: float = 90.0) -> str:
        """Start the server (unless :meth:`launch` did) and wait until it answers.
        Returns the API URL.

        Raises:
            ConfigError: If the server does not come up in ``timeout`` seconds.
        """
        if self.process is None:
            self.launch()
        process = self.process
        assert process is not None
        try:
            return wait_answering(self.url, lambda: process.poll() is None, self.home, timeout)
        except ConfigError:
            self.stop()
            raise

    def launch(self) -> None:
        """Start the server process without waiting for it to answer (:meth:`start` waits)."""
        self.home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.pop("PREFECT_API_URL", None)
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_UI_ENABLED="1" if self.ui else "0",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            PREFECT_SERVER_API_HOST=self.host,
            PREFECT_SERVER_API_PORT=str(self.port),
        )
        if self.ui:
            env["PREFECT_UI_API_URL"] = self.ui_api_url or self.url
        if not self.all_services:
            for service in BACKFILL_OFF_SERVICES:
                env.setdefault(f"PREFECT_SERVER_SERVICES_{service}_ENABLED", "false")
        log = open(self.home / "server.log", "ab")
        if self.keep:
            launcher = ["-m", "distetl.engine.uvicorn_child", "--keep", str(self.home), repr(self.keep), "uvicorn"]
        else:
            launcher = ["-m", "distetl.engine.uvicorn_child", "uvicorn"] if self.tied else ["-m", "uvicorn"]
        self.process = subprocess.Popen(
            [sys.executable, *launcher, "--factory", "prefect.server.api.server:create_app",
             "--host", self.host, "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if self.tied and not self.keep else subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def stop(self) -> None:
        """Stop the server process."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stdin is not None:
            self.process.stdin.close()
        self.process = None


def wait_answering(url: str, running: Any, home: Path, timeout: float = 90.0) -> str:
    """Wait until the server at ``url`` answers; returns ``url``.

    Args:
        url: Its API URL.
        running: A callable saying whether its process still runs.
        home: Its ``PREFECT_HOME`` (for its log's tail in the error).
        timeout: Seconds to wait.

    Raises:
        ConfigError: It does not answer in ``timeout`` seconds, or its process ended.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running():
        if api_healthy(url, timeout=1.0):
            return url
        time.sleep(0.05)
    log = Path(home) / "server.log"
    tail = log.read_text(errors="replace")[-1500:] if log.is_file() else "(no log)"
    raise ConfigError(
        f"the embedded Prefect API to answer at {url} within {timeout:.0f}s",
        f"no answer; server log tail:\n{tail}",
        "check the log above, or start `prefect server start` yourself and set PREFECT_API_URL",
    )


class _Kept(NamedTuple):
    url: str
    pid: int
    idle_s: float
    launched: bool  # by this call


def _kept(database: Path, uses: contextlib.ExitStack, launch: bool) -> _Kept | None:
    """Register this process (in ``uses``) as a client of the kept server on
    ``database`` and return its URL, pid and idle seconds, launching one when none runs
    and ``launch``. None (and no registration) when none runs and not ``launch``, or when
    a ``distetl ui`` is recorded on the database (the run reports there)."""
    with kept_lock(database):
        if any(r.get("role") == "ui" for r in live_servers(database)):
            return None  # a `distetl ui` took the database: report there
        record = kept_server(database)
        if record is None and not launch:
            return None
        uses.enter_context(client(database))
        if record is not None:
            return _Kept(str(record["url"]), int(record["pid"]), float(record.get("idle_s") or 0), False)
        seconds = keep_seconds()
        server = EmbeddedServer(database, keep=seconds)
        server.launch()
        assert server.process is not None
        _KEPT_PROCESSES.append(server.process)
        record_kept(database, server.url, server.process.pid, seconds)
        return _Kept(server.url, server.process.pid, seconds, True)


#: Servers launched ahead of their run by :func:`launch_early`, by database folder.
_EARLY: dict[Path, EmbeddedServer] = {}

#: The client registrations :func:`launch_early` took on kept servers.
_EARLY_USES = contextlib.ExitStack()


def launch_early(home: Path | None = None) -> bool:
    """Launch the embedded server a later :func:`prefect_api` block will use, without
    waiting for it, so it starts while the caller loads the flow file and imports
    (``distetl run``: its ~3 s start then overlaps ~0.7 s of the run's own start).

    Nothing is launched when ``PREFECT_API_URL`` is set, a ``distetl ui`` is recorded
    on the database (the run reports there) or a kept server runs there (the command
    registers as its user at once). Returns whether a server was launched;
    :func:`stop_early` stops a per-run one no run used and ends the command's use of a
    kept one.

    Raises:
        ConfigError: ``DISTETL_KEEP_SERVER`` is not a number of seconds.
    """
    if os.environ.get("PREFECT_API_URL"):
        return False
    database = (home or state_home()) / "prefect"
    if database in _EARLY or any(r.get("role") == "ui" for r in live_servers(database)):
        return False
    launch = keep_seconds() > 0
    kept = _kept(database, _EARLY_USES, launch)
    if kept is not None or launch:  # launch and no kept server: a `distetl ui` took the database
        return kept is not None and kept.launched
    server = EmbeddedServer(database)
    server.launch()
    _EARLY[database] = server
    return True


def stop_early() -> None:
    """Stop the per-run servers :func:`launch_early` started that no run took, and end
    the command's use of kept ones (they stop once idle)."""
    _EARLY_USES.close()
    while _EARLY:
        _EARLY.popitem()[1].stop()


@contextlib.contextmanager
def prefect_api(home: Path | None = None, connect_timeout: float = 10.0) -> Iterator[str]:
    """Make every Prefect call in the block, on the driver and on workers, use one API.

    Uses ``PREFECT_API_URL`` when set (and checks it answers); otherwise a ``distetl ui``
    serving the database, else its kept server (launched if none runs; see
    :func:`keep_seconds`), else an :class:`EmbeddedServer` for the block. The URL is
    exported in ``os.environ`` (worker processes spawned in the block inherit it) and
    set in Prefect's settings context (serialised with each task to remote workers).

    Yields:
        The API URL.

    Raises:
        ConfigError: If ``PREFECT_API_URL`` is set but does not answer.
    """
    quiet_prefect_env()
    given = os.environ.get("PREFECT_API_URL")
    server: EmbeddedServer | None = None
    registration = contextlib.ExitStack()  # this run's server, recorded on its database
    if given:
        if not api_healthy(given, timeout=connect_timeout):
            raise ConfigError(
                f"a Prefect API answering at PREFECT_API_URL={given}",
                "no answer to /health",
                "start it (`prefect server start`) or unset PREFECT_API_URL to let "
                "distetl start its own",
            )
        url = given
    else:
        database = (home or state_home()) / "prefect"
        early = _EARLY.pop(database, None)  # launched ahead by launch_early
        url = running_ui(database) or ""  # a live `distetl ui` on this database: report there
        if url and early is not None:
            early.stop()
        if not url:
            kept = _kept(database, registration, launch=early is None and keep_seconds() > 0)
            if kept is not None:
                if early is not None:
                    early.stop()
                try:
                    url = wait_answering(kept.url, lambda: pid_alive(kept.pid), database)
                except BaseException:
                    registration.close()
                    raise
                EMBEDDED_URLS.add(url)
                KEPT_URLS[url] = kept.idle_s
            elif early is None:
                url = running_ui(database) or ""  # one registered meanwhile
        if not url:
            server = early or EmbeddedServer(database)
            registration.enter_context(registered(database, server.url, "run"))
            try:
                url = server.start()
            except BaseException:
                registration.close()
                raise
            EMBEDDED_URLS.add(url)
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with override_settings(api={"url": url}):
            yield url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        if server is not None:
            server.stop()
        registration.close()


@contextlib.contextmanager
def override_settings(**sections: Mapping[str, Any]) -> Iterator[None]:
    """Override Prefect settings for the block, e.g. ``override_settings(api={"url": u})``.

    Does what ``prefect.settings.temporary_settings`` does (a new settings context for
    the block) for a known, valid set of values, without re-validating every setting:
    ~0.1 ms instead of ~20 ms, paid on every run.

    Args:
        sections: Per settings section (``api``, ``flows``…), the fields to replace.
    """
    from prefect.context import SettingsContext, get_settings_context

    context = get_settings_context()
    settings = context.settings
    updates = {name: getattr(settings, name).model_copy(update=dict(fields)) for name, fields in sections.items()}
    with SettingsContext(profile=context.profile, settings=settings.model_copy(update=updates)):
        yield


def wait_for_task_runs(task_run_ids: list[str], timeout: float = 60.0) -> int:
    """Wait until every task run is recorded in a final state by the API.

    Task-run states reach Prefect's API as events, processed asynchronously; a process
    that exits (or a server that stops) too early loses them. Returns how many were
    recorded in a final state when it stopped waiting.
    """
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    wanted = [UUID(i) for i in task_run_ids]
    deadline = time.monotonic() + timeout
    recorded = 0
    with get_client(sync_client=True) as client:
        while True:
            recorded = 0
            for start in range(0, len(wanted), 200):
                runs = client.read_task_runs(
                    task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=wanted[start:start + 200])),
                    limit=200, sort=TaskRunSort.EXPECTED_START_TIME_ASC,
                )
                recorded += sum(1 for r in runs if r.state is not None and r.state.is_final())
            if recorded >= len(wanted) or time.monotonic() > deadline:
                return recorded
            time.sleep(0.2)


def mark_crashed(flow_run_id: str, message: str) -> tuple[str | None, int | None]:
    """Mark a flow run whose driver is gone, and its task runs not in a final state, Crashed.

    Uses the API of the current settings (inside :func:`prefect_api`). States are forced:
    nothing is left to report them otherwise. A flow run already in a final state is left
    as it is (its driver finished it before dying).

    Args:
        flow_run_id: The flow run to mark.
        message: The Crashed state's message.

    Returns:
        ``(state, task_runs_marked)``: the flow run's state type before (``"RUNNING"``…),
        or None if this API has no such flow run; and how many task runs were marked, or
        None if the flow run was left as it was (not found, or already final).
    """
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId
    from prefect.client.schemas.sorting import TaskRunSort
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        try:
            flow_run = client.read_flow_run(UUID(flow_run_id))
        except ObjectNotFound:
            return None, None
        before = flow_run.state.type.value if flow_run.state else "UNKNOWN"
        if flow_run.state is not None and flow_run.state.is_final():
            return before, None
        marked, offset = 0, 0
        only_this_run = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run.id]))
        while True:
            page = client.read_task_runs(task_run_filter=only_this_run, limit=200, offset=offset,
                                         sort=TaskRunSort.EXPECTED_START_TIME_ASC)
            for task_run in page:
                if task_run.state is None or not task_run.state.is_final():
                    client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
                    marked += 1
            if len(page) < 200:
                break
            offset += 200
        client.set_flow_run_state(flow_run.id, Crashed(message=message), force=True)
    return before, marked


#: Failed chunks listed in the flow run's summary artifact; the rest are counted.
FAILED_IN_ARTIFACT = 50


def publish_run_artifacts(pipeline_name: str, ledger: Any, chunks_path: str | None = None,
                          manifest_path: str | None = None) -> None:
    """Record the flow run's chunks in Prefect, small whatever the chunk count.

    Two artifacts on the flow run: a table with **one row per task run** (its stage,
    first and last chunk, and how many chunks it wrote, skipped, failed or did not run),
    and a markdown summary (counts per stage, the first failed chunks with their errors,
    and where the per-chunk Parquet file and the manifest are: every chunk's own record
    is there, reachable from the flow run). Never one row per chunk: a million-chunk run
    would otherwise put a million rows into Prefect's database.

    Args:
        pipeline_name: The pipeline.
        ledger: The run's :class:`~distetl.state.ledger.RunLedger` (its counters per task run
            and stage, and its first failures).
        chunks_path: Where the per-chunk Parquet file goes.
        manifest_path: Where the run's JSON manifest goes.
    """
    import re

    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    by_task = ledger.task_runs
    stages = {stage: counts for stage, counts in ledger.counts.items() if any(counts.values())}
    stages = {(stage or pipeline_name): counts for stage, counts in stages.items()}
    failed = ledger.bad
    total = ledger.total
    columns = ["written", "skipped", "failed", "blocked", "not_run"] + [
        c for c in ("check_failed", "warned") if any(counts.get(c) for counts in stages.values())]
    key = "distetl-" + re.sub(r"[^a-z0-9-]+", "-", pipeline_name.lower()).strip("-")
    create_table_artifact(table=list(by_task.values()), key=key,
                          description=f"distetl task runs of {pipeline_name}: {len(by_task)} ({total} chunks)")
    lines = [f"# distetl · {pipeline_name}", "", f"{total} chunk(s) in {len(by_task)} task run(s).", "",
             "| stage | " + " | ".join(c.replace("_", " ") for c in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for stage, counts in stages.items():
        lines.append(f"| {stage} | " + " | ".join(str(counts.get(k, 0)) for k in columns) + " |")
    if ledger.warned:
        lines += ["", f"## Data check warnings ({sum(c.get('warned', 0) for c in stages.values())} chunk(s), "
                  "committed)", ""]
        for r in ledger.warned[:FAILED_IN_ARTIFACT]:
            lines.append(f"- `{r.stage}:{r.key}`: {describe_warnings(r.warnings)}")
    if failed:
        lines += ["", f"## Failed or blocked chunks ({ledger.bad_total})", ""]
        for r in failed[:FAILED_IN_ARTIFACT]:
            lines.append(f"- `{r.stage}:{r.key}` ({r.status}): {(r.error or '')[:300]}")
        if ledger.bad_total > FAILED_IN_ARTIFACT:
            lines.append(f"- … and {ledger.bad_total - FAILED_IN_ARTIFACT} more (see the per-chunk file)")
    times = ledger.chunk_times()
    if times:
        lines += ["", "## Chunk times (written chunks, on the workers)", "",
                  "| stage | chunks | median | p95 | max | " + " | ".join(f"{p} (mean)" for p in PHASES)
                  + " | slowest |", "|---" * (6 + len(PHASES)) + "|"]
        for stage, t in times.items():
            slow = ", ".join(f"`{c['key']}` {c['seconds'] * 1000:.1f} ms" for c in t["slowest"])
            lines.append(f"| {stage or pipeline_name} | {t['chunks']} | " + " | ".join(
                f"{t[k] * 1000:.1f} ms" for k in ("median_s", "p95_s", "max_s")) + " | " + " | ".join(
                f"{t['phases'][p] * 1000:.1f} ms" for p in PHASES) + f" | {slow} |")
    lines += ["", "## Every chunk's record", ""]
    if chunks_path:
        lines.append(f"- per-chunk results (Parquet, one row per chunk): `{chunks_path}`")
    if manifest_path:
        lines.append(f"- run manifest (JSON): `{manifest_path}`")
    create_markdown_artifact(markdown="\n".join(lines), key=f"{key}-summary",
                             description=f"distetl run summary of {pipeline_name}")
