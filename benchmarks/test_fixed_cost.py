"""Fixed cost: a one-chunk ``distetl run`` against a one-task Luigi build, as commands.

Side by side in one session, alternating, each command in a fresh process timed from
just before it starts to its exit (:mod:`fixed_cost`): ``distetl run FLOW --output OUT``
with a warm ``DISTETL_HOME`` (an untimed run made its embedded Prefect database first)
and no ``PREFECT_API_URL``, as the README's first command runs, against ``luigi --module
fixed_cost_task OneChunk --local-scheduler``. Both do the same chunk (20 rows, one
Parquet file) into a fresh output each time. One untimed warm-up of each, then
``ROUNDS`` rounds (the order alternates); each keeps its best time (interference only
slows a run down), the medians are reported too.

Then one more distetl run with its phases timed (``python fixed_cost.py``: the same
command with the functions a run calls wrapped to record when each started and ended):
interpreter start and imports, Prefect server start, local cluster start and close, the
flow run with the cluster up, waiting for Prefect to record the task run, the server's
stop, and the rest.

Check: distetl's best time / Luigi's ≤ 4.

Measured on the 2-core machine (2026-12-03, shared with other work, load average 4.4–5;
two sessions): distetl best 14.1 s (median 21 s), Luigi best 1.37 s (median 1.67 s): a
ratio of 10.2 (medians 12.6). Where the instrumented run's 13.5 s went: the Prefect
server's start 4.8 s (6.9 s in the other session), interpreter start and imports 2.8 s,
the local cluster's start 2.3 s (4.8 s) and close 0.6 s, interpreter exit 1.3 s, the
flow run with the cluster up 1.2 s, the server's stop 0.2 s; everything else (flow file,
plan, pre-flight, recording the task run, index, manifest, summary) ~0.2 s. The check is
kept and marked as an expected failure (strict: it fails the session the day it passes,
so the mark goes then).
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import fixed_cost
from benchlib import SERVICE_PIDS_ENV, Measurement
from distetl.engine.servers import retire_kept
from report import CheckFailed

ROUNDS = 3
RATIO = 4.0
HERE = Path(__file__).resolve().parent


def _env(home: Path, modules: Path) -> dict[str, str]:
    """What a user's shell gives the commands: no Prefect API, no scheduler, a distetl
    home of their own (warmed by the first run), the Luigi task's module importable."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "DISTETL_SCHEDULER", "DISTETL_KEEP_SERVER", SERVICE_PIDS_ENV)}
    env["DISTETL_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join([str(modules), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _wrote_the_chunk(out: Path, what: str) -> None:
    path = out / fixed_cost.PIPELINE / "part-0.parquet"
    assert path.is_file() and pq.read_metadata(path).num_rows == fixed_cost.ROWS, (
        f"Expected {what} to write {fixed_cost.ROWS} rows to {path}; got "
        f"{pq.read_metadata(path).num_rows if path.is_file() else 'no file'}. Fix: run it by hand.")


@pytest.mark.xfail(raises=CheckFailed, strict=True, reason=(
    "measured 2026-12-04 09:00 UTC (2 cores, quiet): one-chunk distetl run 4.14 s (best of 3) vs one-task Luigi "
    "build 0.46 s, ratio 9.0 > 4; distetl's time: waiting for the Prefect server (launched as the command starts, "
    "2.75 s to answer) and the local cluster (0.95 s) 1.92 s after the pre-flight check, interpreter start and "
    "imports 1.23 s, flow run 0.57 s, server stop 0.16 s, cluster close 0.13 s, interpreter exit 0.02 s"))
def test_one_chunk_distetl_run_vs_one_task_luigi_build(bench, bench_root):
    name = "fixed_cost"
    folder = bench_root / name
    flow, _ = fixed_cost.write_sources(folder / "src")
    env = _env(folder / "home", flow.parent)
    python = sys.executable
    n = iter(range(1000))

    def distetl_run() -> dict:
        out = folder / f"out-distetl-{next(n)}"
        done = fixed_cost.timed_command([python, "-m", "distetl.cli", "run", str(flow), "--output", str(out)],
                                        env, folder)
        _wrote_the_chunk(out, "distetl run")
        return done

    def luigi_build() -> dict:
        out = folder / f"out-luigi-{next(n)}"
        done = fixed_cost.timed_command([python, "-m", "luigi", "--module", "fixed_cost_task", "OneChunk", "--root",
                                         str(out), "--local-scheduler", "--log-level", "WARNING"], env, folder)
        _wrote_the_chunk(out, "the Luigi build")
        return done

    # Warm-up, untimed: distetl's makes DISTETL_HOME warm (its Prefect database, and the
    # kept Prefect server every later run on that home reports to; stopped at the end).
    try:
        _measure(bench, name, folder, flow, env, distetl_run, luigi_build)
    finally:
        assert retire_kept(folder / "home" / "prefect"), "Expected no run to use the kept server at the end"


def _measure(bench, name, folder, flow, env, distetl_run, luigi_build) -> None:
    python = sys.executable
    distetl_run()
    luigi_build()
    times: dict[str, list[float]] = {"distetl": [], "luigi": []}
    for r in range(ROUNDS):
        order = [("distetl", distetl_run), ("luigi", luigi_build)]
        for variant, call in order if r % 2 == 0 else order[::-1]:
            times[variant].append(call()["wall_s"])

    traced = fixed_cost.timed_command([python, str(HERE / "fixed_cost.py"), str(flow),
                                       str(folder / "out-distetl-phases")], env, folder)
    _wrote_the_chunk(folder / "out-distetl-phases", "the instrumented distetl run")
    phases = fixed_cost.phase_breakdown(traced["stdout"], traced["started"], traced["ended"])

    best = {variant: min(values) for variant, values in times.items()}
    for variant, values in times.items():
        bench.add(Measurement(workload=name, variant=variant, chunks=1, wall_s=best[variant], written=1,
                              rows=fixed_cost.ROWS, notes={"rounds_s": [round(v, 3) for v in values]}))
        bench.figure(name, f"{variant} s (best of {ROUNDS})", round(best[variant], 3))
        bench.figure(name, f"{variant} s (median)", round(statistics.median(values), 3))
    bench.figure(name, "distetl / Luigi (medians)",
                 round(statistics.median(times["distetl"]) / statistics.median(times["luigi"]), 2))
    bench.figure(name, "instrumented distetl run s", round(traced["wall_s"], 3))
    for phase, seconds in phases.items():
        bench.figure(name, f"distetl phase: {phase} s", round(seconds, 3))
    top = sorted(((p, s) for p, s in phases.items() if not p.startswith("of which")), key=lambda kv: -kv[1])[:4]
    check = bench.check(name, "one-chunk distetl run / one-task Luigi build (best of each)",
                        best["distetl"] / best["luigi"], "<=", RATIO,
                        f"({best['distetl']:.2f} s vs {best['luigi']:.2f} s; distetl's largest phases: "
                        + ", ".join(f"{p} {s:.2f} s" for p, s in top) + ")")
    print("\n" + check.line())
    if not check.passed:
        raise CheckFailed(check.line())
