"""A batch whose workers kept dying: rerun its chunks one by one, and name the one to blame.

Dask reruns a task whose worker died on another worker, up to
``distributed.scheduler.allowed-failures`` times, then gives up with ``KilledWorker``.
A batch of chunks that ends so does not mean all its chunks are bad: usually one chunk
killed its workers (most often by going past the worker's memory limit, when the nanny
restarts the worker) and the others merely shared them. :func:`rerun_alone` runs each
chunk of such a batch as a Dask task of its own, in order (a chunk committed before is
skipped on the worker), so the innocent ones commit and the culprit fails alone, with
:func:`killed_error` saying what happened: "ran out of memory on worker W (limit 2 GiB)"
when the scheduler recorded memory restarts (the nanny's ``worker-restart-memory``
events) of the last worker that ran it, or of most of the workers its tasks could have
killed since its first task of its own began, else that its workers died. (The nanny sends
that event beside killing the worker, so it can reach the scheduler after Dask gave up on
the task: the driver waits a moment for it; and a worker Dask counts against the task can
die without one, e.g. one closed while paused at its memory limit.)

Driver side; the tasks are the same plain batch function the workers always run.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any, Callable

from distetl.engine.packing import PackedJob, pack_bytes, run_packed_bytes
from distetl.state.results import FAILED, ChunkResult

__all__ = ["for_memory", "is_killed_worker", "killed_error", "memory_restarts", "rerun_alone", "single", "ALONE_TRIES"]

#: Tasks a chunk of a batch Dask gave up on gets on its own before it is blamed.
ALONE_TRIES = 2


def is_killed_worker(exc: BaseException) -> bool:
    """Whether Dask gave up on a task because its workers kept dying."""
    try:
        from distributed.scheduler import KilledWorker
    except ImportError:  # pragma: no cover - Dask is a dependency
        return False
    return isinstance(exc, KilledWorker)


def memory_restarts(client: Any, since: float = 0.0) -> dict[str, int]:
    """Per worker address, the memory limit (bytes) of workers the nannies restarted for
    memory (at ``since``, a scheduler ``time.time()``, or later), from the scheduler's
    ``worker-restart-memory`` events (limit 0: unknown)."""
    try:
        events = client.get_events("worker-restart-memory")
    except Exception:  # noqa: BLE001 - no events: say nothing about memory
        return {}
    limits = {}
    try:
        for address, info in (client.scheduler_info().get("workers") or {}).items():
            limits[address] = int(info.get("memory_limit") or 0)
    except Exception:  # noqa: BLE001
        pass
    known = max(limits.values(), default=0)
    out: dict[str, int] = {}
    for stamp, event in events or ():
        if isinstance(event, dict) and event.get("worker") and (stamp or 0) >= since:
            out[event["worker"]] = limits.get(event["worker"], known)
    return out


def _deaths(exc: BaseException) -> int:
    tries = getattr(exc, "allowed_failures", None)
    return tries + 1 if isinstance(tries, int) else 1


def for_memory(exc: BaseException, restarts: dict[str, int], tasks: int = 1) -> bool:
    """Whether a task Dask gave up on (``exc``, a ``KilledWorker``) died of memory: its last
    worker was restarted for memory, or most of the worker deaths its ``tasks`` tasks
    took were memory restarts (``restarts``: those since its first task began)."""
    last = getattr(getattr(exc, "last_worker", None), "address", None)
    return last in restarts or 2 * len(restarts) > _deaths(exc) * tasks


def _size(n: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:.3g} {unit}"
    return f"{n} B"


def killed_error(key: str, stage: str, exc: BaseException, restarts: dict[str, int], tasks: int = 1) -> str:
    """The error of a chunk whose ``tasks`` tasks' workers kept dying (see the module)."""
    worker = getattr(exc, "last_worker", None)
    last = getattr(worker, "address", None) or "?"
    tried = f"{_deaths(exc)} worker(s)" if isinstance(getattr(exc, "allowed_failures", None), int) else "its workers"
    where = f"chunk {key}" + (f" of stage {stage}" if stage else "")
    if for_memory(exc, restarts, tasks):
        limit = restarts.get(last) or int(getattr(worker, "memory_limit", 0) or 0) or max(restarts.values(), default=0)
        return (f"{where} ran out of memory on worker {last} (limit {_size(limit) if limit else 'unknown'}): "
                f"the nanny restarted {tried} past 95 % of the limit while it ran; nothing was committed. "
                "Fix: smaller chunks, streamed pieces (see Chunks bigger than memory: an extract that yields "
                "DataFrames), or a larger limit (--worker-memory-limit; dask worker --memory-limit on a "
                "remote cluster)")
    return (f"{where}: {tried} died while running it (the last {last}; not for memory, as far as the "
            "scheduler knows); nothing was committed. Fix: look at that worker's log (a crash in native "
            "code, a killed process), then rerun")


#: Seconds the driver waits for the last worker's memory-restart event to reach the scheduler.
EVENT_WAIT = 2.0


def _restarts_seen(client: Any, exc: BaseException, since: float, tasks: int) -> dict[str, int]:
    """:func:`memory_restarts` since ``since``, waiting up to :data:`EVENT_WAIT` seconds
    while they do not say memory yet (the nanny's event travels apart from the death)."""
    deadline = time.monotonic() + EVENT_WAIT
    restarts = memory_restarts(client, since)
    while not for_memory(exc, restarts, tasks) and time.monotonic() < deadline:
        time.sleep(0.2)
        restarts = memory_restarts(client, since)
    return restarts


def single(packed: PackedJob, index: int) -> PackedJob:
    """The batch's chunk ``index`` as a batch of its own."""
    job = packed.job

    def one(values: Any) -> Any:
        return None if values is None else [values[index]]

    return replace(packed, job=replace(job, chunks=[job.chunks[index]], inputs=one(job.inputs),
                                       fingerprints=one(job.fingerprints), previous_rows=one(job.previous_rows)))


def rerun_alone(client: Any, packed: PackedJob, first: BaseException,
                track: Callable[[Any], None], untrack: Callable[[Any], None],
                stopped: Callable[[], bool]) -> list[ChunkResult]:
    """Run each chunk of a batch Dask gave up on (``first``, a ``KilledWorker``) as a
    task of its own, in order; a chunk whose own task is given up on too fails with
    :func:`killed_error`. Chunks committed meanwhile are skipped on the worker.

    Returns:
        One result per chunk of the batch. A chunk not started because the run was
        stopped (or its scheduler lost) is left out (the caller treats it as not run).
    """
    job = packed.job
    results: list[ChunkResult] = []
    for index, (chunk, path) in enumerate(job.chunks):
        if stopped():
            break
        since = _scheduler_time(client)
        for attempt in range(ALONE_TRIES):
            future = client.submit(run_packed_bytes, pack_bytes(single(packed, index)),
                                   key=f"distetl-chunk-{uuid.uuid4().hex}", pure=False)
            track(future)
            try:
                results.extend(future.result())
                break
            except BaseException as exc:  # noqa: BLE001 - sorted out below
                if not is_killed_worker(exc):
                    raise
                # A chunk queued on a worker another chunk kills dies with it: only a chunk
                # whose own task is given up on every time is the one to blame.
                if attempt + 1 == ALONE_TRIES or stopped():
                    results.append(ChunkResult(key=chunk.key, path=path, status=FAILED, stage=job.stage,
                                               error=killed_error(chunk.key, job.stage, exc, _restarts_seen(
                                                   client, exc, since, attempt + 1), attempt + 1)))
                    break
            finally:
                untrack(future)
                future.release()
    return results


def _scheduler_time(client: Any) -> float:
    """The scheduler's clock now (its events are stamped with it); this machine's when it
    does not say, minus a second for the clocks' skew."""
    try:
        return float(client.run_on_scheduler(time.time))
    except Exception:  # noqa: BLE001 - an older or locked-down scheduler
        return time.time() - 1.0
