"""Many small chunks: orchestration cost per chunk.

Checks: distetl's time per chunk ≤ 2× raw Dask's (both with the cluster up, measured in
the same session on the same chunks: a ratio of two measured times, never negative),
and distetl ≥ 5× faster per chunk than the naive Prefect way (three DaskTaskRunner tasks
per chunk).

The check used to compare "overheads" (phase − the plain loop's time / 2 workers): on
these fsync-bound tiny chunks the loop's own time varies ±40 % between runs, so that
difference could come out negative and pass any ``<=`` check.
"""

from __future__ import annotations

from benchlib import discard, measure
from report import per_chunk_ratio


def test_many_small_chunks(bench, sizes, bench_root, prefect_server):
    name = "small_chunks"
    spec = {"name": name, "kind": "tiny", "chunks": sizes.tiny_chunks, "root": str(bench_root)}
    runs = {}
    for variant in ("loop", "sequential", "distetl", "raw_dask"):
        runs[variant] = bench.add(measure(spec, variant))
    runs["naive_prefect"] = bench.add(measure(spec, "naive_prefect", limit=sizes.naive_tiny_sample))
    runs["dask_dataframe"] = bench.add(measure(spec, "dask_dataframe", limit=sizes.dd_tiny_sample or None))
    loop, dist, raw, naive = runs["loop"], runs["distetl"], runs["raw_dask"], runs["naive_prefect"]

    for variant, m in runs.items():
        assert m.failed == 0, (variant, m.notes)
        assert m.written == m.chunks, (variant, m.written, m.chunks)
        assert m.chunks == sizes.tiny_chunks or m.sample_of == sizes.tiny_chunks, (variant, m.chunks)
    assert dist.chunks == sizes.tiny_chunks and dist.rows == loop.rows
    assert dist.notes["task_runs_recorded"] == dist.notes["task_runs"] > 0

    vs_raw = per_chunk_ratio(dist, raw)
    naive_ms = naive.s_per_chunk * 1000
    bench.figure(name, "loop ms/chunk (compute)", round(loop.s_per_chunk * 1000, 3))
    bench.figure(name, "distetl ms/chunk (cluster up)", round(dist.s_per_chunk * 1000, 3))
    bench.figure(name, "raw Dask ms/chunk (cluster up)", round(raw.s_per_chunk * 1000, 3))
    bench.figure(name, "naive Prefect ms/chunk", round(naive_ms, 1))
    bench.figure(name, "distetl Prefect task runs", dist.notes["task_runs"])
    rerun = bench.add(measure(spec, "distetl", output=dist.notes["output"], label="distetl_rerun"))
    assert rerun.notes["task_runs"] == 0 and rerun.notes["skipped"] == sizes.tiny_chunks
    bench.figure(name, "rerun s (all committed)", round(rerun.wall_s, 3))
    for m in runs.values():
        discard(m)

    overhead = bench.check(name, "distetl time per chunk / raw Dask's (cluster up)", vs_raw, "<=", 2.0,
                           f"({dist.s_per_chunk * 1000:.2f} ms vs {raw.s_per_chunk * 1000:.2f} ms per chunk)")
    naive_ratio = bench.check(name, "distetl speed / naive Prefect (per chunk)", naive_ms / (dist.s_per_chunk * 1000),
                              ">=", 5.0, f"({naive_ms:.1f} ms vs {dist.s_per_chunk * 1000:.2f} ms per chunk)")
    assert overhead.passed, overhead.line()
    assert naive_ratio.passed, naive_ratio.line()
