"""A graph of stages: days → clean (identity) → monthly (calendar month), and a join:
joined (per day: its days, its clean day and all of the one-chunk dim), tiny chunks.

Same per-chunk functions (:mod:`stages_workload`) in every variant, each variant in a
fresh process:

* ``distetl``: the whole graph in one run (one flow, no barrier between stages);
* ``distetl_rerun``: the same run again over the committed graph;
* ``distetl_by_stage``: one run per stage (``stages=["days"]``, then ``["clean"]``,
  ``["monthly"]``, ``["dim"]``, ``["joined"]``) into a fresh output: a barrier after
  each stage;
* ``luigi``: one Luigi task per chunk, ``local_scheduler=True``, 2 workers,
  ``LocalTarget`` outputs (:mod:`luigi_stages`); in quick mode on the graph of the
  first ``Sizes.stage_luigi_days`` days (350: 1,063 chunks) only, a sample: Luigi's
  scheduler sorts every pending task on each request for work, so its cost per task
  grows with the graph and its throughput on the sample is higher than on the whole
  graph (the check against it is the stricter for it); full mode runs it on the whole
  graph;
* ``raw_dask_days``: ``Client.map`` over the root stage alone (raw Dask has no graph of
  stages; this is its per-chunk cost on the same day chunks).

Checks (ratios): distetl's throughput over the whole graph ≥ 5× Luigi's; one run ≤
stage by stage; the rerun ≤ 10 % of the first run and starts no flow, no cluster, no
worker. Every variant's chunks all succeed, and distetl's and Luigi's outputs have the
same files and rows per stage (Luigi's: those of its graph).
"""

from __future__ import annotations

from benchlib import WORKERS, discard, measure
from report import non_negative
from stages_workload import BUCKETS, DAY_ROWS, STAGES, end_date, months, stage_rows, START


def _overhead_ms(phase_s: float, compute_s: float, chunks: int) -> float:
    """Orchestration cost per chunk, ms: (phase − ideal) / chunks, with ideal = the
    chunks' own measured seconds on the workers (``ChunkResult.seconds``: extract,
    transform, cast, serialise, commit) spread over the workers. It is the harness's
    overhead notion with the chunks' measured compute in place of a plain loop's.

    Never negative by construction (the chunks ran on ``WORKERS`` single-threaded workers
    while the cluster was up, so their seconds fit in phase × workers); a negative value
    fails the benchmark (:func:`report.non_negative`)."""
    return non_negative((phase_s - compute_s / WORKERS) / chunks * 1000,
                        f"the overhead per chunk, ms ({phase_s:.3f} s phase, {compute_s:.3f} s of chunks, {chunks} chunks)",
                        "check that the chunks' seconds and the phase come from the same run")


def test_stage_graph(bench, sizes, bench_root, prefect_server):
    name = "stages"
    days = sizes.stage_days
    n_months = len(months(START, end_date(days)))
    per_stage = {"days": days, "clean": days, "monthly": n_months, "dim": 1, "joined": days}
    total = sum(per_stage.values())
    spec = {"name": name, "kind": "stages", "days": days, "root": str(bench_root)}
    luigi_days = min(sizes.stage_luigi_days or days, days)
    luigi_total = 3 * luigi_days + len(months(START, end_date(luigi_days))) + 1

    dist = bench.add(measure(spec, "distetl"))
    rerun = bench.add(measure(spec, "distetl", output=dist.notes["output"], label="distetl_rerun"))
    by_stage = bench.add(measure(spec, "distetl_by_stage"))
    luigi = measure({**spec, "days": luigi_days}, "luigi")
    if luigi_days < days:
        luigi.sample_of = total  # its time for the whole graph is extrapolated (× N / K), marked est.
    bench.add(luigi)
    raw = bench.add(measure({**spec, "kind": "stages_days"}, "raw_dask", label="raw_dask_days"))

    # Every chunk of every variant ran and committed.
    for m, chunks in ((dist, total), (by_stage, total), (luigi, luigi_total), (raw, days)):
        assert m.failed == 0, (m.variant, m.notes.get("first_error"), m.notes.get("luigi_status"))
        assert m.chunks == chunks and m.written == chunks, (m.variant, m.chunks, m.written, chunks)
    assert luigi.notes["scheduling_succeeded"], luigi.notes
    for stage, count in per_stage.items():
        assert dist.notes["stages"][stage]["written"] == count, (stage, dist.notes["stages"][stage])
    assert dist.notes["task_runs_recorded"] == dist.notes["task_runs"] > 0

    # Same files and rows per stage in distetl's one run, its stage-by-stage run and Luigi's.
    def expected(d: int) -> dict:
        return {"days": {"files": d, "rows": d * DAY_ROWS}, "clean": {"files": d, "rows": d * DAY_ROWS},
                "monthly": {"files": len(months(START, end_date(d))), "rows": d},
                "dim": {"files": 1, "rows": BUCKETS}, "joined": {"files": d, "rows": d * DAY_ROWS}}

    for m, d in ((dist, days), (by_stage, days), (luigi, luigi_days)):
        found = stage_rows(m.notes["output"])
        assert found == expected(d), (m.variant, found, expected(d))

    # The rerun over the committed graph: nothing to run, nothing started.
    assert rerun.written == 0 and rerun.notes["skipped"] == total, rerun.notes
    assert rerun.notes["task_runs"] == 0, "nothing to run must start no flow"
    assert rerun.notes["clusters_started"] == 0, "nothing to run must start no cluster"
    assert rerun.worker_peak_mb == [], "nothing to run must start no Dask worker"

    # -- figures ---------------------------------------------------------------------
    def fig(label: str, value: object) -> None:
        bench.figure(name, label, value)

    fig("chunks (days + clean + monthly + dim + joined)", f"{days} + {days} + {n_months} + 1 + {days} = {total}")
    fig("distetl one run s (wall / cluster up)", f"{dist.wall_s:.2f} / {dist.phase_s:.2f}")
    fig("distetl one run ms/chunk (wall)", round(dist.wall_s / total * 1000, 3))
    fig("distetl by stage s (wall / cluster up)", f"{by_stage.wall_s:.2f} / {by_stage.phase_s:.2f}")
    luigi_months = luigi_total - 3 * luigi_days - 1
    fig("Luigi chunks (its graph)",
        f"{luigi_days} + {luigi_days} + {luigi_months} + 1 + {luigi_days} = {luigi_total}")
    fig("Luigi s", round(luigi.wall_s, 2))
    fig("Luigi ms/chunk", round(luigi.wall_s / luigi_total * 1000, 2))

    # One run: where the workers' time went, per stage. Worker time = phase × workers =
    # the chunks' own seconds + the gaps before chunks (worker time between chunks,
    # charged to the chunk that ended the wait: batch hand-off, waiting for inputs,
    # reading the inputs' records) + idle tails + the fixed cost before the first chunk
    # and after the last (planning, flow start, result recording), ×workers.
    one = dist.notes["stages"]
    compute = sum(one[s]["compute_s"] for s in STAGES)
    for stage in STAGES:
        s = one[stage]
        fig(f"one run {stage}: compute ms/chunk", round(s["compute_s"] / s["chunks"] * 1000, 3))
        fig(f"one run {stage}: gap ms/chunk", round(s["gap_s"] / s["chunks"] * 1000, 3))
    fig("one run: fixed s (phase - first chunk start to last chunk end)",
        round(non_negative(dist.phase_s - one[""]["span_s"], "the one run's fixed seconds (phase - chunk span)"), 3))
    fig("one run: overhead ms/chunk (whole graph)", round(_overhead_ms(dist.phase_s, compute, total), 3))

    # Stage by stage: each stage is a run of its own, so its overhead is separable.
    for run in by_stage.notes["runs"]:
        s = run["breakdown"][run["stage"]]
        fig(f"by stage {run['stage']}: wall s / cluster up s", f"{run['wall_s']:.2f} / {run['phase_s']:.2f}")
        fig(f"by stage {run['stage']}: overhead ms/chunk",
            round(_overhead_ms(run["phase_s"], s["compute_s"], s["chunks"]), 3))
    days_run = by_stage.notes["runs"][0]
    raw_over = _overhead_ms(raw.phase_s, raw.notes["chunk_seconds"], raw.chunks)
    fig("raw Dask days only: overhead ms/chunk", round(raw_over, 3))
    fig("raw Dask days only: ms/chunk (cluster up)", round(raw.s_per_chunk * 1000, 3))
    fig("distetl days only: ms/chunk (cluster up)", round(days_run["phase_s"] / days * 1000, 3))
    fig("rerun s", round(rerun.wall_s, 3))

    # -- checks ------------------------------------------------------------------------
    # Throughput over the whole graph, end to end for both (distetl's cluster start
    # included: Luigi has none to start).
    dist_tput, luigi_tput = total / dist.wall_s, luigi_total / luigi.wall_s
    luigi_ratio = bench.check(name, "distetl throughput / Luigi's (whole graph, end to end)", dist_tput / luigi_tput,
                              ">=", 5.0, f"({dist_tput:.0f} vs {luigi_tput:.1f} chunks/s; {dist.wall_s:.2f} s for "
                              f"{total} chunks vs {luigi.wall_s:.1f} s for "
                              + (f"{luigi_total}" if luigi_days == days else
                                 f"the {luigi_total} of the first {luigi_days} days")
                              + " chunks)")
    fig("one run / by stage (cluster up)", round(dist.phase_s / by_stage.phase_s, 3))
    barrier = bench.check(name, "one run / stage by stage (wall)", dist.wall_s / by_stage.wall_s, "<=", 1.0,
                          f"({dist.wall_s:.2f} s vs {by_stage.wall_s:.2f} s: "
                          + " + ".join(f"{r['wall_s']:.2f}" for r in by_stage.notes["runs"]) + ")")
    # The rerun's whole wall time against the first run's time with its cluster up (as
    # the resume workload: the stricter reading).
    resume = bench.check(name, "rerun / first run (committed graph)", rerun.wall_s / dist.phase_s, "<=", 0.10,
                         f"({rerun.wall_s:.2f} s / {dist.phase_s:.2f} s over {total} chunks; no flow, no cluster)")
    for m in (dist, by_stage, luigi, raw):
        discard(m)
    assert luigi_ratio.passed, luigi_ratio.line()
    assert barrier.passed, barrier.line()
    assert resume.passed, resume.line()
