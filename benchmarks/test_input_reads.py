"""Input reads: a stage whose every chunk reads 30 tiny upstream files costs little more
than reading those files bare.

One run, one worker (the sequential runner), side by side (:mod:`input_reads`):
``reader`` (chunk *n* reads upstream parts *n* … *n* + 29 with ``ctx.read_inputs_table()``)
and ``bare`` (the same 30 files per chunk with bare ``pyarrow.parquet.read_table``).

Check: the reader stage's cost per chunk on the worker (its chunks' own seconds: record,
read, write, commit; plus the worker time before each of them: batch hand-off and the
record of its 30 inputs) ≤ 1.3 × the bare reads' time per chunk (the 30
``read_table`` calls alone, timed inside the extract).

And the driver sends each chunk's upstream data versions with its batch, so the worker
opens no input's footer for the record: the run opens the upstream files exactly as
often as the two reads do by themselves (kernel-counted, inotify), where a footer read
per input would add 30 opens per chunk (the control counts them).
"""

from __future__ import annotations

import input_reads
from benchlib import discard

#: Chunks of the reader (and of the bare stage): 30 reads each.
CHUNKS = 100


def test_input_reads(bench, bench_root, prefect_server):
    name = "input_reads"
    m = bench.add(input_reads.measure({"chunks": CHUNKS, "root": str(bench_root)}))
    n = m.notes
    w = n["window"]

    assert m.failed == 0 and m.written == 2 * CHUNKS == m.chunks, (m.written, m.chunks, m.notes.get("first_error"))
    assert n["skipped"] == CHUNKS + w - 1, "the upstream stage was committed before the run"
    assert n["timed_reader"] == n["timed_bare"] == CHUNKS
    assert n["same_summaries"], "reader and bare must read the same rows"
    reader, bare = n["stages"]["reader"], n["stages"]["bare"]
    assert reader["written"] == bare["written"] == CHUNKS

    # File opens: each upstream file is opened once per read of it, never for a footer.
    assert n["footer_opens_control"] == w, "the control: a footer read is one counted open"
    expected = CHUNKS * (n["opens_per_chunk_dataset"] + n["opens_per_chunk_bare"])
    assert n["run_opens"] == expected, (
        f"{n['run_opens']} opens of upstream files in the run; the reads alone make {expected} "
        f"({n['opens_per_chunk_dataset']} + {n['opens_per_chunk_bare']} per chunk); a footer read per input "
        f"would add {CHUNKS * w}")

    stage_ms = (reader["compute_s"] + reader["gap_s"]) / CHUNKS * 1000
    bare_ms = n["bare_read_s"] / CHUNKS * 1000

    def fig(label: str, value: object) -> None:
        bench.figure(name, label, value)

    fig("chunks x upstream files per chunk", f"{CHUNKS} x {w}")
    fig("reader stage ms/chunk (compute + gap)", round(stage_ms, 3))
    fig("reader: compute ms/chunk / gap ms/chunk",
        f"{reader['compute_s'] / CHUNKS * 1000:.3f} / {reader['gap_s'] / CHUNKS * 1000:.3f}")
    fig("reader: ctx.read_inputs_table ms/chunk", round(n["reader_read_s"] / CHUNKS * 1000, 3))
    fig("bare: 30 x pq.read_table ms/chunk", round(bare_ms, 3))
    fig("bare stage ms/chunk (compute + gap)", round((bare["compute_s"] + bare["gap_s"]) / CHUNKS * 1000, 3))
    fig("upstream file opens in the run (reads alone; footer reads would add)",
        f"{n['run_opens']} ({expected}; +{CHUNKS * w})")
    discard(m)

    ratio = bench.check(name, "reader stage cost / bare read_table of its 30 files (per chunk)", stage_ms / bare_ms,
                        "<=", 1.3, f"({stage_ms:.2f} ms vs {bare_ms:.2f} ms per chunk, one worker, one run)")
    assert ratio.passed, ratio.line()
