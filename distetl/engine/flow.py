"""The Prefect 3 flow: batches of chunks, one Prefect task each, run on Dask or in-process.

This and :mod:`distetl.engine.prefect_api` / :mod:`distetl.engine.runners` are the only modules that
touch Prefect or Dask. Each batch of chunks is one Prefect task run (its state, name
and timing are in Prefect) that returns only small
:class:`~distetl.engine.execute.ChunkResult` records; each chunk reports progress as it lands
(Dask worker events on a cluster, a callback in-process).

On a Dask cluster the batch tasks run in driver threads, and each submits its batch to
the cluster through the Dask client as a plain function (:func:`distetl.engine.packing.run_packed_bytes`).
Workers therefore never import Prefect, rebuild its settings or open an API client per
task; the Prefect overhead of a batch is a few milliseconds in a driver thread instead
of ~100 ms on a worker (see ``benchmarks/``). At most two batches per worker thread are
in flight, so every worker always has its next batch queued.

Flow-run heartbeats are off unless ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` is set: Prefect
joins its heartbeat thread at the end of every flow run, which sleeps in one-second
steps, so each run would wait up to a second (half a second on average) after its last
chunk. Heartbeats only serve zombie-run automations; set the variable to keep them.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Protocol, Sequence

import cloudpickle
from prefect import Flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from distetl.engine.clusters import planned_threads
from distetl.engine.execute import FAILED, NOT_RUN, BatchJob, ChunkResult, _LOCAL_LISTENERS, run_batch
from distetl.engine.killed import is_killed_worker, rerun_alone
from distetl.state.ledger import RunLedger
from distetl.engine.loader import sources_for
from distetl.engine.packing import PackedJob, pack_bytes, run_packed_bytes
from distetl.model.pipeline import Pipeline
from distetl.engine.prefect_api import override_settings, publish_run_artifacts
from distetl.engine.stopping import StopSignal

__all__ = ["BatchSource", "FlowOutcome", "PackedJob", "adopt_flow_run", "run_flow", "split_batches"]

#: A flow run created elsewhere -- a deployment's scheduled run, see :mod:`distetl.ops.serve`
#: -- that the next :func:`run_flow` in this context executes instead of creating one.
_ADOPTED: contextvars.ContextVar[Any] = contextvars.ContextVar("distetl_adopted_flow_run", default=None)


@contextlib.contextmanager
def adopt_flow_run(flow_run: Any) -> Any:
    """Make the runs in the block execute ``flow_run`` (a Prefect ``FlowRun`` of this
    pipeline's flow, proposed Pending) as their own flow run, so its record -- task
    runs, chunk table, final state -- is the backfill's, instead of a new flow run."""
    token = _ADOPTED.set(flow_run)
    try:
        yield flow_run
    finally:
        _ADOPTED.reset(token)

#: Default number of batches per worker (``chunks_per_task`` overrides it).
BATCHES_PER_WORKER = 8

#: Batches in flight per Dask worker thread when the batch tasks submit to a cluster.
IN_FLIGHT_PER_THREAD = 2


class BatchFailed(Exception):
    """Raised by a batch task when some of its chunks failed; carries every result."""

    def __init__(self, results: list[ChunkResult]):
        self.results = results
        failed = [r for r in results if r.status == FAILED]
        super().__init__(
            f"{len(failed)} of {len(results)} chunk(s) failed: "
            + "; ".join(f"{r.key}: {r.error}" for r in failed[:5])
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (BatchFailed, (self.results,))


@task(cache_policy=NO_CACHE, persist_result=False, task_run_name="{label}", log_prints=False)
def run_chunks(job: PackedJob, label: str) -> Any:
    """Run a batch of chunks (extract → transform → write).

    With a Dask cluster (the run's client), the batch runs on a worker as a plain
    function and this task, in a driver thread, waits for it; otherwise it runs here.
    Once the run is stopping, a batch not yet started does not start, a batch on the
    cluster is cancelled, and the task run ends Cancelled.

    A batch with a failed chunk ends Failed; its results (the committed chunks
    included) are handed to the flow body through the run's state, not the task's.

    Raises:
        Exception: Whatever Dask raised if the batch was lost (e.g. ``KilledWorker``).
    """
    from prefect.states import Cancelled

    run = _ACTIVE.get(job.job.topic)
    if run is not None and run.stop.stopped:
        return Cancelled(message="not started: the run was stopped")
    client = run.client if run is not None else None
    if client is not None:
        future = exc = None
        try:
            future = client.submit(run_packed_bytes, pack_bytes(job), key=f"distetl-batch-{uuid.uuid4().hex}",
                                   pure=False)
            run.track(future)
            results = future.result()
        except BaseException as error:
            exc = error
            if run.stop.stopped:
                return Cancelled(message="cancelled: the run was stopped; committed chunks stay")
            lost = run.outcome.scheduler_lost or scheduler_lost(client, exc)
            if lost:
                if run.outcome.scheduler_lost is None:
                    # The client's reconnect attempts end in a logged traceback: the run
                    # says what happened itself (see RunReport.scheduler_lost).
                    for name in ("distributed.client", "distributed.utils", "distributed.core"):
                        logging.getLogger(name).setLevel(logging.CRITICAL)
                run.outcome.scheduler_lost = lost
                return Cancelled(message=f"not run: {lost}")
            if not is_killed_worker(exc):
                raise
            results = None  # Dask gave up on the batch: its chunks one by one, below
        finally:
            if future is not None:
                run.untrack(future)
                future.release()
        if results is None:
            results = rerun_alone(client, job, exc, run.track, run.untrack,
                                  lambda: run.stop.stopped or bool(run.outcome.scheduler_lost))
    else:
        stop = run.stop if run is not None else None
        results = run_batch(job.unpack(), should_stop=(lambda: stop.stopped) if stop is not None else None,
                            watch_stop=True)
    if run is not None:
        run.note_timeouts(results)
    _emit_chunk_logs(results)
    failed = [r for r in results if r.status == FAILED]
    if failed and run is None:
        raise BatchFailed(results)
    if failed:
        # A Failed state rather than an exception: the task run shows Failed without a
        # traceback in the log (each chunk's own error is in the report and artifact).
        from prefect.states import Failed

        run.partial[_batch_id(job.job)] = results
        return Failed(message=f"{len(failed)} of {len(results)} chunk(s) failed: "
                      + "; ".join(f"{r.key}: {(r.error or '')[:200]}" for r in failed[:5]))
    if any(r.status == NOT_RUN for r in results):
        if run is not None:
            run.partial[_batch_id(job.job)] = results
        return Cancelled(message="stopped with the run; committed chunks stay")
    return BatchResults(results)


#: Log lines of chunks that did not fail sent to Prefect per batch (a failed chunk's
#: lines, at most 50 each, are always sent).
LOG_LINES_PER_BATCH = 200


def _emit_chunk_logs(results: list[ChunkResult]) -> None:
    """Send the chunks' own log lines (and a failed chunk's error) to Prefect as logs of
    this batch's task run, each line prefixed with its chunk's key: only to Prefect's
    API (the terminal gets distetl's own summary)."""
    if not any(r.log or r.status == FAILED for r in results):
        return
    try:
        from prefect.logging import get_run_logger
        from prefect.logging.handlers import APILogHandler

        adapter = get_run_logger()
    except Exception:  # noqa: BLE001 - no run context (a batch run outside a flow)
        return
    handlers = []
    logger: Any = adapter.logger
    while logger is not None:
        handlers += [h for h in logger.handlers if isinstance(h, APILogHandler)]
        logger = logger.parent if logger.propagate else None
    if not handlers:
        return

    def send(level: int, text: str) -> None:
        message, kwargs = adapter.process(text, {})
        record = adapter.logger.makeRecord(adapter.logger.name, level, __file__, 0, message, (), None,
                                           extra=kwargs.get("extra"))
        for handler in handlers:
            handler.handle(record)

    budget = LOG_LINES_PER_BATCH
    for r in results:
        failed = r.status == FAILED
        if failed:
            send(logging.ERROR, f"chunk {r.key} failed: {r.error}")
        for line in (r.log or "").splitlines():
            if not failed and budget <= 0:
                break
            level = logging.WARNING if " WARNING " in line[:40] else logging.ERROR if " ERROR " in line[:40] \
                else logging.INFO
            send(level, f"{r.key} | {line}")
            budget -= 0 if failed else 1


class BatchResults:
    """A batch's chunk results as one opaque value. Prefect links every item of a
    task's returned list to the task's state, in a map it keeps for the whole flow run
    (two objects per item): a list of a million results would leave millions of
    entries in the driver. One object per batch leaves one."""

    __slots__ = ("results",)

    def __init__(self, results: list[ChunkResult]):
        self.results = results

    def __reduce__(self) -> tuple[Any, ...]:
        return (BatchResults, (self.results,))


def _batch_id(job: BatchJob) -> str:
    """A batch's identity within its run: its stage and its first chunk's key (two
    stages' batches may start with the same key)."""
    return f"{job.stage}\x00{job.chunks[0][0].key if job.chunks else ''}"


def split_batches(items: Sequence[Any], workers: int, chunks_per_task: Optional[int]) -> list[list[Any]]:
    """Cut items into batches: ``chunks_per_task`` each, or about 8 batches per worker.

    Eight per worker keeps the tail short (a run of few, heavy chunks gets one chunk per
    batch, as raw Dask would), while the Prefect overhead -- a few ms per task run in a
    driver thread -- is paid per batch, not per chunk.
    """
    if not items:
        return []
    if chunks_per_task is None:
        batches = min(len(items), max(1, workers) * BATCHES_PER_WORKER)
        size = -(-len(items) // batches)
    else:
        size = max(1, chunks_per_task)
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


@dataclass
class FlowOutcome:
    """What the flow hands back to the driver."""

    #: Every chunk result the batches reported (counted and spilled, see distetl.state.ledger).
    ledger: RunLedger = field(default_factory=lambda: RunLedger(()))
    flow_run_id: Optional[str] = None
    task_run_ids: list[str] = field(default_factory=list)
    state: str = ""
    state_message: str = ""
    restarted_workers: list[str] = field(default_factory=list)
    #: The Dask dashboard of the run's cluster (None without a cluster or dashboard).
    dashboard_url: Optional[str] = None
    #: Set when the run's Dask scheduler went away mid-run: what happened, naming it.
    scheduler_lost: Optional[str] = None


def _drain_prefect_workers() -> bool:
    """Flush queued Prefect events and logs in this process (the driver: Dask workers
    run no Prefect code).

    Runs the drain in its own thread, so it also works when called from an event loop,
    where Prefect's drain would only hand back a coroutine.
    """
    import threading

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    def drain() -> None:
        EventsWorker.drain_all(timeout=30)
        APILogWorker.drain_all(timeout=30)

    thread = threading.Thread(target=drain, name="distetl-drain", daemon=True)
    thread.start()
    thread.join(timeout=60)
    return True


class BatchSource(Protocol):
    """What the flow asks for work: the driver's view of the stage graph (see
    :class:`distetl.engine.dispatch.Dispatcher`)."""

    def next_batch(self) -> Optional[BatchJob]:
        """A batch whose chunks are all ready to run, or None if none is ready now."""

    def done(self, job: BatchJob, results: list[ChunkResult]) -> None:
        """The results of a finished batch (releases or blocks their dependants). It may
        replace items of ``results`` with corrected ones (a lost batch's chunk that its
        worker did commit), which the flow then records."""


def run_flow(
    pipeline: Pipeline,
    jobs: "BatchSource | list[BatchJob]",
    task_runner: Any,
    on_result: Callable[[ChunkResult], None],
    on_chunk: Callable[[dict[str, Any]], None],
    flow_run_name: str,
    on_flow_run: Optional[Callable[[str], None]] = None,
    stop: Optional[StopSignal] = None,
    restart_hung_workers: bool = True,
    on_dashboard: Optional[Callable[[str], None]] = None,
    record_paths: tuple[Optional[str], Optional[str]] = (None, None),
    ledger: Optional[RunLedger] = None,
) -> FlowOutcome:
    """Run the batches as one Prefect flow run and gather the chunk results.

    Args:
        pipeline: The pipeline (for the flow name).
        jobs: Where batches come from: a :class:`BatchSource` asked for the next ready
            batch whenever a slot is free and told every batch's results (so a
            downstream chunk starts as soon as its inputs are committed), or a fixed
            list of batches.
        task_runner: The Prefect task runner.
        on_result: Called on the driver with each chunk's final result.
        on_chunk: Called (possibly from another thread) as each chunk lands on a worker,
            with ``{"key", "status", "rows"}``: the live progress feed.
        flow_run_name: Name of the flow run in Prefect.
        on_flow_run: Called on the driver with the flow run's id as soon as it exists
            (e.g. to record it in the run's lease).
        stop: The run's stop request (SIGINT/SIGTERM): outstanding batches are cancelled
            and the flow run ends Cancelled.
        record_paths: Where the run's per-chunk Parquet file and manifest will be
            (linked from the flow run's artifacts).
        restart_hung_workers: Restart (through their nannies) the Dask workers left
            running a chunk that timed out, once the batches are done. False for a
            local cluster that is closed right after the run anyway.
        on_dashboard: Called on the driver with the Dask dashboard's URL as soon as the
            cluster is up (not for the sequential runner, nor a cluster without one).
        ledger: Where the chunk results go (``outcome.ledger``; default: a new one).
            Results with status "not run" (the run stopped) are not added: the caller
            settles those.

    The flow run ends Failed when any chunk failed (its message counts them and names
    the first keys), Cancelled when the run was stopped, Completed otherwise.
    """
    blob = cloudpickle.dumps(pipeline)
    sources = sources_for(blob)
    # The pipeline pickles flow-file functions by reference: the digest (the workers'
    # cache key) covers the shipped source too, so an edited flow file is not stale.
    digest = hashlib.sha256(blob + "".join(s.source for s in sources).encode()).hexdigest()
    topic = f"distetl-{uuid.uuid4().hex}"
    source = _FixedBatches(jobs) if isinstance(jobs, list) else jobs

    def pack(job: BatchJob) -> PackedJob:
        return PackedJob(replace(job, topic=topic), blob, digest, sources)

    outcome = FlowOutcome(ledger=ledger) if ledger is not None else FlowOutcome()
    run = _ActiveRun(source, pack, pipeline.name, topic, on_result, on_chunk, outcome,
                     on_flow_run=on_flow_run, stop=stop or StopSignal(),
                     restart_hung_workers=restart_hung_workers, on_dashboard=on_dashboard,
                     record_paths=record_paths)
    _ACTIVE[topic] = run
    try:
        flow = Flow(
            fn=_flow_body(topic), name=pipeline.name, task_runner=task_runner, flow_run_name=flow_run_name,
            validate_parameters=False, persist_result=False, log_prints=False,
        )
        adopted = _ADOPTED.get()
        with _no_heartbeat_unless_asked():
            if adopted is not None:
                from prefect.flow_engine import run_flow as run_prefect_flow

                state = run_prefect_flow(flow, flow_run=adopted, return_type="state")
            else:
                state = flow(return_state=True)
    finally:
        _ACTIVE.pop(topic, None)
    run.outcome.state = state.type.value if state else ""
    run.outcome.state_message = (state.message or "") if state else ""
    _drain_prefect_workers()
    return run.outcome


_HEARTBEAT_ENV = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


def _no_heartbeat_unless_asked() -> contextlib.AbstractContextManager[Any]:
    """Settings for the flow run: no heartbeat thread, unless the user configured one."""
    if any(os.environ.get(name) for name in _HEARTBEAT_ENV):
        return contextlib.nullcontext()
    return override_settings(flows={"heartbeat_frequency": None})


@dataclass
class _ActiveRun:
    """Driver-side state of a flow run, looked up by key so the flow function (which
    Prefect serialises into every task's context) closes over nothing."""

    source: BatchSource
    pack: Callable[[BatchJob], PackedJob]
    name: str
    topic: str
    on_result: Callable[[ChunkResult], None]
    on_chunk: Callable[[dict[str, Any]], None]
    outcome: FlowOutcome
    client: Any = None
    on_flow_run: Optional[Callable[[str], None]] = None
    stop: StopSignal = field(default_factory=StopSignal)
    restart_hung_workers: bool = True
    on_dashboard: Optional[Callable[[str], None]] = None
    record_paths: tuple[Optional[str], Optional[str]] = (None, None)
    hung_workers: set[str] = field(default_factory=set)
    partial: dict[str, list[ChunkResult]] = field(default_factory=dict)
    _futures: set[Any] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def track(self, future: Any) -> None:
        """Remember a batch's Dask future until it is done; cancel it at once if the
        run is already stopping."""
        with self._lock:
            self._futures.add(future)
        if self.stop.stopped:
            self.cancel_all()

    def untrack(self, future: Any) -> None:
        with self._lock:
            self._futures.discard(future)

    def cancel_all(self) -> None:
        """Cancel every batch still on the cluster (their waiting tasks then end
        Cancelled); chunks committed so far stay."""
        with self._lock:
            futures = list(self._futures)
        client = self.client
        if futures and client is not None:
            try:
                client.cancel(futures, force=True)
            except Exception:  # noqa: BLE001 - a closing client: the batches die with it
                pass

    def note_timeouts(self, results: list[ChunkResult]) -> None:
        """Remember the workers left running a timed-out chunk's thread."""
        with self._lock:
            self.hung_workers.update(r.worker for r in results if r.timed_out and r.worker)


_ACTIVE: dict[str, _ActiveRun] = {}


def _flow_body(run_key: str) -> Callable[[], None]:
    """The flow function of one run: :func:`_backfill` for ``run_key``, without parameters.

    The flow takes no parameters because Prefect serialises a flow run's parameters
    with FastAPI's encoder, whose import alone costs the driver ~70 ms per process;
    the run key means nothing to a user anyway (the flow run's name says what runs).
    """

    def backfill() -> Any:
        return _backfill(run_key)

    backfill.__doc__ = _backfill.__doc__
    return backfill


def _backfill(run_key: str) -> Any:
    """The flow body: submit every batch, gather results as they complete.

    On a Dask cluster the batch tasks go to a thread pool on the driver (each hands its
    batch to the cluster); otherwise to the flow's own task runner.

    Returns:
        The flow run's final state when it is not Completed: Cancelled if the run was
        stopped, Failed (with a message counting the failed chunks and naming the first
        keys) if any chunk failed.
    """
    run = _ACTIVE[run_key]
    outcome, topic = run.outcome, run.topic
    context = FlowRunContext.get()
    outcome.flow_run_id = str(context.flow_run.id) if context and context.flow_run else None
    if outcome.flow_run_id and run.on_flow_run is not None:
        run.on_flow_run(outcome.flow_run_id)
    runner = context.task_runner if context else None
    client = runner.client if type(runner).__name__ == "DaskTaskRunner" else None
    if client is not None:
        from distetl.engine.watch import dashboard_link

        outcome.dashboard_url = dashboard_link(client)
        if outcome.dashboard_url and run.on_dashboard is not None:
            run.on_dashboard(outcome.dashboard_url)
    on_chunk = run.on_chunk
    if client is not None:
        client.subscribe_topic(topic, lambda event: _unpack_events(event[1], on_chunk))
    else:
        _LOCAL_LISTENERS[topic] = lambda r: on_chunk({"key": r.key, "status": r.status, "rows": r.rows,
                                                      "stage": r.stage})
    # Prefect's flow engine installs a SIGTERM handler of its own for the flow run (it
    # raises in this thread, which would then wait forever on a hung batch): take it back.
    run.stop.reinstall()
    run.stop.on_stop(run.cancel_all)
    try:
        if client is not None:
            from prefect.task_runners import ThreadPoolTaskRunner

            # An adaptive (or still starting) cluster has fewer threads now than it will:
            # keep enough batches queued for the scheduler to scale it up.
            threads = max(sum(client.nthreads().values()), planned_threads(runner)) or 1
            run.client = client
            slots = max(1, IN_FLIGHT_PER_THREAD * threads)
            with ThreadPoolTaskRunner(max_workers=slots) as pool:
                _gather(run, lambda job: pool.submit(run_chunks, {"job": job, "label": job.job.label()}), slots)
            if run.hung_workers and run.restart_hung_workers and not run.stop.stopped:
                run.outcome.restarted_workers = _restart(client, sorted(run.hung_workers))
        else:
            _gather(run, lambda job: run_chunks.submit(job=job, label=job.job.label()), IN_FLIGHT_PER_THREAD)
        publish_run_artifacts(run.name, run.outcome.ledger, *run.record_paths)
    finally:
        run.client = None
        _LOCAL_LISTENERS.pop(topic, None)
        if client is not None:
            try:
                client.unsubscribe_topic(topic)
            except Exception:  # noqa: BLE001 - a client closed with its lost scheduler
                # (ClosedClientError): raising here would replace the run's own outcome
                # (the flow run's Failed message naming the lost scheduler) with this.
                if client.status not in _CLIENT_LOST:
                    raise
    return _final_state(run)


def _unpack_events(message: dict[str, Any], on_chunk: Callable[[dict[str, Any]], None]) -> None:
    """A worker's aggregated progress event (see ``execute._WorkerEvents``), one call
    of ``on_chunk`` per chunk in it."""
    for stage, key, status, rows in message.get("chunks", ()):
        on_chunk({"stage": stage, "key": key, "status": status, "rows": rows})


def _final_state(run: _ActiveRun) -> Any:
    """Cancelled if the run was stopped, Failed if a chunk failed, else None (Completed)."""
    from prefect.states import Cancelled, Failed

    ledger = run.outcome.ledger
    failed = ledger.count(FAILED)
    if run.outcome.scheduler_lost and not run.stop.stopped:
        return Failed(message=f"{run.outcome.scheduler_lost}: committed chunks stay ({failed} failed before); "
                      "rerun against a live scheduler to do the rest")
    if run.stop.stopped:
        return Cancelled(message=(
            f"stopped by {run.stop.name}: committed chunks stay ({failed} failed before the stop); "
            "rerun to do the rest"))
    if failed:
        keys = [r.key for r in ledger.bad if r.status == FAILED][:5]
        first = ", ".join(keys) + (", …" if failed > len(keys) else "")
        return Failed(message=f"{failed} of {ledger.total} chunk(s) failed: {first}")
    return None


#: Client states after its scheduler went away (it reconnects, then closes).
_CLIENT_LOST = ("connecting", "closing", "closed", "failed")


def scheduler_lost(client: Any, exc: BaseException, wait: float = 3.0) -> Optional[str]:
    """What a batch's exception means if the run's Dask scheduler is gone, else None.

    A scheduler that dies cancels every future of its clients (``FutureCancelledError``,
    reason unknown); the client then tries to reconnect and closes
    (``ClosedClientError``). A cancelled future of a client still running is waited on
    for ``wait`` seconds, until the client says which it is.
    """
    from distributed.client import ClosedClientError, FutureCancelledError
    from distributed.comm.core import CommClosedError

    if not isinstance(exc, (ClosedClientError, CommClosedError, FutureCancelledError, OSError)):
        return None
    deadline = time.monotonic() + wait
    status = str(getattr(client, "status", "running"))
    while status not in _CLIENT_LOST and not isinstance(exc, ClosedClientError) and time.monotonic() < deadline:
        time.sleep(0.1)
        status = str(getattr(client, "status", "running"))
    if status not in _CLIENT_LOST and not isinstance(exc, ClosedClientError):
        return None
    address = getattr(getattr(client, "scheduler", None), "address", None) or "of the run"
    return f"the Dask scheduler {address} was lost mid-run ({type(exc).__name__}; its client is {status})"


def _restart(client: Any, workers: list[str]) -> list[str]:
    """Restart workers through their nannies (a thread stuck in a timed-out chunk holds
    a worker slot until its process ends). Returns the workers restarted."""
    try:
        answer = client.restart_workers(workers, timeout=60, raise_for_error=False)
    except Exception:  # noqa: BLE001 - e.g. workers without a nanny: say nothing restarted
        return []
    return sorted(w for w, status in (answer or {}).items() if status == "OK")


def _gather(run: _ActiveRun, submit: Callable[[PackedJob], Any], slots: int) -> None:
    """Keep up to ``slots`` batch tasks in flight, asking the batch source for the next
    ready batch whenever one finishes, and hand each batch's results back to it at once
    (releasing its future, so only small results are kept). Once the run is stopping,
    nothing new is submitted and the batches in flight are waited for (they are
    cancelled)."""
    finished: "queue.Queue[Any]" = queue.Queue()
    in_flight: dict[Any, PackedJob] = {}
    while True:
        while len(in_flight) < slots and not run.stop.stopped and not run.outcome.scheduler_lost:
            job = run.source.next_batch()
            if job is None:
                break
            packed = run.pack(job)
            future = submit(packed)
            in_flight[future] = packed
            run.outcome.task_run_ids.append(str(future.task_run_id))
            future.add_done_callback(finished.put)
        if not in_flight:
            return
        future = finished.get()
        packed = in_flight.pop(future)
        results = run.partial.pop(_batch_id(packed.job), None) or _results_of(
            future, packed.job, run.stop.stopped, run.outcome.scheduler_lost)
        for result in results:
            result.task_run_id = str(future.task_run_id)
            if not result.stage:
                result.stage = packed.job.stage
        run.source.done(packed.job, results)  # may correct results in place (see Dispatcher)
        for result in results:
            if result.status != NOT_RUN:
                run.outcome.ledger.add(result)
            run.on_result(result)
        del future, results


@dataclass
class _FixedBatches:
    """A batch source over a fixed list of independent batches."""

    jobs: list[BatchJob]
    position: int = 0

    def next_batch(self) -> Optional[BatchJob]:
        if self.position >= len(self.jobs):
            return None
        self.position += 1
        return self.jobs[self.position - 1]

    def done(self, job: BatchJob, results: list[ChunkResult]) -> None:
        pass


def _results_of(future: Any, job: BatchJob, stopped: bool = False, lost: Optional[str] = None) -> list[ChunkResult]:
    """The chunk results of a finished batch future, whatever became of it.

    A batch that ended with the run's stop, or with its scheduler (``lost`` says how),
    reports its chunks as not run (the driver then counts those its workers committed,
    from their progress events and a listing).
    """
    future.wait()
    state = future.state
    if state.is_completed():
        value = future.result()
        return list(value.results if isinstance(value, BatchResults) else value)
    if state.is_cancelled() or ((stopped or lost) and not state.is_failed()):
        why = "the run was stopped" if stopped or not lost else lost
        return [ChunkResult(key=c.key, path=p, status=NOT_RUN, stage=job.stage,
                            error=f"not run: {why}") for c, p in job.chunks]
    exc: Any = None
    if state.is_final():
        try:
            exc = state.result(raise_on_failure=False)
        except Exception as err:  # noqa: BLE001 - the state itself could not be read
            exc = err
    if isinstance(exc, BatchFailed):
        return exc.results
    wrapped = getattr(future, "wrapped_future", None)
    if exc is None and wrapped is not None and wrapped.status == "error":
        exc = wrapped.exception()
    message = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(state.message or state.type)
    return [
        ChunkResult(key=c.key, path=p, status=FAILED, stage=job.stage,
                    error=f"batch task failed ({message}); the chunk's target was left as it was")
        for c, p in job.chunks
    ]
