"""Scale: what a run costs the driver, its records and Prefect as chunks grow.

Tiny chunks (the ``small_chunks`` workload's 20 rows, one Parquet file each; pipeline
``scale``), each variant in a fresh process (:func:`benchlib.measure`):

* ``scale_dry_run``: ``distetl.run(..., dry_run=True)`` over 1,000,000 chunks: plan
  only (render every target, one listing, decide), nothing runs;
* ``scale_10k`` and ``scale_100k``: ``distetl.run`` of 10,000 and 100,000 chunks on the
  local runner (2 workers). Right after distetl's, the same 100,000 chunks (the same
  per-chunk code) run on raw Dask (``Client.map``, one task per chunk, a LocalCluster
  of the same shape); quick mode runs raw Dask on the first 10,000 of them
  (``Sizes.scale_raw_sample``: its time per chunk is no higher on the smaller graph);
* full mode only, ``scale_1m``: ``distetl.run`` of 1,000,000 chunks, then the rerun
  over its 1,000,000 committed files (plan and skip check; no flow, no cluster).

Figures: driver peak RSS (the process's high-water mark while the call ran, MB = MiB
as the harness reports RSS), the run records' bytes (everything under
``{output}/_distetl/scale/runs/`` plus ``latest.json``), the growth of the session
Prefect server's SQLite database (``*.db`` with its ``-wal``/``-shm`` files, before
and after the run once the server has persisted its events; MB = 10^6 bytes), and the
time per chunk with the cluster up (phase / chunks) of distetl and raw Dask.

Checks (distetl's seconds as it reports them, ``RunReport.seconds``):

* dry run of 1,000,000 chunks ≤ 5 s, driver peak ≤ 500 MB;
* driver peak of the 100,000-chunk run ≤ 1.3 × the 10,000-chunk run's;
* at 100,000 chunks, distetl's time per chunk / raw Dask's ≤ 1 (a ratio of two
  measured times, never negative; it replaces "overhead per chunk" = phase − a loop's
  ideal, which came out negative for distetl, so its check could not fail);
* run records ≤ 60 bytes per chunk (100,000-chunk run);
* Prefect database growth ≤ 5 MB for the 100,000-chunk run;
* full mode: the 1,000,000-chunk run's driver peak ≤ 1 GB (1,024 MB); the rerun over
  its committed files ≤ 10 s (wall, the whole call) with driver peak ≤ 500 MB.

Every check is recorded before any is asserted, so one miss still leaves the others'
figures in the report.
"""

from __future__ import annotations

from benchlib import Measurement, discard, measure, run_record_bytes, settled_sqlite_bytes
from report import non_negative, per_chunk_ratio

PIPELINE = "scale"
DRY_RUN_S, DRY_RUN_MB = 5.0, 500.0
DRIVER_GROWTH = 1.3
RECORD_BYTES_PER_CHUNK = 60.0
PREFECT_DB_MB = 5.0
BIG_RUN_MB = 1024.0
RERUN_S, RERUN_MB = 10.0, 500.0
#: Per-test limit in quick mode (conftest): ~6 min on a quiet 2-core machine, ~12 when
#: another program takes a core (raw Dask alone: 6 min for 100,000 chunks then).
QUICK_TIMEOUT_S = 1800


def _spec(name: str, chunks: int, root: str) -> dict:
    return {"name": name, "kind": "tiny", "chunks": chunks, "pipeline": PIPELINE, "root": root}


def _all_written(m: Measurement, chunks: int) -> None:
    assert m.failed == 0, (m.workload, m.variant, m.notes.get("first_error"))
    assert m.chunks == chunks and m.written == chunks, (m.workload, m.variant, m.chunks, m.written)


def _label(chunks: int) -> str:
    return f"{chunks // 1_000_000}m" if chunks >= 1_000_000 and chunks % 1_000_000 == 0 else f"{chunks // 1000}k"


def test_scale(bench, sizes, bench_root, prefect_server):
    name = "scale"
    root = str(bench_root)
    checks = []
    db_home = prefect_server.home

    # -- the dry run: plan only ------------------------------------------------------------
    dry = bench.add(measure(_spec("scale_dry_run", sizes.scale_dry_chunks, root), "distetl", dry_run=True,
                            label="distetl_dry_run"))
    assert dry.notes.get("dry_run") and dry.notes["to_run"] == sizes.scale_dry_chunks, dry.notes
    assert dry.notes["task_runs"] == 0 and dry.worker_peak_mb == [], "a dry run starts no flow and no worker"
    n_dry = f"{sizes.scale_dry_chunks:,}"
    bench.figure(name, f"dry run {n_dry} chunks: plan s (RunReport.plan_seconds)", dry.notes["plan_seconds"])
    bench.figure(name, f"dry run {n_dry} chunks: s (RunReport.seconds)", dry.notes["run_seconds"])
    bench.figure(name, f"dry run {n_dry} chunks: wall s", round(dry.wall_s, 3))
    bench.figure(name, f"dry run {n_dry} chunks: driver peak MB", dry.driver_peak_mb)
    checks.append(bench.check(name, f"dry run of {n_dry} chunks, s", dry.notes["run_seconds"], "<=", DRY_RUN_S,
                              f"(plan {dry.notes['plan_seconds']:.2f} s, wall {dry.wall_s:.2f} s)"))
    checks.append(bench.check(name, f"dry run of {n_dry} chunks, driver peak MB", dry.driver_peak_mb, "<=",
                              DRY_RUN_MB))

    # -- tiny runs: driver peak, run records, Prefect database -----------------------------
    runs: dict[int, Measurement] = {}
    records: dict[int, dict] = {}
    growth: dict[int, dict] = {}
    small, large = sizes.scale_run_chunks[0], sizes.scale_run_chunks[-1]
    spec_large = _spec(f"scale_{_label(large)}", large, root)
    before = settled_sqlite_bytes(db_home)
    for chunks in sizes.scale_run_chunks:
        spec = spec_large if chunks == large else _spec(f"scale_{_label(chunks)}", chunks, root)
        m = runs[chunks] = bench.add(measure(spec, "distetl"))
        _all_written(m, chunks)
        assert m.notes["task_runs_recorded"] == m.notes["task_runs"] > 0, m.notes
        records[chunks] = run_record_bytes(m.notes["output"], PIPELINE)
        discard(m)
        if chunks == large:
            # The same chunks on raw Dask, right after distetl's run (it does not talk to
            # Prefect: the database growth below stays distetl's own).
            # Quick mode: the first ``scale_raw_sample`` of them (its time per chunk).
            sample = min(sizes.scale_raw_sample or large, large)
            raw = bench.add(measure(spec, "raw_dask", limit=sample if sample < large else None))
            discard(raw)
            assert raw.failed == 0 and raw.written == raw.chunks == sample, (raw.chunks, raw.written, raw.notes)
            assert raw.sample_of == (large if sample < large else None), (raw.sample_of, sample, large)
        after = settled_sqlite_bytes(db_home)
        growth[chunks] = {key: after.get(key, 0) - before.get(key, 0) for key in set(before) | set(after)}
        non_negative(growth[chunks]["total"], f"the Prefect database growth over the {chunks:,}-chunk run, bytes",
                     "read the database once the server has persisted the run's events (settled_sqlite_bytes)")
        before = after
        label = f"{chunks:,} chunks"
        bench.figure(name, f"{label}: driver peak MB", m.driver_peak_mb)
        bench.figure(name, f"{label}: wall s", round(m.wall_s, 2))
        bench.figure(name, f"{label}: Prefect task runs", m.notes["task_runs"])
        bench.figure(name, f"{label}: run records bytes", records[chunks]["total"])
        bench.figure(name, f"{label}: run records bytes/chunk", round(records[chunks]["total"] / chunks, 2))
        bench.figure(name, f"{label}: Prefect database growth bytes", growth[chunks]["total"])
        bench.figure(name, f"{label}: Prefect database growth by file", ", ".join(
            f"{key} {value:+,}" for key, value in sorted(growth[chunks].items()) if key != "total"))

    dist, raw = runs[large], bench.of(spec_large["name"], "raw_dask")
    vs_raw = per_chunk_ratio(dist, raw)
    bench.figure(name, f"{large:,} chunks: distetl ms/chunk (cluster up)", round(dist.s_per_chunk * 1000, 3))
    raw_of = f" ({raw.chunks:,} of them)" if raw.sample_of else ""
    bench.figure(name, f"{large:,} chunks: raw Dask ms/chunk (cluster up){raw_of}", round(raw.s_per_chunk * 1000, 3))
    bench.figure(name, f"{large:,} chunks: raw Dask wall s{raw_of}", round(raw.wall_s, 2))
    bench.figure(name, f"{large:,} chunks: raw Dask driver peak MB", raw.driver_peak_mb)

    n_small, n_large = f"{small:,}", f"{large:,}"
    checks.append(bench.check(
        name, f"driver peak, {n_large} / {n_small} chunks", dist.driver_peak_mb / runs[small].driver_peak_mb, "<=",
        DRIVER_GROWTH, f"({dist.driver_peak_mb:.0f} MB vs {runs[small].driver_peak_mb:.0f} MB)"))
    checks.append(bench.check(
        name, f"distetl time per chunk / raw Dask's (cluster up), {n_large} chunks", vs_raw, "<=", 1.0,
        f"({dist.s_per_chunk * 1000:.3f} ms vs {raw.s_per_chunk * 1000:.3f} ms; "
        f"{dist.phase_s:.1f} s vs {raw.phase_s:.1f} s with the cluster up"
        + (f"; raw Dask ran the first {raw.chunks:,} of the {large:,} chunks)" if raw.sample_of else ")")))
    checks.append(bench.check(
        name, f"run records bytes per chunk, {n_large} chunks", records[large]["total"] / large, "<=",
        RECORD_BYTES_PER_CHUNK, f"({records[large]['total']:,} bytes: runs/ {records[large]['runs']:,} in "
                                f"{records[large]['files']} files, latest.json {records[large]['latest']:,})"))
    checks.append(bench.check(
        name, f"Prefect database growth MB, {n_large} chunks", growth[large]["total"] / 1e6, "<=", PREFECT_DB_MB,
        f"({growth[large]['total']:,} bytes; {n_small} chunks: {growth[small]['total']:,})"))

    # -- full mode: a million chunks, run and rerun -----------------------------------------
    if sizes.scale_big_run_chunks:
        chunks = sizes.scale_big_run_chunks
        n_big = f"{chunks:,}"
        spec = _spec(f"scale_{_label(chunks)}", chunks, root)
        big = bench.add(measure(spec, "distetl", timeout=6 * 3600))
        _all_written(big, chunks)
        rerun = bench.add(measure(spec, "distetl", output=big.notes["output"], label="distetl_rerun"))
        assert rerun.written == 0 and rerun.notes["skipped"] == chunks, rerun.notes
        assert rerun.notes["task_runs"] == 0 and rerun.worker_peak_mb == [], "a rerun with nothing to do starts nothing"
        big_records = run_record_bytes(big.notes["output"], PIPELINE)
        discard(big)
        bench.figure(name, f"{n_big} chunks: wall s", round(big.wall_s, 1))
        bench.figure(name, f"{n_big} chunks: driver peak MB", big.driver_peak_mb)
        bench.figure(name, f"{n_big} chunks: run records bytes/chunk (both runs)",
                     round(big_records["total"] / chunks, 2))
        bench.figure(name, f"rerun over {n_big} committed: wall s", round(rerun.wall_s, 3))
        bench.figure(name, f"rerun over {n_big} committed: plan s (RunReport.plan_seconds)",
                     rerun.notes["plan_seconds"])
        bench.figure(name, f"rerun over {n_big} committed: driver peak MB", rerun.driver_peak_mb)
        checks.append(bench.check(name, f"{n_big}-chunk run, driver peak MB", big.driver_peak_mb, "<=", BIG_RUN_MB,
                                  f"({big.wall_s:.0f} s)"))
        checks.append(bench.check(name, f"rerun over {n_big} committed chunks, s", rerun.wall_s, "<=", RERUN_S,
                                  f"(plan {rerun.notes['plan_seconds']:.2f} s)"))
        checks.append(bench.check(name, f"rerun over {n_big} committed chunks, driver peak MB", rerun.driver_peak_mb,
                                  "<=", RERUN_MB))

    failed = [c.line() for c in checks if not c.passed]
    assert not failed, "\n".join(failed)
