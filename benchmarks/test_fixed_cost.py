"""Fixed cost: a one-chunk ``distetl run`` against a one-task Luigi build, as commands.

Side by side in one session, alternating, each command in a fresh process timed from
just before it starts to its exit (:mod:`fixed_cost`): ``distetl run FLOW --output OUT``
with a warm ``DISTETL_HOME`` and no ``PREFECT_API_URL``, as the README's first command
runs, against ``luigi --module fixed_cost_task OneChunk --local-scheduler``. Both do the
same chunk (20 rows, one Parquet file) into a fresh output each time. A warm home: two
untimed runs made its Prefect database, its kept Prefect server and its warm run process
(:mod:`distetl.warm`; the first run ran in the command's own process, the second was
handed over). One untimed Luigi build too, then ``ROUNDS`` rounds (the order
alternates); each keeps its best time (interference only slows a run down), the
medians are reported too.

Then one more distetl run with its phases timed, in the command's own process (``python
fixed_cost.py``: the same command with the functions a run calls wrapped to record when
each started and ended; what a first run on a home, or a run with
``DISTETL_KEEP_SERVER=0``, spends): interpreter start and imports, the kept Prefect
server's answer, the local cluster's start and close, the flow run with the cluster up,
waiting for Prefect to record the task run, and the rest. A figure, not a check.

Check: distetl's best time / Luigi's ≤ 4.

History (2 cores): 11.3× with a Prefect server started per run (2026-12-03); 9.0× with it
launched as the command starts (4.14 s vs 0.46 s, 2026-12-04 09:00 UTC); with the kept
server and the warm run process, 1.1 s vs 0.46 s (2026-12-04 11:10 UTC).
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
from distetl.handoff import stop_warm
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
        stop_warm(folder / "home")
        assert retire_kept(folder / "home" / "prefect"), "Expected no run to use the kept server at the end"


def _measure(bench, name, folder, flow, env, distetl_run, luigi_build) -> None:
    python = sys.executable
    distetl_run()  # in the command's own process; leaves the home's warm run process behind
    distetl_run()  # handed to it (waits while it finishes its imports)
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
    bench.figure(name, "distetl run in its own process s (instrumented)", round(traced["wall_s"], 3))
    for phase, seconds in phases.items():
        bench.figure(name, f"distetl phase: {phase} s", round(seconds, 3))
    top = sorted(((p, s) for p, s in phases.items() if not p.startswith("of which")), key=lambda kv: -kv[1])[:4]
    check = bench.check(name, "one-chunk distetl run / one-task Luigi build (best of each)",
                        best["distetl"] / best["luigi"], "<=", RATIO,
                        f"({best['distetl']:.2f} s vs {best['luigi']:.2f} s; in its own process distetl took {traced['wall_s']:.2f} s, "
                        "its largest phases: "
                        + ", ".join(f"{p} {s:.2f} s" for p, s in top) + ")")
    print("\n" + check.line())
    if not check.passed:
        raise CheckFailed(check.line())
