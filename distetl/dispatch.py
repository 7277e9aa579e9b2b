"""Batches of ready chunks for the flow, and results back into the stage graph.

Plain Python: the flow asks :meth:`Dispatcher.next_batch` whenever it has a free slot
and hands every finished batch to :meth:`Dispatcher.done`; the graph
(:class:`distetl.graph.ReadyTracker`) decides what is ready. Downstream stages are
served first, so a lineage finishes early and no stage waits for the whole of its
upstream stage (no barrier).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

from distetl.execute import NOT_RUN, SKIPPED, WRITTEN, BatchJob, ChunkResult
from distetl.graph import ReadyTracker, StagePlan

__all__ = ["Dispatcher", "BATCHES_PER_WORKER"]

#: Default number of batches per worker per stage (``chunks_per_task`` overrides it).
BATCHES_PER_WORKER = 8


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
            self.sizes = {name: max(1, math.ceil(len(need[name]) / batches)) for name in self.order}

    def next_batch(self) -> Optional[BatchJob]:
        """The next batch of ready chunks (deepest stage first), or None."""
        for name in reversed(self.order):
            if self.tracker.ready_count(name):
                return self.make_job(self.plans[name], self.tracker.take(name, self.sizes[name]))
        return None

    def done(self, job: BatchJob, results: list[ChunkResult]) -> None:
        """Feed a finished batch's results to the graph."""
        name = job.stage or self.order[0]
        plan = self.plans[name]
        for result in results:
            # Not run (the run stopped): its readers are not blocked, just not run either.
            self.tracker.done(name, plan.index_of(result.key), result.status in (WRITTEN, SKIPPED),
                              block=result.status != NOT_RUN)

    @property
    def blocked(self) -> dict[tuple[str, int], str]:
        """Chunks not run because an input failed: (stage, index) → the failed input."""
        return self.tracker.blocked
