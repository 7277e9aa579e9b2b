"""Batches of ready chunks for the flow, and results back into the stage graph.

Plain Python: the flow asks :meth:`Dispatcher.next_batch` whenever it has a free slot
and hands every finished batch to :meth:`Dispatcher.done`; the graph
(:class:`distetl.model.graph.ReadyTracker`) decides what is ready. Downstream stages are
served first, so a lineage finishes early and no stage waits for the whole of its
upstream stage (no barrier).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

from distetl.model.chunkseq import IndexSet
from distetl.engine.execute import NOT_RUN, SKIPPED, WRITTEN, BatchJob, ChunkResult
from distetl.model.graph import ReadyTracker, StagePlan

__all__ = ["Dispatcher", "BATCHES_PER_WORKER", "CHAIN_SEGMENT", "MAX_BATCH"]

#: Default number of batches per worker per stage (``chunks_per_task`` overrides it).
BATCHES_PER_WORKER = 8

#: Most chunks in a default batch: what is in flight (chunks, paths, results) stays
#: small whatever the chunk count, at a few milliseconds of Prefect per batch.
MAX_BATCH = 500
#: Links of a chain (a stage reading its own past) one batch runs in order, at most: a
#: link then starts as soon as its predecessor is written, on the same worker, instead of
#: one Prefect task later.
CHAIN_SEGMENT = 256


class Dispatcher:
    """Hands out batches of ready chunks, one stage at a time.

    Args:
        plans: The selected stages' plans, upstream first.
        need: What runs (stage name → chunk indexes).
        make_job: Builds the batch of ``(stage plan, chunk indexes)``.
        workers: Worker threads of the cluster (batch sizing).
        chunks_per_task: Chunks per batch; default about 8 batches per worker per stage.
    """

    def __init__(
        self, plans: Sequence[StagePlan], need: dict[str, list[int]],
        make_job: Callable[[StagePlan, list[int]], BatchJob], workers: int,
        chunks_per_task: Optional[int] = None,
    ):
        self.plans = {p.name: p for p in plans}
        self.order = [p.name for p in plans]
        self.tracker = ReadyTracker(plans, need)
        self.make_job = make_job
        if chunks_per_task is not None:
            self.sizes = {name: max(1, chunks_per_task) for name in self.order}
        else:
            batches = max(1, workers) * BATCHES_PER_WORKER
            self.sizes = {name: min(MAX_BATCH, max(1, math.ceil(len(need[name]) / batches)))
                          for name in self.order}
        #: Stages that read their own past: their batches are chain segments.
        self.chains = {p.name for p in plans if any(item.upstream == p.name for item, _ in p.links)}
        #: Stage → the chunk indexes of the batches in flight, by batch.
        self._in_flight: dict[tuple[str, str], list[int]] = {}
        #: Stage → indexes of the chunks with a result (not "not run"): the rest of what
        #: runs was blocked, lost, or not run because the run stopped.
        self.reported = {p.name: IndexSet(len(p.chunks)) for p in plans}

    def next_batch(self) -> Optional[BatchJob]:
        """The next batch of ready chunks (deepest stage first), or None."""
        for name in reversed(self.order):
            if self.tracker.ready_count(name):
                plan = self.plans[name]
                if name in self.chains:  # one chain segment per batch: chains run side by side
                    indexes = self.tracker.chain_segment(name, self.tracker.take(name, 1)[0], CHAIN_SEGMENT)
                else:
                    indexes = self.tracker.take(name, self.sizes[name])
                job = self.make_job(plan, indexes)
                self._in_flight[(name, job.chunks[0][0].key)] = indexes
                return job
        return None

    def done(self, job: BatchJob, results: list[ChunkResult]) -> None:
        """Feed a finished batch's results to the graph."""
        name = job.stage or self.order[0]
        indexes = self._in_flight.pop((name, job.chunks[0][0].key), None) if job.chunks else None
        if indexes is None:  # not handed out here: find the indexes from the keys
            plan = self.plans[name]
            indexes = [plan.index_of(c.key) for c, _ in job.chunks]
        position = {c.key: i for (c, _), i in zip(job.chunks, indexes)}
        reported = self.reported[name]
        for result in results:
            index = position[result.key]
            if result.status != NOT_RUN:
                reported.add(index)
            self.landed(name, index, result)
            # Not run (the run stopped): its readers are not blocked, just not run either.
            self.tracker.done(name, index, result.status in (WRITTEN, SKIPPED), block=result.status != NOT_RUN)

    def landed(self, name: str, index: int, result: ChunkResult) -> None:
        """Called for every result before the graph hears of it (a hook; does nothing)."""

    @property
    def blocked(self) -> dict[tuple[str, int], str]:
        """Chunks not run because an input failed: (stage, index) → the failed input."""
        return self.tracker.blocked
