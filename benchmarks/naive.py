"""The naive Prefect way: one DaskTaskRunner task each for extract, transform and load.

Imported only by the naive variant (and by its Dask workers, which run these tasks), so
the other variants' processes never import Prefect for it. The tasks get
``cache_policy=NO_CACHE`` and no result persistence: the naive way pays only Prefect's
per-task cost, not input hashing or result storage.
"""

from __future__ import annotations

import io
import time
from typing import Any

import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from distetl.model.chunks import Chunk
from distetl.engine.execute import FAILED, WRITTEN, ChunkContext, ChunkResult
from distetl.model.pipeline import Pipeline, arity
from distetl.model.schema import to_table
from distetl.storage import Storage

__all__ = ["REGISTRY", "naive_body", "naive_extract", "naive_load", "naive_transform"]


@task(cache_policy=NO_CACHE, persist_result=False)
def naive_extract(pipeline: Pipeline, chunk: Chunk, output: str, storage_options: dict) -> Any:
    """Extract one chunk (a Prefect task on a Dask worker)."""
    if arity(pipeline.extract) >= 2:
        return pipeline.extract(chunk, ChunkContext(chunk, output, storage_options))
    return pipeline.extract(chunk)


@task(cache_policy=NO_CACHE, persist_result=False)
def naive_transform(pipeline: Pipeline, frame: Any, chunk: Chunk) -> Any:
    """Transform one chunk's DataFrame (passed in as a future)."""
    if pipeline.transform is None:
        return frame
    if arity(pipeline.transform) >= 2:
        return pipeline.transform(frame, chunk)
    return pipeline.transform(frame)


@task(cache_policy=NO_CACHE, persist_result=False)
def naive_load(pipeline: Pipeline, frame: Any, chunk: Chunk, path: str, output: str,
               storage_options: dict) -> ChunkResult:
    """Cast, serialise and commit one chunk, as distetl's chunk code does."""
    start = time.perf_counter()
    table = to_table(frame, pipeline.schema, chunk.key)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression=pipeline.compression)
    data = buffer.getvalue()
    Storage.for_url(output, storage_options).write_atomic(path, data)
    return ChunkResult(key=chunk.key, path=path, status=WRITTEN, rows=table.num_rows, bytes=len(data),
                       seconds=time.perf_counter() - start)


#: Runs by key: the flow takes a key, not the chunks (flow parameters go to the API).
REGISTRY: dict[str, Any] = {}


def naive_body(run_key: str) -> list[ChunkResult]:
    """The flow: submit extract → transform → load per chunk, then wait for every load."""
    pipeline, items, output, options = REGISTRY[run_key]
    loads = []
    for chunk, path in items:
        frame = naive_extract.submit(pipeline, chunk, output, options)
        frame = naive_transform.submit(pipeline, frame, chunk)
        loads.append(naive_load.submit(pipeline, frame, chunk, path, output, options))
    results = []
    for future in loads:
        try:
            results.append(future.result())
        except Exception as exc:  # noqa: BLE001 - count it as a failed chunk
            results.append(ChunkResult(key="?", path="", status=FAILED, error=repr(exc)))
    return results
