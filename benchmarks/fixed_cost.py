"""The ``fixed_cost`` workload's pieces: one chunk, as a command, on distetl and on Luigi.

The same per-chunk work on both sides: 20 rows built from the chunk's id range (the
small chunks' extract), written as one Parquet file. Each command runs in a fresh
process, timed by the caller from just before it starts to its exit, as a user sees it:

* ``distetl run FLOW --output OUT`` (``python -m distetl.cli``), no ``PREFECT_API_URL``,
  ``DISTETL_HOME`` warm (its embedded Prefect database made, and its kept Prefect server
  launched, by an earlier run): the run reports to that server, starts a local Dask
  cluster, runs one flow run and closes the cluster;
* ``luigi --module fixed_cost_task OneChunk --root OUT --local-scheduler``
  (``python -m luigi``): Luigi's scheduler in the process, one worker, one task.

Run as a script (``python fixed_cost.py FLOW OUT``), this module is ``distetl run`` with
every phase of the run timed (:func:`phases_main`): it wraps, for measuring only, the
functions a run calls in turn (planning, the pre-flight check, the Prefect server's start
and stop, the cluster's start and close, the flow run, waiting for Prefect to record the
task runs, the index and manifest writes) and prints their intervals as one JSON line
(``FIXED-COST-PHASES {...}``) before leaving as the command does.
"""

from __future__ import annotations

import time

_T0 = time.monotonic()  # before any import: where this process's own clock starts

import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Optional  # noqa: E402

__all__ = ["FLOW_SOURCE", "LUIGI_SOURCE", "PHASES", "phase_breakdown", "timed_command", "write_sources"]

PIPELINE = "fixed_cost"
ROWS = 20
_MARK = "FIXED-COST-PHASES "

#: The distetl flow file: one chunk of :data:`ROWS` rows.
FLOW_SOURCE = f'''
import numpy as np
import pandas as pd
from distetl import IdRange, Pipeline


def extract(chunk):
    ids = np.arange(chunk["start"], chunk["stop"], dtype="int64")
    return pd.DataFrame({{"id": ids, "value": ids * 0.5, "label": [f"row-{{i}}" for i in ids]}})


pipeline = Pipeline(name={PIPELINE!r}, plan=IdRange(start=0, stop={ROWS}, size={ROWS}), extract=extract,
                    target="{{output}}/{PIPELINE}/part-{{first}}.parquet")
'''

#: The Luigi module: one task doing the same chunk into the same path.
LUIGI_SOURCE = f'''
import luigi
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


class OneChunk(luigi.Task):
    root = luigi.Parameter()

    def output(self):
        return luigi.LocalTarget(f"{{self.root}}/{PIPELINE}/part-0.parquet")

    def run(self):
        ids = np.arange(0, {ROWS}, dtype="int64")
        frame = pd.DataFrame({{"id": ids, "value": ids * 0.5, "label": [f"row-{{i}}" for i in ids]}})
        target = self.output()
        target.makedirs()
        with target.temporary_path() as tmp:
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
'''


def write_sources(folder: Path) -> tuple[Path, Path]:
    """Write the flow file and the Luigi module into ``folder``; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    flow, task = folder / "fixed_cost_flow.py", folder / "fixed_cost_task.py"
    flow.write_text(FLOW_SOURCE)
    task.write_text(LUIGI_SOURCE)
    return flow, task


def timed_command(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> dict[str, Any]:
    """Run a command in a fresh process; its wall time from just before the start to its
    exit, with its exit code and output.

    Raises:
        AssertionError: If it exits non-zero.
    """
    start = time.monotonic()
    proc = subprocess.run(args, env=env, cwd=str(cwd), capture_output=True, text=True, timeout=timeout)
    end = time.monotonic()
    if proc.returncode != 0:
        raise AssertionError(f"Expected {' '.join(args[:4])} … to exit 0; got {proc.returncode}:\n"
                             f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}\nFix: run it by hand in {cwd}.")
    return {"wall_s": end - start, "started": start, "ended": end, "stdout": proc.stdout, "stderr": proc.stderr}


# -- the instrumented `distetl run` ---------------------------------------------------------

#: Phases of a one-chunk `distetl run`, in order, as :func:`phase_breakdown` names them.
PHASES = (
    "interpreter start and imports",
    "command line and flow file",
    "plan",
    "pre-flight check",
    "Prefect server and local cluster start (side by side)",
    "flow run (cluster up)",
    "local cluster close",
    "wait for Prefect to record the task run",
    "Prefect server stop (a per-run server only)",
    "index and manifest",
    "rest of the run (lease, report)",
    "summary and output",
    "interpreter exit",
)


def _instrument() -> list[tuple[str, float, float]]:
    """Wrap the functions a run calls so each call's (name, start, end) is recorded.
    Measuring only: every wrapper calls the original and returns what it returns."""
    from distributed import LocalCluster
    from distributed.deploy.spec import SpecCluster

    import distetl.engine.backfill as backfill
    import distetl.engine.flow as flow
    import distetl.engine.prefect_api as prefect_api
    from distetl.engine.runners import RunnerSpec
    from distetl.state.manifest import RunReport

    spans: list[tuple[str, float, float]] = []

    def wrap(owner: Any, attr: str, name: str, only: Optional[Callable[..., bool]] = None) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if only is not None and not only(*args):
                return original(*args, **kwargs)
            start = time.monotonic()
            try:
                return original(*args, **kwargs)
            finally:
                spans.append((name, start, time.monotonic()))

        setattr(owner, attr, timed)

    closed: set[int] = set()

    def first_close(cluster: Any, *args: Any) -> bool:
        if id(cluster) in closed or not isinstance(cluster, LocalCluster):
            return False
        closed.add(id(cluster))
        return True

    wrap(backfill, "run", "run")
    wrap(backfill, "plan", "plan")
    wrap(RunnerSpec, "check", "pre-flight check")
    wrap(prefect_api, "wait_answering", "Prefect server start")
    wrap(prefect_api.EmbeddedServer, "stop", "Prefect server stop")
    wrap(LocalCluster, "__init__", "local cluster start")
    wrap(SpecCluster, "close", "local cluster close", only=first_close)
    wrap(flow, "run_flow", "flow run")
    wrap(prefect_api, "wait_for_task_runs", "wait for Prefect to record the task run")
    wrap(backfill, "_update_indexes", "index")
    wrap(RunReport, "write_manifest", "manifest")
    return spans


def phases_main(argv: list[str]) -> int:
    """``distetl run FLOW --output OUT`` with its phases timed; prints them as JSON."""
    from distetl import cli
    from distetl.engine.prefect_api import launch_early

    # The command launches its Prefect server before it imports what the run needs (the
    # modules wrapped below): the same here, then the run takes that server.
    launching = time.monotonic()
    launched = launch_early()  # False: the home's kept server runs already
    launch = ("Prefect server launch", launching, time.monotonic())
    spans = _instrument()
    if launched:
        spans.append(launch)
    entered = time.monotonic()
    code = cli.main(["run", argv[0], "--output", argv[1]])
    done = time.monotonic()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    print(_MARK + json.dumps({"process_t0": _T0, "main": entered, "done": done, "code": code,
                              "spans": spans}), flush=True)
    cli.leave(["run"], code)  # as the command leaves (its exit handlers, then os._exit)
    return code


def _one(spans: list, name: str, optional: bool = False) -> tuple[float, float]:
    found = [(s, e) for n, s, e in spans if n == name]
    if optional and not found:
        return (float("nan"), float("nan"))
    if len(found) != 1:
        raise AssertionError(f"Expected one timed call of {name!r} in the instrumented run; got {len(found)}. "
                             "Fix: check what distetl.engine.backfill.run calls now (fixed_cost._instrument).")
    return found[0]


def phase_breakdown(stdout: str, started: float, ended: float) -> dict[str, float]:
    """Seconds per phase (:data:`PHASES`) of an instrumented run, from its printed spans
    and the caller's start and end of the process (the same monotonic clock).

    Raises:
        AssertionError: If the spans are missing, or a phase comes out negative
            (:func:`report.non_negative`).
    """
    from report import non_negative

    line = next((x for x in reversed(stdout.splitlines()) if x.startswith(_MARK)), None)
    if line is None:
        raise AssertionError(f"Expected a {_MARK.strip()} line from the instrumented run; got none:\n{stdout[-2000:]}")
    data = json.loads(line[len(_MARK):])
    spans = data["spans"]
    run = _one(spans, "run")
    # A server launched as the command starts (before the flow file loads) and waited
    # for by the run starts from launch to answering; a kept one (the home's server,
    # launched by an earlier run) only has to answer, and is not stopped.
    launched, answered = _one(spans, "Prefect server launch", optional=True), _one(spans, "Prefect server start")
    server_start = (launched[0], answered[1]) if launched[0] == launched[0] else answered
    server_stop = _one(spans, "Prefect server stop", optional=True)
    if server_stop[0] != server_stop[0]:  # none (kept): an empty span where the flow run ends
        server_stop = (_one(spans, "flow run")[1],) * 2
    cluster_start, cluster_close = _one(spans, "local cluster start"), _one(spans, "local cluster close")
    flow_run = _one(spans, "flow run")
    d = {name: e - s for name, s, e in spans if name not in ("index", "manifest")}
    assert server_start[1] <= flow_run[0] < flow_run[1] <= server_stop[0], "phases out of order"
    assert cluster_start[0] < cluster_start[1] <= cluster_close[0], "phases out of order"
    # The cluster starts in a thread beside the server (distetl.engine.runners.EarlyCluster),
    # before the flow run; where it starts inside the flow run (Prefect's task runner),
    # its start and close are taken out of the flow run's time.
    # What the run waits for once planned and checked: the starts, clipped to after the
    # earlier phases they overlap (the server was launched before them).
    ready = _one(spans, "pre-flight check")[1]
    starting = [(max(s, ready), e) for s, e in (server_start, cluster_start) if e > ready]
    out = {
        "interpreter start and imports": data["main"] - started,
        "command line and flow file": run[0] - data["main"],
        "plan": d["plan"],
        "pre-flight check": d["pre-flight check"],
        "Prefect server and local cluster start (side by side)": _covered(starting),
        "flow run (cluster up)": (flow_run[1] - flow_run[0]) - _overlap(flow_run, [cluster_start, cluster_close]),
        "local cluster close": d["local cluster close"],
        "wait for Prefect to record the task run": d["wait for Prefect to record the task run"],
        "Prefect server stop (a per-run server only)": server_stop[1] - server_stop[0],
        "index and manifest": sum(e - s for n, s, e in spans if n in ("index", "manifest")),
    }
    timed = [tuple(s[1:]) for s in spans if s[0] != "run"]
    out["rest of the run (lease, report)"] = (run[1] - run[0]) - _overlap(run, timed)
    out["summary and output"] = data["done"] - run[1]
    out["interpreter exit"] = ended - data["done"]
    out["of which: Prefect server start alone"] = server_start[1] - server_start[0]
    out["of which: local cluster start alone"] = d["local cluster start"]
    for name, value in out.items():
        non_negative(value, f"the phase {name!r} of the one-chunk run, s")
    return {name: out[name] for name in (*PHASES, "of which: Prefect server start alone",
                                         "of which: local cluster start alone")}


def _covered(intervals: list) -> float:
    """Seconds covered by a set of (start, end) intervals (overlaps counted once)."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def _overlap(span: tuple, intervals: list) -> float:
    """Seconds of ``span`` that the intervals cover."""
    clipped = [(max(s, span[0]), min(e, span[1])) for s, e in intervals if min(e, span[1]) > max(s, span[0])]
    return _covered(clipped)


if __name__ == "__main__":
    sys.exit(phases_main(sys.argv[1:]))
