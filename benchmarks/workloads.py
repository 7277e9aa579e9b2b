"""Benchmark workloads and their sizes in quick and full mode.

The pipelines here and in ``flows/`` are imported as plain modules (``flows/`` and
``benchmarks/`` are on ``sys.path``), so every variant, distetl included, ships them to
Dask workers the same way: by reference.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from distetl import Chunk, ChunkList, IdRange, Pipeline

__all__ = ["Sizes", "QUICK", "FULL", "big_chunk_pipeline", "make_workload", "tiny_pipeline"]


@dataclass(frozen=True)
class Sizes:
    """How big each workload is.

    Attributes:
        mode: ``quick`` or ``full``.
        tpch_sf: TPC-H scale factor of the CPU-bound workload.
        tpch_parts: Parts (= chunks) of the CPU-bound workload.
        extra_variants: Variants the CPU-bound and nycflights workloads report beside
            the ones their checks and figures compare (sequential, distetl, raw Dask,
            naive Prefect): full mode adds the plain ``loop`` and ``dask_dataframe``
            (~55 s on 2 cores in quick mode; no check reads them).
        tpch_naive_sample: Parts naive Prefect runs of those (0: all); quick mode 4
            of the 16 (its time per part is what the report compares).
        tiny_chunks: Chunks of the many-small-chunks workload.
        naive_tiny_sample: Chunks the naive Prefect variant runs of those.
        dd_tiny_sample: Chunks dask.dataframe runs of those (0: all). Sampled in both
            modes: with 20,000 partitions its graph alone kept it busy for over 25
            minutes (2 cores), against ~3 s for 300.
        resume_chunks: Committed chunks the resume workload reruns over.
        naive_nyc_sample: Days the naive Prefect variant runs of the nycflights year.
        s3_rerun_chunks: Finished chunks on S3 the S3 rerun lists.
        stage_days: Day chunks of the root stage of the ``stages`` workload (as many
            again in its identity stage and in its join, plus one chunk per month and
            the one-chunk dimension). Full mode stops at 5,000 days (15,166 chunks):
            Luigi's scheduler sorts every pending task on each request for work, so its
            cost per task grows with the graph.
        stage_luigi_days: Days of the graph the Luigi variant of ``stages`` runs (0:
            the whole graph). Quick mode runs the first 350 days' graph (1,063 chunks),
            a sample on which Luigi's throughput is higher than on the whole graph.
        chain_luigi2_links: Links of the chain the 2-worker Luigi variant of ``chain``
            runs (0: the whole chain of 1,000). A figure, no check: Luigi forks a
            process per task, ~32 s for 1,000 links on 2 cores; quick mode runs 300.
        scale_dry_chunks: Chunks of the ``scale`` workload's dry run (plan only).
        scale_run_chunks: Tiny-chunk run sizes of the ``scale`` workload whose driver
            peak, run records and Prefect database growth are compared; the last one
            also runs on raw Dask, for distetl's time per chunk against raw Dask's.
        scale_raw_sample: Chunks of the ``scale`` workload's largest run that raw Dask
            runs (the first ones; 0: all), for its time per chunk. Quick mode runs
            10,000 of the 100,000 (~22 s instead of ~230 s on 2 cores). Raw Dask's time
            per chunk is no higher on the smaller graph (measured: 2.13 ms at 10,000,
            2.18 at 20,000, 2.25 at 100,000), so the sample does not ease the check.
        scale_big_run_chunks: Chunks of the ``scale`` workload's largest run and of the
            rerun over its committed files (0: none; full mode only).
        check_chunks: Chunks of 1,000,000 rows of each stage of the ``checks``
            workload (with a pandera schema, and without).
        big_chunk_pieces: Pieces of the ``big_chunk`` workload's big chunk. The same in
            both modes: the worker holds a few pieces at a time, so its growth relative
            to the chunk follows the number of pieces, not their size.
        big_chunk_piece_rows: Rows of each piece (× :data:`BIG_COLUMNS` float64
            columns): quick 419,430 (12.8 MiB a piece, 512 MiB in all), full 1,048,576
            (32 MiB a piece, 1.25 GiB in all).
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
    extra_variants: tuple[str, ...] = ("loop", "dask_dataframe")
    tpch_naive_sample: int = 0
    stage_luigi_days: int = 0
    chain_luigi2_links: int = 0
    scale_dry_chunks: int = 1_000_000
    scale_run_chunks: tuple[int, ...] = (10_000, 100_000)
    scale_big_run_chunks: int = 0
    scale_raw_sample: int = 0
    big_chunk_pieces: int = 40
    big_chunk_piece_rows: int = 419_430
    check_chunks: int = 20


QUICK = Sizes(mode="quick", tpch_sf=1.0, tpch_parts=16, extra_variants=(), tpch_naive_sample=4, tiny_chunks=2_000, naive_tiny_sample=40,
              dd_tiny_sample=300, resume_chunks=5_000, naive_nyc_sample=20, s3_rerun_chunks=1_000,
              stage_days=2_000, stage_luigi_days=350, chain_luigi2_links=300, scale_dry_chunks=1_000_000,
              scale_run_chunks=(10_000, 100_000), scale_big_run_chunks=0, scale_raw_sample=10_000,
              big_chunk_pieces=40, big_chunk_piece_rows=419_430)
FULL = Sizes(mode="full", tpch_sf=10.0, tpch_parts=160, tiny_chunks=20_000, naive_tiny_sample=500,
             dd_tiny_sample=2_000, resume_chunks=50_000, naive_nyc_sample=365, s3_rerun_chunks=5_000,
             stage_days=5_000, stage_luigi_days=0, scale_dry_chunks=1_000_000,
             scale_run_chunks=(10_000, 100_000), scale_big_run_chunks=1_000_000,
             big_chunk_pieces=40, big_chunk_piece_rows=1_048_576, check_chunks=200)

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


#: Float64 columns of each piece of the ``big_chunk`` workload (32 bytes a row).
BIG_COLUMNS = 4
#: Rows of the small chunk the ``big_chunk`` workload's worker writes first (warm-up).
BIG_WARM_UP_ROWS = 1_000
#: Folder under the output root where the big chunk's extract leaves its memory figures.
BIG_MEMORY_DIR = "_bench"


def _memory() -> dict[str, int]:
    """This process's resident set size and its high-water mark, bytes."""
    with open("/proc/self/status") as handle:
        fields = dict(line.split(":", 1) for line in handle if ":" in line)
    return {name: int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM")}


def _reset_peak() -> bool:
    """Restart this process's VmHWM from its current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def big_extract(chunk: Chunk, ctx: Any) -> Iterator[pd.DataFrame]:
    """The ``big_chunk`` workload's extract: ``chunk["pieces"]`` DataFrames of
    ``chunk["rows"]`` rows × ``chunk["columns"]`` random float64 columns, generated on
    the fly (incompressible), one at a time.

    Measures the worker it runs on: its RSS just before the first piece (the baseline),
    then, after the last piece was written (when distetl asks for the next one), its
    peak RSS since the baseline (VmHWM, restarted at the baseline where the kernel
    allows). Both, with the bytes the pieces held in memory, go to
    ``{output}/_bench/<part>.json`` for the benchmark to read.
    """
    rng = np.random.default_rng(int(chunk["seed"]))
    rows, columns, pieces = int(chunk["rows"]), int(chunk["columns"]), int(chunk["pieces"])
    reset = _reset_peak()
    baseline = _memory()["VmRSS"]
    produced = 0
    started = time.perf_counter()
    for _ in range(pieces):
        frame = pd.DataFrame({f"c{j}": rng.random(rows) for j in range(columns)})
        produced += int(frame.memory_usage(index=False, deep=True).sum())
        yield frame
    memory = _memory()
    folder = os.path.join(ctx.output, BIG_MEMORY_DIR)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{chunk['part']}.json"), "w") as handle:
        json.dump({"pid": os.getpid(), "pieces": pieces, "produced_bytes": produced, "baseline_bytes": baseline,
                   "peak_bytes": memory["VmHWM"], "rss_after_bytes": memory["VmRSS"], "hwm_reset": reset,
                   "seconds": round(time.perf_counter() - started, 3)}, handle)


def big_chunk_pipeline(pieces: int, rows: int, columns: int = BIG_COLUMNS, name: str = "big_chunk") -> Pipeline:
    """Two chunks, run in this order by one worker (one batch): a small warm-up chunk
    (the worker imports, allocates its pools and writes a streamed file once) and the
    big one: ``pieces`` × ``rows`` × ``columns`` float64 values from an iterator."""
    items = [{"part": "warm-up", "pieces": 2, "rows": BIG_WARM_UP_ROWS, "columns": columns, "seed": 1},
             {"part": "big", "pieces": pieces, "rows": rows, "columns": columns, "seed": 2}]
    return Pipeline(
        name=name,
        plan=ChunkList(items=items, key_field="part"),
        extract=big_extract,
        target="{output}/" + name + "/part={part}/data.parquet",
        description=f"one chunk of {pieces} pieces of {rows:,} rows x {columns} float64 columns",
    )


def make_workload(spec: Mapping[str, Any]):
    """Build a :class:`benchlib.Workload` from a JSON-able spec.

    Spec keys: ``name``, ``kind`` (``tpch``, ``tiny``, ``nycflights``, ``stages``,
    ``stages_days``, ``chain``, ``big_chunk``), ``root``, and per kind ``sf``/``parts``
    (tpch), ``chunks`` (tiny), ``days`` (stages: the three-stage graph; stages_days: its
    root stage alone; chain: links per chain, with ``values``: 0 for one chain, else that
    many chains side by side) or ``pieces`` and ``rows`` (big_chunk: rows per piece; optional
    ``columns``); optional ``output_url`` and ``storage_options`` (S3).

    Raises:
        ValueError: If the kind is not one of those.
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
    if kind == "chain":
        import chain_workload

        return Workload(spec["name"], chain_workload.chain_pipeline(spec["days"], spec.get("values", 0)), root,
                        **extra)
    if kind == "big_chunk":
        pipe = big_chunk_pipeline(spec["pieces"], spec["rows"], spec.get("columns", BIG_COLUMNS))
        return Workload(spec["name"], pipe, root, **extra)
    raise ValueError(f"Expected a workload kind of tpch, tiny, nycflights, stages, stages_days, chain or big_chunk; "
                     f"got {kind!r}. Fix: use one of those in the workload spec.")
