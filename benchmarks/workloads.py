"""Benchmark workloads and their sizes in quick and full mode.

The pipelines here and in ``flows/`` are imported as plain modules (``flows/`` and
``benchmarks/`` are on ``sys.path``), so every variant, distetl included, ships them to
Dask workers the same way: by reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from distetl import Chunk, IdRange, Pipeline

__all__ = ["Sizes", "QUICK", "FULL", "make_workload", "tiny_pipeline"]


@dataclass(frozen=True)
class Sizes:
    """How big each workload is.

    Attributes:
        mode: ``quick`` or ``full``.
        tpch_sf: TPC-H scale factor of the CPU-bound workload.
        tpch_parts: Parts (= chunks) of the CPU-bound workload.
        tiny_chunks: Chunks of the many-small-chunks workload.
        naive_tiny_sample: Chunks the naive Prefect variant runs of those.
        dd_tiny_sample: Chunks dask.dataframe runs of those (0: all). Sampled in both
            modes: with 20,000 partitions its graph alone kept it busy for over 25
            minutes (2 cores), against ~3 s for 300.
        resume_chunks: Committed chunks the resume workload reruns over.
        naive_nyc_sample: Days the naive Prefect variant runs of the nycflights year.
        s3_rerun_chunks: Finished chunks on S3 the S3 rerun lists.
        stage_days: Day chunks of the root stage of the three-stage ``stages`` workload
            (as many again in its identity stage, plus one chunk per month). Full mode
            stops at 5,000 days (10,165 chunks): Luigi's scheduler sorts every pending
            task on each request for work, so its cost per task grows with the graph.
    """

    mode: str
    tpch_sf: float
    tpch_parts: int
    tiny_chunks: int
    naive_tiny_sample: int
    dd_tiny_sample: int
    resume_chunks: int
    naive_nyc_sample: int
    s3_rerun_chunks: int
    stage_days: int = 2_000


QUICK = Sizes(mode="quick", tpch_sf=1.0, tpch_parts=16, tiny_chunks=2_000, naive_tiny_sample=40,
              dd_tiny_sample=300, resume_chunks=10_000, naive_nyc_sample=20, s3_rerun_chunks=1_000,
              stage_days=2_000)
FULL = Sizes(mode="full", tpch_sf=10.0, tpch_parts=160, tiny_chunks=20_000, naive_tiny_sample=500,
             dd_tiny_sample=2_000, resume_chunks=50_000, naive_nyc_sample=365, s3_rerun_chunks=5_000,
             stage_days=5_000)

TINY_ROWS = 20
TINY_SCHEMA = pa.schema([("id", pa.int64()), ("value", pa.float64()), ("label", pa.string())])


def tiny_extract(chunk: Chunk) -> pd.DataFrame:
    """A few rows per chunk: the work is almost all orchestration and the commit."""
    ids = np.arange(chunk["start"], chunk["stop"], dtype="int64")
    return pd.DataFrame({"id": ids, "value": ids * 0.5, "label": [f"row-{i}" for i in ids]})


def tiny_pipeline(chunks: int, name: str = "tiny") -> Pipeline:
    """``chunks`` chunks of :data:`TINY_ROWS` rows each, one small Parquet file per chunk."""
    return Pipeline(
        name=name,
        plan=IdRange(start=0, stop=chunks * TINY_ROWS, size=TINY_ROWS),
        extract=tiny_extract,
        target="{output}/" + name + "/part-{first}.parquet",
        schema=TINY_SCHEMA,
        description=f"{chunks} tiny chunks",
    )


def make_workload(spec: Mapping[str, Any]):
    """Build a :class:`benchlib.Workload` from a JSON-able spec.

    Spec keys: ``name``, ``kind`` (``tpch``, ``tiny``, ``nycflights``, ``stages``,
    ``stages_days``), ``root``, and per kind ``sf``/``parts`` (tpch), ``chunks`` (tiny) or
    ``days`` (stages: the three-stage graph; stages_days: its root stage alone); optional
    ``output_url`` and ``storage_options`` (S3).
    """
    from benchlib import Workload

    kind = spec["kind"]
    extra = {"storage_options": dict(spec.get("storage_options") or {}), "output_url": spec.get("output_url")}
    root = Path(spec["root"])
    if kind == "tpch":
        import tpch

        return Workload(spec["name"], tpch.pipeline, root, params={"sf": spec["sf"], "parts": spec["parts"]}, **extra)
    if kind == "tiny":
        return Workload(spec["name"], tiny_pipeline(spec["chunks"], spec.get("pipeline", "tiny")), root, **extra)
    if kind == "nycflights":
        import nycflights

        return Workload(spec["name"], nycflights.pipeline, root, **extra)
    if kind in ("stages", "stages_days"):
        import stages_workload

        build = stages_workload.stages_pipeline if kind == "stages" else stages_workload.days_pipeline
        return Workload(spec["name"], build(spec["days"]), root, **extra)
    raise ValueError(f"unknown workload kind {kind!r}")
