"""``distetl serve FLOW --cron EXPR | --interval SECONDS``: a pipeline on a schedule.

A long-running process that registers the pipeline as a Prefect deployment with the
schedule and executes the deployment's runs itself, one at a time, each an ordinary
distetl run (plan, skip committed chunks, run the rest, manifest, alerts) over the window
its *scheduled* time gives: relative plan dates (``--start today-3d --end yesterday``)
resolve with "today" = the run's scheduled start time in ``--tz``, so a run that starts
late still processes its own window. Days missed while nothing ran are covered by the
next run's window (committed chunks cost a listing); Prefect never back-fills schedule
times that passed while ``serve`` was stopped. Its command line (the schedule and every
option, checked before anything starts) is :mod:`distetl.ops.schedules`.

How a scheduled run executes (the design, and why):

* **In this process, as the backfill's own flow run.** ``serve`` polls the API for the
  deployment's due runs, claims one by proposing Pending (where the server enforces the
  deployment's concurrency limit), and runs the backfill in-process with that flow run
  adopted (:func:`distetl.engine.flow.adopt_flow_run`): the scheduled flow run *is* the
  backfill's record -- its batches' task runs, its chunk table, its honest final state
  (Failed when a chunk failed, Cancelled when stopped). Prefect's own ``Flow.serve`` /
  ``Runner`` would start a Python subprocess per run (seconds of imports before the
  first chunk, and a wrapper flow run with the backfill as a subflow) and stop a run by
  killing that process; in-process, a warm cluster makes a one-chunk run cost well under
  two seconds beyond the chunk, and a stop is distetl's clean stop.
* **A run with nothing to do** (every chunk of its window committed) ends Completed with
  a message saying so; a run that cannot start (a plan-time error, exit code 2 for
  ``distetl run``) ends Failed with the error; one refused by the output's run lease
  (another live run of the pipeline on the output) ends Cancelled naming that run.
* **At most one run at a time.** Runs execute one after another in scheduled order; a
  run whose time comes while another runs waits and then processes its own window (it
  is late, never skipped and never concurrent). The deployment also has a concurrency
  limit of 1 (collision strategy ENQUEUE), so a second process serving the same
  deployment cannot start a run while one is active: its claim is put back to
  ``Scheduled``/``AwaitingConcurrencySlot`` and retried when due again. And distetl's
  run lease refuses a second live run of the same pipeline on the same output.
* **The scheduler.** Runs are created by the Prefect server's scheduler service (runs
  ahead: at least 3 and up to 100 runs, for at least the next hour; a new or updated
  deployment is scheduled within ~5 s). With ``PREFECT_API_URL`` set, that server is
  used (``distetl cluster up``'s has every service on); it is checked to answer and,
  where it says, to run its scheduler. Without it, ``serve`` starts and keeps its own
  server (all services, UI on) on ``$DISTETL_HOME/prefect`` for its lifetime; a run's
  own per-run server runs no scheduler.
* **Warm cluster.** With ``--scheduler ADDR`` every run uses that cluster; with
  ``--keep-cluster`` ``serve`` starts one local Dask cluster and keeps it for its
  lifetime. Otherwise each run starts (and closes) its own, as ``distetl run`` does.
* **Stopping.** SIGTERM or SIGINT stops ``serve`` cleanly: a run in progress is stopped
  as ``distetl run`` stops (outstanding batches cancelled, committed chunks kept, flow
  run Cancelled, manifest ``interrupted``, alerts with status ``stopped``); then the
  deployment is paused (Prefect deletes its future scheduled runs) and what ``serve``
  started (cluster, server) is stopped. Exit code 0: a stop is a service's normal end
  (the stopped run says it was stopped). A second signal exits at once (130/143).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

from rich.console import Console

from distetl.errors import ConfigError, DistetlError
from distetl.ops.schedules import ServeOptions, add_serve_parser

__all__ = ["ServeError", "add_serve_parser", "scheduled_backfill", "serve_command"]

#: Seconds after registering the deployment after which ``serve`` warns once if the
#: server has still created no scheduled run for it (its scheduler is off or failing).
SCHEDULE_GRACE = 30.0

#: Tag of every deployment ``serve`` registers.
TAG = "distetl"


def scheduled_backfill() -> None:
    """The entry point of the deployments ``distetl serve`` registers.

    Their runs are executed by the ``distetl serve`` process that registered them, in
    that process (see :mod:`distetl.ops.serve`); there is nothing for a Prefect worker to run.
    """
    raise RuntimeError("runs of a `distetl serve` deployment are executed by `distetl serve` itself: "
                       "start it (it polls the API for the deployment's runs)")


def serve_command(args: argparse.Namespace, extra: Sequence[str], console: Console) -> int:
    """``distetl serve``: check everything, then serve until SIGTERM/SIGINT.

    Returns:
        0 after a stop by SIGTERM/SIGINT (the run it interrupted ends Cancelled).

    Raises:
        DistetlError: On a usage or configuration error found before serving (exit 2).
    """
    from distetl.engine.prefect_api import quiet_prefect_env

    quiet_prefect_env()
    options = ServeOptions.from_args(args, extra)
    stop = _StopRequest()
    with stop:
        try:
            return Serve(options, console, stop).run()
        except _Interrupted:
            console.print(f"[yellow]stopped by {stop.name}[/] before serving began")
            return 0


# -- stopping -----------------------------------------------------------------------------

class _Interrupted(KeyboardInterrupt):
    """Raised by :class:`_StopRequest` where ``serve`` may be interrupted at once."""


class _StopRequest:
    """``serve``'s SIGINT/SIGTERM handling.

    The first signal asks ``serve`` to stop. While a run computes, the run's own
    :class:`~distetl.engine.stopping.StopSignal` (installed over this handler) gets the signal
    and stops the run cleanly; ``serve`` then stops too. Where a run is starting or
    ``serve`` itself is starting (``interruptible``), the signal interrupts at once (the
    run had not begun: its flow run ends Cancelled). Elsewhere it is noticed within a
    fraction of a second. A second signal exits at once (130/143).
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.interruptible = True
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}.get(self.signum or 0, str(self.signum))

    def request(self, signum: int) -> None:
        if self.signum is None:
            self.signum = signum

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            sys.stderr.flush()
            os._exit(128 + int(self.signum))
        self.signum = signum
        if self.interruptible:
            raise _Interrupted()

    def sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``; return early once a stop is requested."""
        deadline = time.monotonic() + max(0.0, seconds)
        while not self.requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.2))

    @contextlib.contextmanager
    def interrupting(self) -> Iterator[None]:
        """A block a signal interrupts at once (raising :class:`_Interrupted`)."""
        if self.requested:
            raise _Interrupted()
        self.interruptible = True
        try:
            yield
        finally:
            self.interruptible = False

    def __enter__(self) -> "_StopRequest":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


# -- what serve starts --------------------------------------------------------------------

class ServeError(DistetlError):
    """``serve`` cannot go on (what it started died)."""

    exit_code = 1


@contextlib.contextmanager
def _prefect_server(port: Optional[int], console: Console) -> Iterator[Any]:
    """The Prefect API runs are scheduled and recorded at, for the life of ``serve``.

    ``PREFECT_API_URL`` when set (it must answer, and where it says so, run its
    scheduler); otherwise a server ``serve`` starts on ``$DISTETL_HOME/prefect`` with
    every service and the UI on, stopped when ``serve`` ends (or dies).

    Yields:
        ``(api_url, server)``: the server ``serve`` started, or None for a given API.

    Raises:
        ConfigError: The given API does not answer or runs no scheduler; another server
            is live on distetl's database; the server does not start.
    """
    from distetl.engine.prefect_api import EmbeddedServer, api_healthy, state_home

    given = os.environ.get("PREFECT_API_URL")
    if given:
        if not api_healthy(given, timeout=10.0):
            raise ConfigError(f"a Prefect API answering at PREFECT_API_URL={given}", "no answer to /health",
                              "start it (`distetl cluster up` or `prefect server start`) or unset PREFECT_API_URL "
                              "to let serve start its own")
        if _scheduler_enabled(given) is False:
            raise ConfigError(
                f"a Prefect server whose scheduler service runs at {given}", "its scheduler service is off",
                "point PREFECT_API_URL at a server with its services on (`distetl cluster up`, `prefect server "
                "start`), or unset it to let serve start its own")
        yield given, None
        return
    from distetl.engine.servers import kept_lock, live_clients, live_servers, registered, retire_kept

    home = state_home() / "prefect"
    # From the kept server's retirement to serve's record, under the lock runs take to
    # find or launch a kept server: none can slip in between.
    with contextlib.ExitStack() as locked:
        locked.enter_context(kept_lock(home))
        if not retire_kept(home, locked=True):  # an idle kept server makes way for serve's
            raise ConfigError(
                f"no other Prefect server on distetl's database {home / 'prefect.db'} (SQLite takes one server)",
                f"distetl's kept server for runs, in use by a running `distetl run` (pids "
                f"{', '.join(map(str, live_clients(home)))})",
                "start serve when that run has finished, or point PREFECT_API_URL at a server with its services "
                "on (`distetl cluster up`)")
        for record in live_servers(home):
            what = (f"`distetl ui` (pid {record['pid']}, {record.get('ui_url')})" if record.get("role") == "ui"
                    else f"the server of a running `distetl run` (pid {record['pid']}, API {record.get('url')})")
            raise ConfigError(
                f"no other Prefect server on distetl's database {home / 'prefect.db'} (SQLite takes one server; "
                "serve's server has the UI on and runs the scheduler)", what,
                "stop it and start serve again (serve's server serves the UI too), or point PREFECT_API_URL at a "
                "server with its services on (`distetl cluster up`)")
        server = EmbeddedServer(home, port=port, ui=True, tied=True, all_services=True)
        ui_url = server.url[: -len("/api")]
        registration = contextlib.ExitStack()  # runs on this home report to serve's server
        registration.enter_context(registered(home, server.url, "ui", ui_url=ui_url))
    with registration:
        try:
            url = server.start()
        except BaseException:
            server.stop()
            raise
        os.environ["PREFECT_API_URL"] = url  # every run of this process (and its workers) reports here
        try:
            console.print(f"prefect UI:  {ui_url} (serve's own server, scheduler on; database {home / 'prefect.db'})",
                          highlight=False, soft_wrap=True)
            yield url, server
        finally:
            os.environ.pop("PREFECT_API_URL", None)
            server.stop()


def _scheduler_enabled(api_url: str) -> Optional[bool]:
    """Whether the server at ``api_url`` says its scheduler service is on (None when it
    does not say, e.g. Prefect Cloud)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/admin/settings", timeout=10) as resp:
            settings = json.loads(resp.read())
        return bool(settings["server"]["services"]["scheduler"]["enabled"])
    except Exception:  # noqa: BLE001 - not a Prefect server that tells
        return None


@contextlib.contextmanager
def _warm_cluster(workers: Optional[int], console: Console) -> Iterator[str]:
    """A local Dask cluster kept for the life of ``serve`` (``--keep-cluster``); yields
    its scheduler address."""
    from distetl.engine.runners import local_cluster

    n = workers or os.cpu_count() or 1
    cluster = local_cluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                            dashboard_address=":0")
    try:
        link = getattr(cluster, "dashboard_link", None)
        console.print(f"dask:        warm local cluster, {n} worker process(es) at {cluster.scheduler_address}"
                      + (f", dashboard {link}" if link else ""), highlight=False, soft_wrap=True)
        yield cluster.scheduler_address
    finally:
        with contextlib.suppress(Exception):
            cluster.close(timeout=30)


# -- serving ------------------------------------------------------------------------------

@dataclass
class RunRecord:
    """What ``serve`` says about one scheduled run."""

    flow_run_id: str
    flow_run_name: str
    scheduled: dt.datetime
    today: str
    started_at: Optional[dt.datetime] = None
    state: str = ""
    message: str = ""
    exit_code: Optional[int] = None
    seconds: float = 0.0
    report: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"flow_run_id": self.flow_run_id, "flow_run_name": self.flow_run_name,
                "scheduled_start_time": self.scheduled.isoformat(), "today": self.today,
                "started_at": self.started_at.isoformat() if self.started_at else None, "state": self.state,
                "message": self.message, "exit_code": self.exit_code, "seconds": round(self.seconds, 3),
                "report": self.report.to_dict() if self.report is not None else None}


@dataclass
class Serve:
    """One ``distetl serve`` process: register, then execute due runs until stopped."""

    options: ServeOptions
    console: Console
    stop: _StopRequest
    deployment_id: Any = None
    server: Any = None
    runs: list[RunRecord] = field(default_factory=list)
    _registered_at: float = 0.0
    _warned_unscheduled: bool = False
    _waiting_for_slot: set[str] = field(default_factory=set)

    def run(self) -> int:
        """Serve until a stop is requested. Returns the exit code."""
        from distetl.engine import backfill
        from distetl.model.dates import fixed_today
        from distetl.engine.prefect_api import prefect_api
        from distetl.engine.runners import RunnerSpec

        o = self.options
        with fixed_today(tz=o.tz):  # checks the plan now: template, dates, storage (exit 2)
            self.planned = backfill.plan(o.pipeline, o.output, o.params, o.storage_options, stages=o.stages)
        with contextlib.ExitStack() as stack:
            _, self.server = stack.enter_context(_prefect_server(o.prefect_port, self.console))
            stack.enter_context(prefect_api())
            if o.keep_cluster:
                address = stack.enter_context(_warm_cluster(o.workers, self.console))
                o.spec = RunnerSpec.from_options("remote", None, address, o.connect_timeout)
            else:
                o.spec.check(o.pipeline)  # a --scheduler cluster must answer and load the flow now
            from prefect.client.orchestration import get_client

            client = stack.enter_context(get_client(sync_client=True))
            self.client = client
            self.deployment_id = self._register()
            stack.callback(self._pause)
            self._reap_orphans()
            self._announce()
            self.stop.interruptible = False
            self._loop()
        self.console.print(f"[yellow]stopped by {self.stop.name}[/]: deployment {self._label} paused "
                           f"after {len(self.runs)} run(s); committed chunks stay", highlight=False)
        return 0

    @property
    def _label(self) -> str:
        return f"{self.options.pipeline.name}/{self.options.name}"

    # -- the deployment ------------------------------------------------------------------

    def _register(self) -> Any:
        """Create or update the deployment (its schedule active); returns its id."""
        from prefect import Flow
        from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
        from prefect.deployments.runner import EntrypointType

        from distetl.version import __version__

        o = self.options
        flow = Flow(fn=scheduled_backfill, name=o.pipeline.name, validate_parameters=False,
                    description=f"distetl pipeline {o.pipeline.name}")
        command = f"distetl serve {o.flow} --output {o.output} ({o.schedule_text})"
        deployment = flow.to_deployment(
            o.name, schedules=o.schedules, paused=False, tags=[TAG], version=__version__,
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
            description=f"{command}: runs are executed by that `distetl serve` process, one at a time, each over "
                        "the window of its scheduled time",
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        deployment.work_pool_name = None  # no work pool: serve itself executes the runs
        deployment.work_queue_name = None
        deployment_id = deployment.apply()
        self._registered_at = time.monotonic()
        return deployment_id

    def _pause(self) -> None:
        """Pause the deployment (Prefect deletes its future scheduled runs): nothing runs
        it while ``serve`` is down; the next ``serve`` resumes it."""
        try:
            self.client.pause_deployment(self.deployment_id)
        except Exception as exc:  # noqa: BLE001 - stopping anyway
            self.console.print(f"[yellow]could not pause deployment {self._label}[/]: {type(exc).__name__}: {exc}",
                               highlight=False, soft_wrap=True)

    def _announce(self) -> None:
        from distetl.engine.watch import ui_base

        o = self.options
        base = ui_base(os.environ.get("PREFECT_API_URL"))
        self.console.print(
            f"[bold]distetl serve[/] {o.pipeline.name}: deployment {self._label} ({o.schedule_text}), output "
            f"{self.planned.output} on {o.spec.describe()}; one run at a time, each over its scheduled day's "
            f"window", highlight=False, soft_wrap=True)
        if base:
            self.console.print(f"deployment:  {base}/deployments/deployment/{self.deployment_id}",
                               highlight=False, soft_wrap=True)
        self.console.print("SIGTERM or Ctrl-C stops serve (a run in progress is stopped cleanly; the deployment "
                           "is paused)", highlight=False)

    def _reap_orphans(self) -> None:
        """Mark Crashed the runs of this deployment left Pending or Running by a ``serve``
        that died (they hold the deployment's only concurrency slot): those whose run
        lease on the output is not held, live, for them."""
        from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                    FlowRunFilterState, FlowRunFilterStateType)
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort

        from distetl.engine.prefect_api import mark_crashed

        runs = self.client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment_id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.PENDING, StateType.RUNNING]))),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=50)
        if not runs:
            return
        holder = self._lease_holder()
        for run in runs:
            if holder is not None and holder == str(run.id):
                continue
            message = (f"its `distetl serve` is gone; marked by serve on {socket.gethostname()} "
                       f"(pid {os.getpid()}) at start")
            with contextlib.suppress(Exception):
                mark_crashed(str(run.id), message)
                self.console.print(f"[yellow]marked flow run {run.name} ({run.id}) Crashed[/]: {message}",
                                   highlight=False, soft_wrap=True)

    def _lease_holder(self) -> Optional[str]:
        """The flow run of the live run holding the output's run lease, if any."""
        from distetl.state.lease import LeaseInfo, lease_ttl, parse_time, pid_alive

        storage = self.planned.targets.storage
        raw = storage.read_bytes(f"{self.planned.output.rstrip('/')}/_distetl/{self.options.pipeline.name}/lease.json")
        if not raw:
            return None
        try:
            info = LeaseInfo.from_bytes(raw)
            age = time.time() - parse_time(info.heartbeat_at)
        except (ValueError, TypeError, KeyError):
            return None
        if (info.host == socket.gethostname() and not pid_alive(info.pid)) or age > lease_ttl():
            return None
        return info.flow_run_id

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self.stop.requested:
            try:
                due = self._next_run()
            except Exception as exc:  # noqa: BLE001 - the API is away for a moment
                self._api_trouble(exc)
                continue
            if due is None:
                self._check_scheduled()
                self.stop.sleep(self.options.poll)
                continue
            wait = (_as_utc(due.next_scheduled_start_time or due.expected_start_time) - _utcnow()).total_seconds()
            if wait > 0:
                self.stop.sleep(min(wait, self.options.poll))  # then look again: it may be gone or preceded
                continue
            claimed = self._claim(due)
            if claimed is None:
                self.stop.sleep(min(1.0, self.options.poll))
                continue
            self._execute(claimed)

    def _next_run(self) -> Any:
        """The deployment's earliest scheduled run due before the next poll, or None."""
        horizon = _utcnow() + dt.timedelta(seconds=self.options.poll)
        runs = self.client.get_scheduled_flow_runs_for_deployments([self.deployment_id], scheduled_before=horizon,
                                                                   limit=1)
        return runs[0] if runs else None

    def _api_trouble(self, exc: BaseException) -> None:
        from distetl.engine.prefect_api import api_healthy

        url = os.environ.get("PREFECT_API_URL", "")
        process = getattr(self.server, "process", None) if self.server is not None else None
        if self.server is not None and (process is None or process.poll() is not None):
            log = self.server.home / "server.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no log)"
            raise ServeError("serve's Prefect server to keep running", f"it exited; its log ends:\n{tail}",
                             "check the log, then start serve again (committed chunks stay)")
        if not api_healthy(url, timeout=5.0):
            self.console.print(f"[yellow]the Prefect API at {url} does not answer[/] ({type(exc).__name__}); "
                               "retrying", highlight=False, soft_wrap=True)
        else:
            self.console.print(f"[yellow]could not read the deployment's runs[/]: {type(exc).__name__}: {exc}",
                               highlight=False, soft_wrap=True)
        self.stop.sleep(self.options.poll)

    def _check_scheduled(self) -> None:
        """Warn once if the server schedules no run for the deployment: its scheduler
        service is off or failing."""
        if self._warned_unscheduled or self.runs or time.monotonic() - self._registered_at < SCHEDULE_GRACE:
            return
        from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                    FlowRunFilterState, FlowRunFilterStateType)
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.sorting import FlowRunSort

        with contextlib.suppress(Exception):
            scheduled = self.client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment_id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType.SCHEDULED]))), sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)
            if not scheduled:
                self.console.print(
                    f"[yellow]the Prefect server has scheduled no run of {self._label} {SCHEDULE_GRACE:.0f}s after "
                    "it was registered[/]: its scheduler service is off or failing (see the server's log); "
                    "runs triggered by hand still run", highlight=False, soft_wrap=True)
        self._warned_unscheduled = True

    def _claim(self, flow_run: Any) -> Any:
        """Propose Pending for a due run; the server enforces the deployment's concurrency
        limit here. Returns the run as claimed (its Pending state carries the slot's
        lease), or None if another process has it or the slot is taken."""
        from prefect.client.schemas.objects import StateType
        from prefect.client.schemas.responses import SetStateStatus
        from prefect.states import Pending

        try:
            result = self.client.set_flow_run_state(flow_run.id, Pending())
        except Exception as exc:  # noqa: BLE001 - deleted meanwhile, or the API is away
            self.console.print(f"[yellow]could not claim flow run {flow_run.name}[/]: {type(exc).__name__}: {exc}",
                               highlight=False, soft_wrap=True)
            return None
        if result.status == SetStateStatus.ACCEPT and result.state and result.state.type == StateType.PENDING:
            self._waiting_for_slot.discard(str(flow_run.id))
            return self.client.read_flow_run(flow_run.id)
        if result.state is not None and result.state.name == "AwaitingConcurrencySlot":
            if str(flow_run.id) not in self._waiting_for_slot:
                self._waiting_for_slot.add(str(flow_run.id))
                self.console.print(
                    f"flow run {flow_run.name} waits for the deployment's concurrency slot (another run of "
                    f"{self._label} is active elsewhere); the server retries it later", highlight=False,
                    soft_wrap=True)
        return None

    def _execute(self, flow_run: Any) -> None:
        """Run the backfill as ``flow_run``, over the window of its scheduled time."""
        from distetl.engine import backfill
        from distetl.model.dates import fixed_today, zone
        from distetl.engine.flow import adopt_flow_run
        from distetl.engine.stopping import RunInterrupted

        o = self.options
        scheduled = _as_utc(flow_run.expected_start_time or flow_run.next_scheduled_start_time)
        local = scheduled.astimezone(zone(o.tz))
        record = RunRecord(str(flow_run.id), flow_run.name, local, local.date().isoformat())
        late = (_utcnow() - scheduled).total_seconds()
        self.console.print(f"run {flow_run.name}: scheduled {local.isoformat(timespec='seconds')}"
                           + (f" (late by {_duration(late)})" if late >= 1 else "")
                           + f"; today = {record.today} ({o.tz or 'UTC'})", highlight=False, soft_wrap=True)
        record.started_at = _utcnow()
        started = time.perf_counter()
        report = None
        try:
            with self.stop.interrupting(), fixed_today(tz=o.tz, today=local.date()), adopt_flow_run(flow_run):
                report = backfill.run(
                    o.pipeline, o.output, runner=o.spec, params=o.params, storage_options=o.storage_options,
                    chunks_per_task=o.chunks_per_task, console=self.console, progress=False, stages=o.stages,
                    stale=o.stale)
            record.exit_code = 0 if report.ok else 1
        except RunInterrupted as stopped:
            report = stopped.report
            record.exit_code = stopped.exit_code
            self.stop.request(stopped.signum)
        except _Interrupted:
            record.exit_code = 128 + int(self.stop.signum or signal.SIGTERM)
            self._finish(flow_run, "CANCELLED", f"stopped by {self.stop.name} before it ran; the next run's "
                                                "window covers its days")
        except DistetlError as exc:
            record.exit_code = exc.exit_code
            lease = "no other live run of pipeline" in exc.expected
            self._finish(flow_run, "CANCELLED" if lease else "FAILED",
                         ("not run: " if lease else "could not run: ") + str(exc))
            self.console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        except Exception as exc:  # noqa: BLE001 - one run's bug must not stop the service
            record.exit_code = 1
            self._finish(flow_run, "CRASHED", f"{type(exc).__name__}: {exc}")
            self.console.print_exception(max_frames=5)
        record.seconds = time.perf_counter() - started
        record.report = report
        if report is not None and report.flow_run_id != str(flow_run.id):
            # Nothing ran as a flow: every chunk was committed (or the run stopped first).
            if report.interrupted:
                self._finish(flow_run, "CANCELLED", f"stopped by {report.interrupted} before it ran")
            else:
                self._finish(flow_run, "COMPLETED", f"nothing to run: all {report.total} chunk(s) of the window "
                                                    f"{_window(report)} already committed",
                             rename=f"{o.pipeline.name} · nothing to run")
        state = self._state_of(flow_run.id)
        record.state, record.message = state
        self.runs.append(record)
        self._say(record)
        if report is not None and o.alerts:
            o.alerts.fire(report, self.console, record.exit_code)

    def _finish(self, flow_run: Any, state_type: str, message: str, rename: Optional[str] = None) -> None:
        """Put a claimed flow run that the backfill did not execute in its final state."""
        from prefect.states import Cancelled, Completed, Crashed, Failed

        make = {"COMPLETED": Completed, "FAILED": Failed, "CANCELLED": Cancelled, "CRASHED": Crashed}[state_type]
        try:
            current = self.client.read_flow_run(flow_run.id)
            if current.state is not None and current.state.is_final():
                return
            if rename:
                self.client.set_flow_run_name(flow_run.id, rename)
            self.client.set_flow_run_state(flow_run.id, make(message=message[:2000]), force=True)
        except Exception as exc:  # noqa: BLE001 - bookkeeping; say so
            self.console.print(f"[yellow]could not set flow run {flow_run.name} {state_type}[/]: "
                               f"{type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)

    def _state_of(self, flow_run_id: Any) -> tuple[str, str]:
        try:
            run = self.client.read_flow_run(flow_run_id)
        except Exception:  # noqa: BLE001
            return "", ""
        return (run.state.type.value if run.state else ""), ((run.state.message or "") if run.state else "")

    def _say(self, record: RunRecord) -> None:
        report = record.report
        if self.options.json:
            print(json.dumps(record.to_dict(), default=str), flush=True)
        if report is not None:
            counts = (f"{report.written} written, {report.skipped} skipped, {report.failed_count} failed"
                      + (f", {report.blocked_count} blocked" if report.blocked_count else "")
                      + (f", {report.not_run} not run" if report.interrupted else ""))
            stopped = f" (stopped by {report.interrupted})" if report.interrupted else ""
            self.console.print(f"run {record.flow_run_name}: window {_window(report)}: {counts} in "
                               f"{record.seconds:.1f}s → {record.state}{stopped}", highlight=False, soft_wrap=True)
            for result in report.failed[:10]:
                self.console.print(f"  failed {result.key}: {(result.error or '')[:200]}", highlight=False,
                                   soft_wrap=True)
            if report.manifest_path:
                self.console.print(f"  manifest: {report.manifest_path}", highlight=False, soft_wrap=True)
        else:
            self.console.print(f"run {record.flow_run_name}: {record.state}: {record.message[:300]}",
                               highlight=False, soft_wrap=True)


def _window(report: Any) -> str:
    plan = report.plan or {}
    if "start" in plan and "end" in plan:
        return f"{plan['start']}..{plan['end']}"
    return f"{report.total} chunk(s)"


def _duration(seconds: float) -> str:
    """``42s``, ``3m 20s``, ``5h 02m``, ``12d 3h``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _as_utc(value: Any) -> dt.datetime:
    """A Prefect timestamp as an aware ``datetime`` in UTC."""
    if value is None:
        return _utcnow()
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.fromtimestamp(value.timestamp(), tz=dt.timezone.utc)
