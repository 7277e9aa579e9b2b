"""Data checks cost little: a 5-column pandera schema validated on every 1,000,000-row
chunk on the worker, before the commit, against the same chunks without checks, side
by side in one run (:mod:`checks_workload`; 20 chunks per stage in quick mode, 200 in
full).

Check: the checked stage's chunks' own seconds / the plain stage's ≤ 1.5. And with no
checks declared, pandera is not imported (a run in a fresh process says so).
"""

from __future__ import annotations

import checks_workload
from benchlib import Measurement

NAME = "checks"
RATIO = 1.5


def test_checks_cost(bench, bench_root, sizes, prefect_server):
    chunks = sizes.check_chunks
    spec = {"chunks": chunks, "root": str(bench_root / NAME)}
    result = checks_workload.measure(spec)
    assert result["failed"] == 0 and result["written"] == 2 * chunks, result.get("first_error")
    plain, checked = result["stages"]["plain"], result["stages"]["checked"]
    assert plain["rows"] == checked["rows"] == chunks * checks_workload.ROWS
    assert checked["warned"] == 0
    for variant, stage in (("plain", plain), ("checked", checked)):
        bench.add(Measurement(workload=NAME, variant=variant, chunks=chunks, wall_s=stage["compute_s"] / 2,
                              rows=int(stage["rows"]), written=int(stage["written"]),
                              notes={"chunk_seconds": stage["compute_s"], "run_wall_s": result["wall_s"]}))
    alone = checks_workload.measure(spec, plain_only=True)
    assert alone["written"] == chunks

    per_plain = plain["compute_s"] / chunks * 1000
    per_checked = checked["compute_s"] / chunks * 1000
    bench.figure(NAME, "chunks x rows per stage", f"{chunks} x {checks_workload.ROWS:,}")
    bench.figure(NAME, "plain ms/chunk (worker)", round(per_plain, 1))
    bench.figure(NAME, "checked ms/chunk (worker)", round(per_checked, 1))
    bench.figure(NAME, "run wall s (both stages, 2 workers)", round(result["wall_s"], 2))
    bench.figure(NAME, "pandera imported by a run without checks", alone["pandera_imported"])
    ratio = bench.check(NAME, "checked / plain chunk seconds (5-column pandera schema)", per_checked / per_plain,
                        "<=", RATIO, f"({per_checked:.0f} ms vs {per_plain:.0f} ms per chunk, one run)")
    assert not alone["pandera_imported"], "a pipeline without checks must not import pandera"
    assert ratio.passed, ratio.line()
