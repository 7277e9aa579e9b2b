"""A chunk bigger than a worker should hold: written piece by piece, worker memory flat.

``distetl.run`` on the local runner (2 workers) of :func:`workloads.big_chunk_pipeline`:
one batch of two chunks on one worker, a small warm-up chunk (the worker's imports,
allocator pools and Parquet writer, once) and then the big chunk, whose extract returns
an iterator of 40 DataFrames of random float64 (generated on the fly, the previous one
dropped as the next is built): 12.8 MiB each (512 MiB in memory) in quick mode, 32 MiB
each (1.25 GiB) in full mode. distetl writes each piece as it comes (a row group each)
to a temp file it commits after the last. Both modes have the same number of pieces:
the worker holds a few pieces at a time, so its growth relative to the chunk follows
the piece count (16 pieces of 32 MiB, 512 MiB in all, grew it by 33 % of the chunk on
2026-11-22; 40 pieces of 28.8 MB by 14 % in ``tests/test_big_chunks.py``).

Memory of the worker that wrote it, as in ``tests/test_big_chunks.py``: the extract
reads the worker's RSS just before its first piece (the baseline) and restarts the
kernel's high-water mark there (``/proc/self/clear_refs``); after the last piece was
written it reads the high-water mark (VmHWM). The peak is the larger of that and the
harness's own peak of every worker process (their VmHWM polled every 0.25 s, which
only grows: an upper bound). Growth = peak − baseline.

Check: growth ≤ 25 % of the chunk's bytes in memory (the pieces' ``memory_usage``).
Materialised at once, the chunk alone would cost 100 %.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from benchlib import discard, measure
from report import non_negative
from workloads import BIG_COLUMNS, BIG_MEMORY_DIR

GROWTH_LIMIT = 0.25


def test_big_chunk(bench, sizes, bench_root, prefect_server):
    name = "big_chunk"
    pieces, rows = sizes.big_chunk_pieces, sizes.big_chunk_piece_rows
    spec = {"name": name, "kind": "big_chunk", "pieces": pieces, "rows": rows, "root": str(bench_root)}
    m = bench.add(measure(spec, "distetl", chunks_per_task=2))
    try:
        assert m.failed == 0, m.notes.get("first_error")
        assert m.chunks == 2 and m.written == 2, (m.chunks, m.written)
        output = Path(m.notes["output"])
        path = output / name / "part=big" / "data.parquet"
        meta = pq.read_metadata(path)
        assert meta.num_rows == pieces * rows and meta.num_row_groups >= pieces, (
            meta.num_rows, meta.num_row_groups)
        file_bytes = path.stat().st_size
        memory_file = output / BIG_MEMORY_DIR / "big.json"
        assert memory_file.is_file(), (
            f"Expected the big chunk's extract to leave its memory figures at {memory_file}; got no file. "
            "Fix: check that workloads.big_extract ran to its end on a worker.")
        memory = json.loads(memory_file.read_text())
        warm_up = json.loads((output / BIG_MEMORY_DIR / "warm-up.json").read_text())
    finally:
        discard(m)

    chunk_bytes = memory["produced_bytes"]
    assert memory["pieces"] == pieces and chunk_bytes == pieces * rows * BIG_COLUMNS * 8, memory
    harness_peak = max(m.worker_peak_mb, default=0.0) * 2**20
    peak = max(memory["peak_bytes"], harness_peak)
    growth = non_negative(peak - memory["baseline_bytes"], "the worker's peak RSS growth over its baseline, bytes",
                          "take the peak (VmHWM) after the baseline was read, in the same process")
    same_worker = warm_up["pid"] == memory["pid"]
    mib = 2**20

    bench.figure(name, "chunk MB in memory", round(chunk_bytes / mib, 1))
    bench.figure(name, "pieces", pieces)
    bench.figure(name, "piece MB", round(chunk_bytes / pieces / mib, 1))
    bench.figure(name, "file MB", round(file_bytes / mib, 1))
    bench.figure(name, "chunk write s (extract to last piece written)", memory["seconds"])
    bench.figure(name, "worker baseline MB", round(memory["baseline_bytes"] / mib, 1))
    bench.figure(name, "worker peak MB (VmHWM since baseline)", round(memory["peak_bytes"] / mib, 1))
    bench.figure(name, "worker peak MB (harness, polled)", round(harness_peak / mib, 1))
    bench.figure(name, "worker peak growth MB", round(growth / mib, 1))
    bench.figure(name, "high-water mark restarted at baseline", memory["hwm_reset"])
    bench.figure(name, "warm-up chunk on the same worker", same_worker)

    check = bench.check(name, "worker peak RSS growth / chunk bytes in memory", growth / chunk_bytes, "<=",
                        GROWTH_LIMIT, f"({growth / mib:.0f} MB growth for a {chunk_bytes / mib:.0f} MB chunk of "
                                      f"{pieces} pieces; peak {peak / mib:.0f} MB, baseline "
                                      f"{memory['baseline_bytes'] / mib:.0f} MB)")
    assert check.passed, check.line()
