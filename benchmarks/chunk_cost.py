"""The ``chunk_cost`` workload: what one small chunk costs on a worker, against the
same work in a plain Python loop, side by side in one session.

Each chunk is one day of a year of readings: read an 18,000-row CSV (the whole year),
keep the day's ~50 rows, write them as Parquet. ``loop``: that read → filter → Parquet
bytes → temp file → fsync → ``os.replace`` into ``date=…/part-0.parquet``, day after
day, in a fresh Python process. ``distetl``: the same extract as a one-stage pipeline
run by ``distetl.run`` on the local runner with one worker (so a chunk's time is its
own, not shared with a second worker on 2 cores); a chunk's cost is its ``seconds`` in
the run's per-chunk file (extract, transform, checks, Parquet, commit on the worker),
with its phases beside it.

Run as ``python chunk_cost.py SPEC_JSON`` (prints ``BENCH-RESULT {json}``).
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent

#: Rows of the year's CSV (~50 a day).
ROWS = 18_000
YEAR = 2024


def days(n: int) -> list[str]:
    return [str(dt.date(YEAR, 1, 1) + dt.timedelta(days=i)) for i in range(n)]


def make_csv(path: Path) -> None:
    """The year's readings: day, city, temperature, humidity (seeded)."""
    if path.exists():
        return
    rng = np.random.default_rng(7)
    every = days(366)
    frame = pd.DataFrame({"day": rng.choice(every, ROWS), "city": rng.choice(["oslo", "lima", "pune"], ROWS),
                          "temp": rng.normal(12, 8, ROWS).round(1), "hum": rng.uniform(0, 1, ROWS).round(3)})
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def extract(csv: str, chunk: Any) -> pd.DataFrame:
    frame = pd.read_csv(csv)
    return frame[frame["day"] == chunk["date"]]


def _loop(csv: str, out: Path, n: int) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.perf_counter()
    for day in days(n):
        frame = pd.read_csv(csv)
        frame = frame[frame["day"] == day]
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer, compression="snappy")
        folder = out / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "part-0.parquet"
        temp = folder / ".part-0.parquet.tmp"
        with open(temp, "wb") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    seconds = time.perf_counter() - started
    return {"chunks": n, "seconds": seconds, "ms_per_chunk": seconds / n * 1000}


def _distetl(csv: str, out: Path, n: int) -> dict[str, Any]:
    import distetl
    from distetl import DateRange, Pipeline
    from distetl.state.manifest import read_chunks
    from distetl.state.results import PHASES
    from distetl.storage import Storage

    first, last = days(n)[0], days(n)[-1]
    pipeline = Pipeline(name="chunk_cost", plan=DateRange(start=first, end=last),
                        extract=functools.partial(extract, csv), target="{output}/days/date={date}/part-0.parquet")
    started = time.perf_counter()
    report = distetl.run(pipeline, str(out), workers=1, progress=False)
    wall = time.perf_counter() - started
    rows = [r for r in read_chunks(Storage.for_url(str(out)), report.chunks_path) if r["status"] == "written"]
    seconds = np.array([r["seconds"] for r in rows])
    return {"chunks": len(rows), "failed": report.failed_count, "wall_s": wall,
            "mean_ms": float(seconds.mean() * 1000), "median_ms": float(np.median(seconds) * 1000),
            "p95_ms": float(np.percentile(seconds, 95) * 1000),
            "phases_ms": {p: float(np.mean([r[f"{p}_s"] for r in rows]) * 1000) for p in PHASES},
            "rows": int(sum(r["rows"] for r in rows))}


def _main(spec: Mapping[str, Any]) -> dict[str, Any]:
    root = Path(spec["root"])
    csv = root / "readings.csv"
    make_csv(csv)
    out = root / f"{spec['variant']}-{spec['round']}"
    if spec["variant"] == "loop":
        return _loop(str(csv), out, int(spec["chunks"]))
    return _distetl(str(csv), out, int(spec["chunks"]))


def measure(spec: Mapping[str, Any]) -> dict[str, Any]:
    """One variant in a fresh process."""
    done = subprocess.run([sys.executable, str(HERE / "chunk_cost.py"), json.dumps(dict(spec))],
                          capture_output=True, text=True, cwd=str(HERE), timeout=1800)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT "):])
    raise AssertionError(f"Expected a BENCH-RESULT line from chunk_cost.py; got exit {done.returncode}: "
                         f"{done.stderr[-3000:]}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    print("BENCH-RESULT " + json.dumps(_main(json.loads(sys.argv[1]))), flush=True)
