"""The ``checks`` workload: the same 1,000,000-row chunks written with and without a
5-column pandera schema checked on the worker, side by side in one run.

* ``plain``: ``chunks`` chunks of :data:`ROWS` rows (an id, an amount, a quantity, a
  shop, a timestamp: generated from the chunk's seed), no checks.
* ``checked``: the same chunks with :data:`SCHEMA` (types; ``unique`` ids; amounts
  ``ge(0)``; quantities ``in_range``; shops ``isin``; timestamps not null), validated
  lazily on each chunk after the schema cast, before the commit.

Both stages are roots of one pipeline, run by one ``distetl.run`` on the local runner (2
workers), so their chunks interleave on the same workers under the same conditions.
Each stage's cost is its chunks' own seconds on the workers (extract, cast, checks,
serialise, commit). ``no_checks_import``: a run of the plain stage alone in a fresh
process, which reports whether pandera was imported (it must not be).

Run as ``python checks_workload.py SPEC_JSON`` (prints ``BENCH-RESULT {json}``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

HERE = Path(__file__).resolve().parent

#: Rows per chunk.
ROWS = 1_000_000
SHOPS = ["north", "south", "east", "west"]
ARROW_SCHEMA = pa.schema([("id", pa.int64()), ("amount", pa.float64()), ("qty", pa.int64()),
                          ("shop", pa.string()), ("ts", pa.timestamp("us"))])


def frame(chunk: Any) -> pd.DataFrame:
    """One chunk's rows, the same for both stages (seeded by the chunk)."""
    n = int(chunk["item"])
    rng = np.random.default_rng(n)
    return pd.DataFrame({
        "id": np.arange(n * ROWS, (n + 1) * ROWS, dtype=np.int64),
        "amount": rng.random(ROWS) * 100.0,
        "qty": rng.integers(1, 50, ROWS),
        "shop": np.array(SHOPS, dtype=object)[rng.integers(0, len(SHOPS), ROWS)],
        "ts": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 86_400, ROWS), unit="s"),
    })


def schema() -> Any:
    """The 5-column pandera schema (imported here, only for the checked stage)."""
    import pandera.pandas as pandera

    return pandera.DataFrameSchema({
        "id": pandera.Column("int64", unique=True, nullable=False),
        "amount": pandera.Column(float, pandera.Check.ge(0)),
        "qty": pandera.Column("int64", pandera.Check.in_range(1, 100)),
        "shop": pandera.Column(str, pandera.Check.isin(SHOPS)),
        "ts": pandera.Column(nullable=False),
    })


def pipeline(chunks: int, checked: bool = True) -> Any:
    from distetl import ChunkList, Pipeline, Stage

    plan = ChunkList(list(range(chunks)))
    stages = [Stage("plain", plan=plan, extract=frame, schema=ARROW_SCHEMA, target="{output}/plain/{item}.parquet")]
    if checked:
        stages.append(Stage("checked", plan=plan, extract=frame, schema=ARROW_SCHEMA, checks=schema(),
                            target="{output}/checked/{item}.parquet"))
    return Pipeline(name="checks", stages=stages)


def _main(spec: Mapping[str, Any]) -> dict[str, Any]:
    import distetl

    chunks, root = int(spec["chunks"]), Path(spec["root"])
    if spec.get("plain_only"):
        report = distetl.run(pipeline(chunks, checked=False), str(root / "plain_only"), runner="sequential")
        return {"written": report.written, "pandera_imported": "pandera" in sys.modules}
    started = time.perf_counter()
    report = distetl.run(pipeline(chunks), str(root / "checks"), workers=2)
    wall = time.perf_counter() - started
    stages: dict[str, dict[str, float]] = {}
    for r in report.results:
        s = stages.setdefault(r.stage, {"written": 0, "compute_s": 0.0, "rows": 0, "warned": 0})
        s["written"] += r.status == "written"
        s["compute_s"] += r.seconds
        s["rows"] += r.rows
        s["warned"] += bool(r.warnings)
    return {"wall_s": wall, "written": report.written, "failed": report.failed_count, "stages": stages,
            "first_error": report.failed[0].error if report.failed else None}


def measure(spec: Mapping[str, Any], plain_only: bool = False) -> dict[str, Any]:
    """Run the workload in a fresh process and return its result."""
    done = subprocess.run([sys.executable, str(HERE / "checks_workload.py"),
                           json.dumps({**spec, "plain_only": plain_only})],
                          capture_output=True, text=True, cwd=str(HERE), timeout=3600)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT "):])
    raise AssertionError(f"Expected a BENCH-RESULT line from checks_workload.py; got exit {done.returncode}: "
                         f"{done.stderr[-3000:]}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    print("BENCH-RESULT " + json.dumps(_main(json.loads(sys.argv[1]))), flush=True)
