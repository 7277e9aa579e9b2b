"""Product scale: planning two-dimensional keys stays as cheap as planning one dimension.

``product_dry_run``: ``distetl.run(..., dry_run=True)`` of one stage whose plan is
``Product(DateRange(10 years of days), ChunkList(100 regions))``, 365,300 chunks keyed
``date=…/region=…``, target ``{output}/product/date={date}/region={region}/part-0.parquet``
(two partition columns): plan only (build the chunks, render every target, one listing,
decide), nothing runs. As in :mod:`test_scale`, the variant runs in a fresh process (this
file run as a script); its imports (``runvariant.PRELOAD["distetl"]``) happen before the
clock starts and the driver's peak RSS is reset after them (:class:`benchlib.PeakRSS`).

Figures: distetl's seconds (``RunReport.seconds``, and its plan part), the wall time of
the call, and the driver's peak RSS (MB = MiB).

Checks (the same bounds as the 1,000,000-chunk one-dimensional dry run of ``scale``):

* dry run of 365,300 product chunks ≤ 5 s;
* driver peak ≤ 500 MB.

Both are recorded before either is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

NAME = "product_scale"
PIPELINE = "product"
START, END = "2015-01-01", "2024-12-31"  # 3,653 days
REGIONS = 100
CHUNKS = 3_653 * REGIONS
DRY_RUN_S, DRY_RUN_MB = 5.0, 500.0
_RESULT = "BENCH-RESULT "


def _pipeline():
    import pandas as pd

    from distetl import ChunkList, DateRange, Pipeline, Product

    return Pipeline(
        name=PIPELINE,
        plan=Product(DateRange(START, END), ChunkList([f"r{i:03d}" for i in range(REGIONS)], key_field="region")),
        extract=lambda chunk: pd.DataFrame({"n": [1]}),
        target="{output}/" + PIPELINE + "/date={date}/region={region}/part-0.parquet",
        description=f"{CHUNKS} date × region chunks",
    )


def _child(output: str) -> int:
    """Plan the product as ``distetl run --dry-run`` does and print the measurement."""
    import importlib

    import benchlib
    import runvariant

    import distetl

    for module in runvariant.PRELOAD["distetl"]:
        importlib.import_module(module)
    pipeline = _pipeline()
    with benchlib.PeakRSS() as rss:
        start = time.perf_counter()
        report = distetl.run(pipeline, output, runner="sequential", dry_run=True)
        wall = time.perf_counter() - start
    m = benchlib.Measurement(NAME, "distetl_dry_run", report.total, wall)
    m.driver_peak_mb = round(rss.driver_mb, 1)
    m.notes.update(dry_run=bool(report.dry_run), to_run=report.to_run, task_runs=report.task_runs,
                   plan_seconds=round(report.plan_seconds, 4), run_seconds=round(report.seconds, 4))
    benchlib.emit(m)
    return 0


def _measure(output: Path):
    from benchlib import Measurement

    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(output)], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ))
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT):
            return Measurement.from_dict(json.loads(line[len(_RESULT):]))
    raise RuntimeError(f"the product dry run printed no result (exit {proc.returncode}):\n"
                       f"{(proc.stdout[-2000:] + proc.stderr[-4000:]).strip()}")


def test_product_scale(bench, bench_root):
    dry = bench.add(_measure(Path(bench_root) / "product_dry_run"))
    assert dry.notes["dry_run"] and dry.chunks == CHUNKS and dry.notes["to_run"] == CHUNKS, dry.notes
    assert dry.notes["task_runs"] == 0, "a dry run starts no flow"
    n = f"{CHUNKS:,}"
    bench.figure(NAME, f"dry run {n} date × region chunks: plan s (RunReport.plan_seconds)", dry.notes["plan_seconds"])
    bench.figure(NAME, f"dry run {n} date × region chunks: s (RunReport.seconds)", dry.notes["run_seconds"])
    bench.figure(NAME, f"dry run {n} date × region chunks: wall s", round(dry.wall_s, 3))
    bench.figure(NAME, f"dry run {n} date × region chunks: driver peak MB", dry.driver_peak_mb)
    checks = [
        bench.check(NAME, f"product dry run of {n} chunks, s", dry.notes["run_seconds"], "<=", DRY_RUN_S,
                    f"(plan {dry.notes['plan_seconds']:.2f} s, wall {dry.wall_s:.2f} s)"),
        bench.check(NAME, f"product dry run of {n} chunks, driver peak MB", dry.driver_peak_mb, "<=", DRY_RUN_MB),
    ]
    failed = [c.line() for c in checks if not c.passed]
    assert not failed, "\n".join(failed)


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
