"""The Prefect 3 flow: batches of chunks fan out as tasks on the chosen task runner.

This and :mod:`distetl.prefect_api` / :mod:`distetl.runners` are the only modules that
touch Prefect or Dask. One Prefect task runs a batch of chunks end to end on its worker
and returns only small :class:`~distetl.execute.ChunkResult` records; each chunk reports
progress as it lands (Dask worker events on a cluster, a callback in-process).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

import cloudpickle
from prefect import Flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import as_completed

from distetl.execute import FAILED, BatchJob, ChunkResult, _LOCAL_LISTENERS, run_batch
from distetl.loader import FlowSource, ensure_modules, loaded_sources
from distetl.pipeline import Pipeline

__all__ = ["FlowOutcome", "run_flow", "split_batches"]

_PIPELINES: dict[str, Pipeline] = {}


@dataclass
class PackedJob:
    """A BatchJob whose pipeline travels as cloudpickle bytes (by value for flow files)."""

    job: BatchJob
    blob: bytes
    digest: str
    sources: list[FlowSource] = field(default_factory=list)

    def __getstate__(self) -> dict[str, Any]:
        return {"job": replace(self.job, pipeline=None), "blob": self.blob, "digest": self.digest,
                "sources": self.sources}

    def unpack(self) -> BatchJob:
        if self.job.pipeline is not None:
            return self.job
        ensure_modules(self.sources)
        pipeline = _PIPELINES.get(self.digest)
        if pipeline is None:
            pipeline = _PIPELINES[self.digest] = cloudpickle.loads(self.blob)
        return replace(self.job, pipeline=pipeline)


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
    """Run a batch of chunks (extract → transform → write) on this worker.

    Raises:
        BatchFailed: If any chunk failed (so the task run shows Failed); the exception
            carries every chunk's result, the committed ones included.
    """
    results = run_batch(job.unpack())
    if any(r.status == FAILED for r in results):
        raise BatchFailed(results)
    return results


def split_batches(items: Sequence[Any], workers: int, chunks_per_task: Optional[int]) -> list[list[Any]]:
    """Cut items into batches: ``chunks_per_task`` each, or about 4 batches per worker.

    Four per worker keeps the tail short when chunks differ in cost, while the Prefect
    overhead (tens of ms per task) is paid per batch, not per chunk.
    """
    if not items:
        return []
    if chunks_per_task is None:
        batches = min(len(items), max(1, workers) * 4)
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
    """Flush queued Prefect events and logs in this process (run on every Dask worker).

    Runs the drain in its own thread: on a Dask worker this is called from the event
    loop, where Prefect's drain would only hand back a coroutine.
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
    """
    blob = cloudpickle.dumps(pipeline)
    digest = hashlib.sha256(blob).hexdigest()
    topic = f"distetl-{uuid.uuid4().hex}"
    sources = loaded_sources()
    packed = [PackedJob(replace(job, topic=topic), blob, digest, sources) for job in jobs]
    run = _ActiveRun(packed, topic, on_result, on_chunk, FlowOutcome())
    _ACTIVE[topic] = run
    try:
        flow = Flow(
            fn=_backfill, name=pipeline.name, task_runner=task_runner, flow_run_name=flow_run_name,
            validate_parameters=False, persist_result=False, log_prints=False,
        )
        state = flow(run_key=topic, return_state=True)
    finally:
        _ACTIVE.pop(topic, None)
    run.outcome.state = state.type.value if state else ""
    _drain_prefect_workers()
    return run.outcome


@dataclass
class _ActiveRun:
    """Driver-side state of a flow run, looked up by key so the flow function (which
    Prefect serialises into every task's context) closes over nothing."""

    jobs: list[PackedJob]
    topic: str
    on_result: Callable[[ChunkResult], None]
    on_chunk: Callable[[dict[str, Any]], None]
    outcome: FlowOutcome


_ACTIVE: dict[str, _ActiveRun] = {}


def _backfill(run_key: str) -> None:
    """The flow body: submit every batch, gather results as they complete."""
    run = _ACTIVE[run_key]
    outcome, topic = run.outcome, run.topic
    context = FlowRunContext.get()
    outcome.flow_run_id = str(context.flow_run.id) if context and context.flow_run else None
    runner = context.task_runner if context else None
    client = runner.client if type(runner).__name__ == "DaskTaskRunner" else None
    on_chunk = run.on_chunk
    if client is not None:
        client.subscribe_topic(topic, lambda event: on_chunk(event[1]))
    else:
        _LOCAL_LISTENERS[topic] = lambda r: on_chunk({"key": r.key, "status": r.status, "rows": r.rows})
    try:
        futures = {}
        for job in run.jobs:
            future = run_chunks.submit(job=job, label=job.job.label())
            futures[future] = job
            outcome.task_run_ids.append(str(future.task_run_id))
        for future in as_completed(list(futures)):
            job = futures.pop(future)
            for result in _results_of(future, job.job):
                result.task_run_id = str(future.task_run_id)
                outcome.results.append(result)
                run.on_result(result)
            del future
        if client is not None:
            client.run(_drain_prefect_workers)
    finally:
        _LOCAL_LISTENERS.pop(topic, None)
        if client is not None:
            client.unsubscribe_topic(topic)


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
