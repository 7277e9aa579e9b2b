"""What one small chunk costs on a worker against the same work in a plain Python loop
(:mod:`chunk_cost`: each of 366 daily chunks reads an 18,000-row CSV, keeps its day's
~50 rows and writes them), side by side in one session: loop and distetl alternate,
each in a fresh process, 3 rounds in quick mode (4 in full); each keeps its best round.

Check: distetl's mean chunk ``seconds`` on the worker (the run's per-chunk file: extract,
transform, checks, Parquet, commit) / the loop's time per chunk ≤ 1.2.
"""

from __future__ import annotations

import chunk_cost
from benchlib import Measurement

NAME = "chunk_cost"
RATIO = 1.2
CHUNKS = 366


def test_chunk_cost(bench, bench_root, sizes, prefect_server):
    rounds = 4 if sizes.mode == "full" else 3
    loops, runs = [], []
    for n in range(rounds):
        spec = {"root": str(bench_root / NAME), "chunks": CHUNKS, "round": n}
        loops.append(chunk_cost.measure({**spec, "variant": "loop"}))
        runs.append(chunk_cost.measure({**spec, "variant": "distetl"}))
    for run in runs:
        assert run["failed"] == 0 and run["chunks"] == CHUNKS, run
        assert run["rows"] > 0
    loop = min(loops, key=lambda r: r["ms_per_chunk"])
    best = min(runs, key=lambda r: r["mean_ms"])
    bench.add(Measurement(workload=NAME, variant="loop", chunks=CHUNKS, wall_s=loop["seconds"],
                          notes={"ms_per_chunk": loop["ms_per_chunk"], "rounds": [r["ms_per_chunk"] for r in loops]}))
    bench.add(Measurement(workload=NAME, variant="distetl", chunks=CHUNKS, wall_s=best["mean_ms"] * CHUNKS / 1000,
                          rows=best["rows"], written=best["chunks"],
                          notes={"mean_ms": best["mean_ms"], "median_ms": best["median_ms"], "p95_ms": best["p95_ms"],
                                 "phases_ms": best["phases_ms"], "run_wall_s": best["wall_s"],
                                 "rounds": [r["mean_ms"] for r in runs]}))
    bench.figure(NAME, "loop ms/chunk (best round)", round(loop["ms_per_chunk"], 2))
    bench.figure(NAME, "distetl ms/chunk on the worker: mean / median / p95",
                 f"{best['mean_ms']:.2f} / {best['median_ms']:.2f} / {best['p95_ms']:.2f}")
    bench.figure(NAME, "distetl phases, mean ms", ", ".join(f"{k} {v:.2f}" for k, v in best["phases_ms"].items()))
    ratio = bench.check(NAME, "distetl mean chunk seconds (worker) / plain loop per chunk", best["mean_ms"] /
                        loop["ms_per_chunk"], "<=", RATIO,
                        f"({best['mean_ms']:.2f} ms vs {loop['ms_per_chunk']:.2f} ms; {rounds} alternating rounds)")
    assert ratio.passed, ratio.line()
