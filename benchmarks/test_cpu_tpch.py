"""CPU-bound workload: the TPC-H flow (lineitem priced and joined with orders).

Checks: distetl on 2 workers ≥ 1.6× the sequential baseline, and ≥ 0.9× raw Dask's
throughput, on the same chunks, with the cluster up (see ``benchlib``).

Noise: on a 2-core machine anything else running takes cores the parallel variants
need. If a check fails, the three variants it compares are measured again, in turn,
up to ``ROUNDS`` times in all, and each keeps its best (lowest) time; every attempt is
kept in the JSON. The same rule for all three, so no variant is favoured.
"""

from __future__ import annotations

from pathlib import Path

import tpch
from benchlib import discard, measure

ROUNDS = 3
COMPARED = ("sequential", "distetl", "raw_dask")


def _warm_page_cache(folder: Path) -> None:
    """Read every input once so no variant pays for the first, cold read."""
    for path in sorted(folder.rglob("*.parquet")):
        with open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass


def test_cpu_bound_tpch(bench, sizes, bench_root, prefect_server):
    name = "tpch_cpu"
    folder = tpch.ensure_tpch(sizes.tpch_sf, sizes.tpch_parts)
    _warm_page_cache(folder)
    spec = {"name": name, "kind": "tpch", "sf": sizes.tpch_sf, "parts": sizes.tpch_parts, "root": str(bench_root)}
    bench.figure(name, "scale_factor", sizes.tpch_sf)

    runs = {}
    for variant in ("loop", *COMPARED, "naive_prefect", "dask_dataframe"):
        runs[variant] = measure(spec, variant)
        if variant != "distetl":
            discard(runs[variant])

    def ratios() -> tuple[float, float]:
        seq, dist, raw = (runs[v] for v in COMPARED)
        return seq.phase_s / dist.phase_s, raw.phase_s / dist.phase_s

    attempts = {v: [round(runs[v].phase_s, 3)] for v in COMPARED}
    for _ in range(ROUNDS - 1):
        speedup, ceiling = ratios()
        if speedup >= 1.6 and ceiling >= 0.9:
            break
        for variant in COMPARED:
            again = measure(spec, variant)
            attempts[variant].append(round(again.phase_s, 3))
            best = min(runs[variant], again, key=lambda m: m.phase_s)
            discard(again if best is runs[variant] else runs[variant])
            runs[variant] = best
    for variant in COMPARED:
        runs[variant].notes["attempts_phase_s"] = attempts[variant]
    for m in runs.values():
        bench.add(m)

    loop, seq, dist, raw = runs["loop"], runs["sequential"], runs["distetl"], runs["raw_dask"]
    for m in runs.values():
        assert m.failed == 0, (m.variant, m.notes)
        assert m.rows == loop.rows and m.written == sizes.tpch_parts, (m.variant, m.rows, m.written)
    assert dist.notes["task_runs_recorded"] == dist.notes["task_runs"] > 0
    bench.figure(name, "rows", loop.rows)
    bench.figure(name, "measurement rounds", len(attempts["distetl"]))

    rerun = bench.add(measure(spec, "distetl", output=dist.notes["output"], label="distetl_rerun"))
    assert rerun.notes["task_runs"] == 0 and rerun.notes["skipped"] == sizes.tpch_parts
    bench.figure(name, "rerun s (all committed)", round(rerun.wall_s, 3))
    discard(dist)

    bench.figure(name, "distetl e2e speedup vs sequential (cluster start included)",
                 round(seq.wall_s / dist.wall_s, 3))
    speedup = bench.check(name, "distetl speedup vs sequential", seq.phase_s / dist.phase_s, ">=", 1.6,
                          f"({seq.phase_s:.1f}s / {dist.phase_s:.1f}s with the cluster up)")
    ceiling = bench.check(name, "distetl throughput / raw Dask", raw.phase_s / dist.phase_s, ">=", 0.9,
                          f"({raw.phase_s:.1f}s raw / {dist.phase_s:.1f}s distetl with the cluster up)")
    assert speedup.passed, speedup.line()
    assert ceiling.passed, ceiling.line()
