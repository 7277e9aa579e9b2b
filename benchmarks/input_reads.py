"""The ``input_reads`` workload: a stage whose every chunk reads 30 tiny upstream files,
side by side with a bare read of the same 30 files, in one run on one worker.

* ``tiny``: the upstream stage, ``chunks + 29`` chunks of :data:`~workloads.TINY_ROWS`
  rows, ``{output}/tiny/part={part}/part-0.parquet`` (written before the measured run).
* ``reader``: ``chunks`` chunks, chunk *n* reading ``tiny`` parts *n* … *n* + 29 through
  a :class:`~distetl.FromFunction` mapping with ``ctx.read_inputs_table()``: what a user
  writes. Its per-chunk cost on the worker is everything distetl does for it: the
  chunk's record (its 30 inputs' data versions, sent by the driver), the read, the
  one-row summary's write and commit, and its share of the batch hand-off.
* ``bare``: a root stage with the same ``chunks`` chunks, each naming the same 30 files
  in a field; its extract reads them with bare ``pyarrow.parquet.read_table`` (timed
  inside the extract: only the 30 reads) and writes the same summary.

Both stages run in one ``distetl.run(runner="sequential")``: one worker thread, warm
page cache, the same files. File opens of the upstream files are counted by the kernel
(inotify ``IN_OPEN`` on every upstream folder, with the closes watched too, so two
opens of one file are never merged into one event), so the reads pyarrow makes in C++
count too: the run must open each upstream file exactly as often as the two reads themselves
do, that is with no footer read per input for the record.

Run as ``python input_reads.py SPEC_JSON`` (a fresh process; prints ``BENCH-RESULT
{json}``); :func:`measure` does that.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent

#: Upstream files each chunk of ``reader`` and ``bare`` reads.
WINDOW = 30

#: Extract-side timings, by stage and chunk key (the sequential runner runs the chunks
#: in this process).
TIMINGS: dict[str, dict[str, float]] = {"reader": {}, "bare": {}}

_IN_OPEN = 0x20
_IN_CLOSE = 0x08 | 0x10  # IN_CLOSE_WRITE | IN_CLOSE_NOWRITE: two opens of a file are never coalesced
_IN_Q_OVERFLOW = 0x4000
_EVENT = struct.Struct("iIII")


class OpenCounter:
    """Opens of files named ``name`` in some folders, counted by the kernel (inotify).

    Counts every open by any process, pyarrow's C++ reads included. Events are drained
    by a thread so the kernel queue never overflows (an overflow is an error).
    """

    def __init__(self, folders: Sequence[str], name: str = "part-0.parquet"):
        self._libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "Expected inotify to start; got an error. Fix: run on Linux")
        for folder in folders:
            if self._libc.inotify_add_watch(self._fd, os.fsencode(folder), _IN_OPEN | _IN_CLOSE) < 0:
                raise OSError(ctypes.get_errno(), f"Expected an inotify watch on {folder}; got an error. "
                              "Fix: raise fs.inotify.max_user_watches")
        self._name = name.encode()
        self._count = 0
        self.overflowed = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            buf = os.read(self._fd, 1 << 16)
        except BlockingIOError:
            return
        n, off = 0, 0
        while off < len(buf):
            _, mask, _, length = _EVENT.unpack_from(buf, off)
            name = buf[off + 16:off + 16 + length].rstrip(b"\0")
            off += 16 + length
            self.overflowed = self.overflowed or bool(mask & _IN_Q_OVERFLOW)
            n += name == self._name and bool(mask & _IN_OPEN)
        with self._lock:
            self._count += n

    def _drain(self) -> None:
        while not self._stop.is_set():
            if select.select([self._fd], [], [], 0.05)[0]:
                self._read()

    def take(self) -> int:
        """Opens counted since the last call (waits for the kernel's events to arrive)."""
        time.sleep(0.1)
        self._read()
        with self._lock:
            n, self._count = self._count, 0
        if self.overflowed:
            raise RuntimeError("Expected every open counted; got an inotify queue overflow. "
                               "Fix: fewer chunks, or raise fs.inotify.max_queued_events")
        return n

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self._fd)


# -- the per-chunk functions ------------------------------------------------------------


def tiny_extract(chunk: Any) -> pd.DataFrame:
    """The tiny workload's rows, ids from the part number."""
    from workloads import TINY_ROWS

    first = int(chunk["part"]) * TINY_ROWS
    ids = list(range(first, first + TINY_ROWS))
    return pd.DataFrame({"id": ids, "value": [i * 0.5 for i in ids], "label": [f"row-{i}" for i in ids]})


def window(chunk: Any) -> list[str]:
    """The ``tiny`` keys chunk *n* of ``reader`` reads: parts *n* … *n* + 29."""
    n = int(chunk["n"])
    return [f"part={i:05d}" for i in range(n, n + WINDOW)]


def _summary(table: pa.Table) -> pd.DataFrame:
    return pd.DataFrame({"rows": [table.num_rows], "value_sum": [float(pc.sum(table["value"]).as_py())]})


def reader_extract(chunk: Any, ctx: Any) -> pd.DataFrame:
    """What a user writes: the chunk's inputs as one table, summarised."""
    start = time.perf_counter()
    table = ctx.read_inputs_table()
    TIMINGS["reader"][chunk.key] = time.perf_counter() - start
    return _summary(table)


def bare_extract(chunk: Any) -> pd.DataFrame:
    """The same 30 files with bare ``pyarrow.parquet.read_table``, only the reads timed."""
    files = chunk["files"].split("|")
    start = time.perf_counter()
    tables = [pq.read_table(f) for f in files]
    TIMINGS["bare"][chunk.key] = time.perf_counter() - start
    return _summary(pa.concat_tables(tables))


def pipeline(chunks: int, output: str) -> Any:
    """tiny (``chunks + 29`` parts) → reader (``chunks``, 30 parts each); bare
    (``chunks``, a root stage naming the same 30 files per chunk)."""
    from distetl import ChunkList, FromFunction, Input, Pipeline, Stage
    from workloads import TINY_SCHEMA

    parts = [f"{i:05d}" for i in range(chunks + WINDOW - 1)]
    tiny_target = "{output}/tiny/part={part}/part-0.parquet"
    files = [tiny_target.format(output=output, part=p) for p in parts]
    summary = pa.schema([("rows", pa.int64()), ("value_sum", pa.float64())])
    return Pipeline(name="input_reads", stages=[
        Stage("tiny", plan=ChunkList(parts, key_field="part"), extract=tiny_extract, schema=TINY_SCHEMA,
              target=tiny_target),
        Stage("reader", plan=ChunkList([f"{n:05d}" for n in range(chunks)], key_field="n"),
              inputs={"tiny": Input("tiny", FromFunction(window))}, extract=reader_extract, schema=summary,
              target="{output}/reader/n={n}/part-0.parquet"),
        Stage("bare", plan=ChunkList([{"n": f"{n:05d}", "files": "|".join(files[n:n + WINDOW])}
                                      for n in range(chunks)], key_field="n"),
              extract=bare_extract, schema=summary, target="{output}/bare/n={n}/part-0.parquet"),
    ])


def _opens_of(counter: OpenCounter, read: Any) -> int:
    counter.take()
    read()
    return counter.take()


def run(spec: Mapping[str, Any]) -> Any:
    """Write the upstream stage, then measure ``reader`` and ``bare`` in one run."""
    import distetl
    from benchlib import Measurement, _measure
    from distetl.state.records import read_record
    from distetl.storage import Storage
    from stages_workload import stage_breakdown

    chunks = int(spec["chunks"])
    output = str(Path(spec["root"]) / "input_reads" / f"run-{os.getpid()}")
    pipe = pipeline(chunks, output)
    setup = distetl.run(pipe, output, runner="sequential", stages=["tiny"])
    assert setup.ok and setup.written == chunks + WINDOW - 1, setup.failed[:1]
    folders = sorted(str(p.parent) for p in Path(output, "tiny").glob("part=*/part-0.parquet"))
    files = [os.path.join(f, "part-0.parquet") for f in folders]
    root = os.path.join(output, "tiny")

    counter = OpenCounter(folders)
    try:
        # What one chunk's reads open, each alone (and the page cache warmed for both).
        per_chunk_dataset = _opens_of(counter, lambda: ds.dataset(
            files[:WINDOW], format="parquet", partitioning="hive", partition_base_dir=root).to_table())
        per_chunk_bare = _opens_of(counter, lambda: [pq.read_table(f) for f in files[:WINDOW]])
        # The control: a footer read for a record is counted too.
        storage = Storage.for_url(output)
        footer_opens = _opens_of(counter, lambda: [read_record(storage, f) for f in files[:WINDOW]])

        holder: dict[str, Any] = {}

        def body() -> Any:
            start = time.perf_counter()
            report = distetl.run(pipe, output, runner="sequential", stages=["reader", "bare"])
            holder["report"] = report
            m = Measurement("input_reads", "distetl_sequential", report.total - report.skipped,
                            time.perf_counter() - start)
            m.rows, m.written, m.failed = report.rows, report.written, report.failed_count
            return m

        m = _measure((), body)
        run_opens = counter.take()
    finally:
        counter.close()
    report = holder["report"]
    breakdown = stage_breakdown(report.results)
    same = all(pq.read_table(Path(output, "reader", f"n={n:05d}", "part-0.parquet")).equals(
        pq.read_table(Path(output, "bare", f"n={n:05d}", "part-0.parquet"))) for n in range(chunks))
    m.notes.update(
        output=output, chunks=chunks, window=WINDOW, skipped=report.skipped,
        stages={s: breakdown[s] for s in ("reader", "bare") if s in breakdown},
        reader_read_s=round(sum(TIMINGS["reader"].values()), 4), bare_read_s=round(sum(TIMINGS["bare"].values()), 4),
        timed_reader=len(TIMINGS["reader"]), timed_bare=len(TIMINGS["bare"]),
        opens_per_chunk_dataset=per_chunk_dataset, opens_per_chunk_bare=per_chunk_bare,
        footer_opens_control=footer_opens, run_opens=run_opens, same_summaries=same,
    )
    return m


def measure(spec: Mapping[str, Any], timeout: float = 600) -> Any:
    """Run the workload in a fresh Python process and return its measurement."""
    from benchlib import _RESULT, Measurement

    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), json.dumps(dict(spec))],
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT):
            return Measurement.from_dict(json.loads(line[len(_RESULT):]))
    tail = (proc.stdout[-2000:] + "\n" + proc.stderr[-4000:]).strip()
    raise RuntimeError(f"input_reads printed no result (exit {proc.returncode}):\n{tail}")


def main(argv: list[str]) -> int:
    """``python input_reads.py SPEC_JSON``: run, print ``BENCH-RESULT {json}``."""
    import benchlib

    for module in ("distetl.engine.flow", "prefect.flow_engine", "prefect.task_engine"):
        __import__(module)
    benchlib.emit(run(json.loads(argv[1])))
    return 0


if __name__ == "__main__":
    for _path in (str(HERE.parent / "flows"), str(HERE)):
        if _path not in sys.path:
            sys.path.insert(0, _path)
    import input_reads  # the functions live in the module `input_reads`, as on any worker

    sys.exit(input_reads.main(sys.argv))
