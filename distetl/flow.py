"""The Prefect 3 flow: batches of chunks, one Prefect task each, run on Dask or in-process.

This and :mod:`distetl.prefect_api` / :mod:`distetl.runners` are the only modules that
touch Prefect or Dask. Each batch of chunks is one Prefect task run (its state, name
and timing are in Prefect) that returns only small
:class:`~distetl.execute.ChunkResult` records; each chunk reports progress as it lands
(Dask worker events on a cluster, a callback in-process).

On a Dask cluster the batch tasks run in driver threads, and each submits its batch to
the cluster through the Dask client as a plain function (:func:`distetl.packing.run_packed`).
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
import hashlib
import os
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

import cloudpickle
from prefect import Flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import as_completed

from distetl.execute import FAILED, BatchJob, ChunkResult, _LOCAL_LISTENERS, run_batch
from distetl.loader import sources_for
from distetl.packing import PackedJob, run_packed
from distetl.pipeline import Pipeline
from distetl.prefect_api import override_settings, publish_chunk_table

__all__ = ["FlowOutcome", "PackedJob", "run_flow", "split_batches"]

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
def run_chunks(job: PackedJob, label: str) -> list[ChunkResult]:
    """Run a batch of chunks (extract → transform → write).

    With a Dask cluster (the run's client), the batch runs on a worker as a plain
    function and this task, in a driver thread, waits for it; otherwise it runs here.

    Raises:
        BatchFailed: If any chunk failed (so the task run shows Failed); the exception
            carries every chunk's result, the committed ones included.
        Exception: Whatever Dask raised if the batch was lost (e.g. ``KilledWorker``).
    """
    run = _ACTIVE.get(job.job.topic)
    client = run.client if run is not None else None
    if client is not None:
        future = client.submit(run_packed, job, key=f"distetl-batch-{uuid.uuid4().hex}", pure=False)
        try:
            results = future.result()
        finally:
            future.release()
    else:
        results = run_batch(job.unpack())
    if any(r.status == FAILED for r in results):
        raise BatchFailed(results)
    return results


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

    results: list[ChunkResult] = field(default_factory=list)
    flow_run_id: Optional[str] = None
    task_run_ids: list[str] = field(default_factory=list)
    state: str = ""


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


def run_flow(
    pipeline: Pipeline,
    jobs: list[BatchJob],
    task_runner: Any,
    on_result: Callable[[ChunkResult], None],
    on_chunk: Callable[[dict[str, Any]], None],
    flow_run_name: str,
    on_flow_run: Optional[Callable[[str], None]] = None,
) -> FlowOutcome:
    """Run the batches as one Prefect flow run and gather the chunk results.

    Args:
        pipeline: The pipeline (for the flow name).
        jobs: Batches to run.
        task_runner: The Prefect task runner.
        on_result: Called on the driver with each chunk's final result.
        on_chunk: Called (possibly from another thread) as each chunk lands on a worker,
            with ``{"key", "status", "rows"}``: the live progress feed.
        flow_run_name: Name of the flow run in Prefect.
        on_flow_run: Called on the driver with the flow run's id as soon as it exists
            (e.g. to record it in the run's lease).
    """
    blob = cloudpickle.dumps(pipeline)
    sources = sources_for(blob)
    # The pipeline pickles flow-file functions by reference: the digest (the workers'
    # cache key) covers the shipped source too, so an edited flow file is not stale.
    digest = hashlib.sha256(blob + "".join(s.source for s in sources).encode()).hexdigest()
    topic = f"distetl-{uuid.uuid4().hex}"
    packed = [PackedJob(replace(job, topic=topic), blob, digest, sources) for job in jobs]
    run = _ActiveRun(packed, topic, on_result, on_chunk, FlowOutcome(), on_flow_run=on_flow_run)
    _ACTIVE[topic] = run
    try:
        flow = Flow(
            fn=_flow_body(topic), name=pipeline.name, task_runner=task_runner, flow_run_name=flow_run_name,
            validate_parameters=False, persist_result=False, log_prints=False,
        )
        with _no_heartbeat_unless_asked():
            state = flow(return_state=True)
    finally:
        _ACTIVE.pop(topic, None)
    run.outcome.state = state.type.value if state else ""
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

    jobs: list[PackedJob]
    topic: str
    on_result: Callable[[ChunkResult], None]
    on_chunk: Callable[[dict[str, Any]], None]
    outcome: FlowOutcome
    client: Any = None
    on_flow_run: Optional[Callable[[str], None]] = None


_ACTIVE: dict[str, _ActiveRun] = {}


def _flow_body(run_key: str) -> Callable[[], None]:
    """The flow function of one run: :func:`_backfill` for ``run_key``, without parameters.

    The flow takes no parameters because Prefect serialises a flow run's parameters
    with FastAPI's encoder, whose import alone costs the driver ~70 ms per process;
    the run key means nothing to a user anyway (the flow run's name says what runs).
    """

    def backfill() -> None:
        _backfill(run_key)

    backfill.__doc__ = _backfill.__doc__
    return backfill


def _backfill(run_key: str) -> None:
    """The flow body: submit every batch, gather results as they complete.

    On a Dask cluster the batch tasks go to a thread pool on the driver (each hands its
    batch to the cluster); otherwise to the flow's own task runner.
    """
    run = _ACTIVE[run_key]
    outcome, topic = run.outcome, run.topic
    context = FlowRunContext.get()
    outcome.flow_run_id = str(context.flow_run.id) if context and context.flow_run else None
    if outcome.flow_run_id and run.on_flow_run is not None:
        run.on_flow_run(outcome.flow_run_id)
    runner = context.task_runner if context else None
    client = runner.client if type(runner).__name__ == "DaskTaskRunner" else None
    on_chunk = run.on_chunk
    if client is not None:
        client.subscribe_topic(topic, lambda event: on_chunk(event[1]))
    else:
        _LOCAL_LISTENERS[topic] = lambda r: on_chunk({"key": r.key, "status": r.status, "rows": r.rows})
    try:
        if client is not None:
            from prefect.task_runners import ThreadPoolTaskRunner

            threads = sum(client.nthreads().values()) or 1
            run.client = client
            with ThreadPoolTaskRunner(max_workers=max(1, min(len(run.jobs), IN_FLIGHT_PER_THREAD * threads))) as pool:
                _gather(run, lambda job: pool.submit(run_chunks, {"job": job, "label": job.job.label()}))
        else:
            _gather(run, lambda job: run_chunks.submit(job=job, label=job.job.label()))
        publish_chunk_table(run.jobs[0].job.pipeline.name if run.jobs else "distetl", run.outcome.results)
    finally:
        run.client = None
        _LOCAL_LISTENERS.pop(topic, None)
        if client is not None:
            client.unsubscribe_topic(topic)


def _gather(run: _ActiveRun, submit: Callable[[PackedJob], Any]) -> None:
    """Submit every batch task, then take each batch's results as it finishes
    (releasing its future at once, so only small results are kept)."""
    futures = {}
    for job in run.jobs:
        future = submit(job)
        futures[future] = job
        run.outcome.task_run_ids.append(str(future.task_run_id))
    for future in as_completed(list(futures)):
        job = futures.pop(future)
        for result in _results_of(future, job.job):
            result.task_run_id = str(future.task_run_id)
            run.outcome.results.append(result)
            run.on_result(result)
        del future


def _results_of(future: Any, job: BatchJob) -> list[ChunkResult]:
    """The chunk results of a finished batch future, whatever became of it."""
    future.wait()
    state = future.state
    if state.is_completed():
        return list(future.result())
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
        ChunkResult(key=c.key, path=p, status=FAILED,
                    error=f"batch task failed ({message}); the chunk's target was left as it was")
        for c, p in job.chunks
    ]
