"""A batch as it travels to a Dask worker, and the plain function that runs it there.

Nothing here imports Prefect: a worker that runs :func:`run_packed` imports only
distetl's execution code, pandas and pyarrow, never the orchestration layer.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import cloudpickle

from distetl.engine.execute import BatchJob, ChunkResult, _default_reporter, run_batch
from distetl.engine.loader import FlowSource, ensure_modules
from distetl.model.pipeline import Pipeline

__all__ = ["BatchAbandoned", "PackedJob", "pack_bytes", "run_packed", "run_packed_bytes"]

_PIPELINES: dict[str, Pipeline] = {}


@dataclass
class PackedJob:
    """A BatchJob whose pipeline travels as cloudpickle bytes (by value for flow files).

    The pipeline is unpickled once per worker process and pipeline digest, not once
    per batch.

    Attributes:
        job: The batch; its pipeline is dropped when pickled.
        blob: The pipeline, cloudpickled.
        digest: SHA-256 of ``blob``.
        sources: Flow files loaded by path, shipped so workers can import them.
    """

    job: BatchJob
    blob: bytes
    digest: str
    sources: list[FlowSource] = field(default_factory=list)

    def __getstate__(self) -> dict[str, Any]:
        return {"job": replace(self.job, pipeline=None), "blob": self.blob, "digest": self.digest,
                "sources": self.sources}

    def unpack(self) -> BatchJob:
        """The BatchJob with its pipeline (unpickled here if it travelled)."""
        if self.job.pipeline is not None:
            return self.job
        ensure_modules(self.sources)
        pipeline = _PIPELINES.get(self.digest)
        if pipeline is None:
            pipeline = _PIPELINES[self.digest] = cloudpickle.loads(self.blob)
        return replace(self.job, pipeline=pipeline)


class BatchAbandoned(RuntimeError):
    """Raised on a worker between chunks when nobody wants the batch any more (its
    driver died or disconnected): the chunks not started stay missing for the rerun."""


def pack_bytes(job: PackedJob) -> bytes:
    """A packed batch as compressed cloudpickle bytes, for :func:`run_packed_bytes`."""
    return zlib.compress(cloudpickle.dumps(job), 1)


def run_packed_bytes(data: bytes) -> list[ChunkResult]:
    """:func:`run_packed` of a job that travelled as :func:`pack_bytes` bytes.

    The scheduler holds on to the arguments of recent tasks: as one compressed bytes
    object a 500-chunk batch costs it ~10 KB, where the unpickled job kept ~10 Python
    objects per chunk alive in the scheduler (in the driver's process for a local
    cluster)."""
    return run_packed(cloudpickle.loads(zlib.decompress(data)))


def run_packed(job: PackedJob) -> list[ChunkResult]:
    """Run a packed batch in this process (the function Dask workers run).

    On a Dask worker the batch stops once the scheduler has cancelled it (the run was
    stopped, or its client -- the driver -- is gone), or once the worker lost the
    scheduler itself: a chunk computing then commits nothing, and the chunks not started
    stay missing for the rerun.
    """
    cancelled = _cancelled_check()
    return run_batch(job.unpack(), report=_reporter(job.job.topic, cancelled), should_stop=cancelled)


#: Worker states once it is going away. A worker whose scheduler connection breaks
#: closes itself ("worker-handle-scheduler-connection-broken"), but the thread running
#: a batch goes on until the process ends (seconds later) and its task still reads
#: "executing": without this check it kept committing chunks after the driver had
#: written its manifest and released the output's lease. (Not ``closing_gracefully``:
#: a retiring worker still finishes what it runs.)
_WORKER_GONE = ("stopping", "stopped", "closing", "closed", "failed")


def _cancelled_check() -> Optional[Callable[[], bool]]:
    """On a Dask worker, a function telling whether the current task was cancelled
    or its worker is closing (e.g. it lost its scheduler)."""
    try:
        from distributed import get_worker

        worker = get_worker()
        key = worker.get_current_task()
    except (ImportError, ValueError):
        return None

    def cancelled() -> bool:
        if getattr(getattr(worker, "status", None), "name", "running") in _WORKER_GONE:
            return True
        state = worker.state.tasks.get(key)
        return state is None or state.state in ("cancelled", "released", "forgotten")

    return cancelled


def _reporter(topic: str, cancelled: Optional[Callable[[], bool]]) -> Callable[[ChunkResult], None]:
    """Progress reporter that also raises :class:`BatchAbandoned` once this batch's
    Dask task was cancelled."""
    send = _default_reporter(topic)
    if cancelled is None:
        return send

    def report(result: ChunkResult) -> None:
        send(result)
        if cancelled():
            flush()
            raise BatchAbandoned(
                f"batch stopped after chunk {result.key}: the scheduler cancelled it (its run stopped or "
                "its driver disconnected) or its worker is closing (e.g. it lost the scheduler); the rest "
                "of its chunks are left for the rerun"
            )

    flush = getattr(send, "flush", None) or (lambda: None)
    report.flush = flush  # type: ignore[attr-defined]  # run_batch sends what is pending at the end
    return report
