"""A batch as it travels to a Dask worker, and the plain function that runs it there.

Nothing here imports Prefect: a worker that runs :func:`run_packed` imports only
distetl's execution code, pandas and pyarrow, never the orchestration layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import cloudpickle

from distetl.execute import BatchJob, ChunkResult, run_batch
from distetl.loader import FlowSource, ensure_modules
from distetl.pipeline import Pipeline

__all__ = ["PackedJob", "run_packed"]

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


def run_packed(job: PackedJob) -> list[ChunkResult]:
    """Run a packed batch in this process (the function Dask workers run)."""
    return run_batch(job.unpack())
