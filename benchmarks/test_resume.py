"""Resume: rerun a backfill whose chunks are all committed.

Check: the rerun takes ≤ 10% of the first run and starts no Prefect flow and no Dask
cluster (no task runs, no worker process seen while it ran).
"""

from __future__ import annotations

from benchlib import discard, measure


def test_rerun_over_committed_chunks(bench, sizes, bench_root, prefect_server):
    name = "resume"
    spec = {"name": name, "kind": "tiny", "chunks": sizes.resume_chunks, "pipeline": "resume",
            "root": str(bench_root)}
    output = str(bench_root / name / "shared")
    first = bench.add(measure(spec, "distetl", output=output, label="distetl_first_run"))
    rerun = bench.add(measure(spec, "distetl", output=output, label="distetl_rerun"))

    assert first.failed == 0 and first.written == sizes.resume_chunks, first.notes
    assert rerun.written == 0 and rerun.notes["skipped"] == sizes.resume_chunks
    bench.figure(name, "first run s", round(first.wall_s, 2))
    bench.figure(name, "rerun s", round(rerun.wall_s, 3))
    bench.figure(name, "rerun ms per committed chunk", round(rerun.wall_s / sizes.resume_chunks * 1000, 4))

    # The rerun's whole wall time against the first run's time with its cluster up (its
    # cluster start and close left out): the stricter reading.
    ratio = bench.check(name, "rerun / first run", rerun.wall_s / first.phase_s, "<=", 0.10,
                        f"({rerun.wall_s:.2f}s / {first.phase_s:.1f}s over {sizes.resume_chunks} chunks)")
    assert rerun.notes["task_runs"] == 0, "nothing to run must start no flow"
    assert rerun.worker_peak_mb == [], "nothing to run must start no Dask worker"
    discard(first)
    assert ratio.passed, ratio.line()
