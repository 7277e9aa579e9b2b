"""What runs on a worker: extract → transform → write one chunk, a batch at a time.

Plain Python: nothing here imports Prefect or needs a cluster. The Prefect task in
:mod:`distetl.engine.flow` wraps :func:`run_batch`.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import pyarrow.parquet as pq

from distetl.engine.checking import CheckFailed, Checker, quarantine_path, write_quarantine
from distetl.engine.chunklog import ChunkLog, capture
from distetl.engine.context import ChunkContext, InputFiles
from distetl.model.chunks import Chunk
from distetl.errors import ChunkError
from distetl.model.partitions import strip_partitions
from distetl.state.records import RECORD_KEY, data_version, read_record
from distetl.model.pipeline import Pipeline, arity
from distetl.model.schema import is_piece, is_stream, to_table
from distetl.storage import AtomicSink, Storage

__all__ = ["ChunkContext", "InputFiles", "ChunkResult", "ChunkStopped", "ChunkTimeout", "BatchJob", "run_chunk", "run_batch"]

from distetl.state.results import BLOCKED, FAILED, NOT_RUN, PHASES, SKIPPED, WRITTEN, ChunkResult  # noqa: E402


@dataclass
class BatchJob:
    """Chunks that one task runs in order on one worker.

    Attributes:
        pipeline: The pipeline (pickled to the worker).
        chunks: The chunks, each with its rendered target path.
        output: Output root.
        storage_options: fsspec options.
        force: Recompute even when the target exists.
        topic: Progress topic name (Dask worker events) for this run.
        stage: The stage the chunks belong to (default: the pipeline's only stage).
        inputs: For a downstream stage, each chunk's committed upstream paths: per chunk,
            a dict input name → paths (a plain list: the only input's).
        input_root: The upstream stage's dataset root (for its partition columns).
        input_roots: Each input's dataset root, by input name.
        fingerprints: Per chunk, what its record keeps of its inputs (upstream data
            versions, declared sources' stamps), sent by the driver, which has them in
            the index: the worker opens each input file once, to read it. None: read
            each input file's record from its footer.
        sources: Each declared source's files, by name.
        previous_rows: For a stage with row-count rules, per chunk the row counts of
            the chunks before it (newest first): an int from the index, ``["?", path]``
            for a chunk earlier in this batch, None when unknown.
        record: What every chunk's record (its file's ``distetl.record`` metadata)
            shares: pipeline, stage, code version, run id, distetl version.
    """

    pipeline: Pipeline
    chunks: Sequence[tuple[Chunk, str]]
    output: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    force: bool = False
    topic: str = ""
    stage: str = ""
    inputs: Optional[Sequence[Any]] = None
    input_root: Optional[str] = None
    record: Mapping[str, Any] = field(default_factory=dict)
    input_roots: Mapping[str, str] = field(default_factory=dict)
    fingerprints: Optional[Sequence[Mapping[str, Any]]] = None
    sources: Mapping[str, Sequence[str]] = field(default_factory=dict)
    previous_rows: Optional[Sequence[Sequence[Any]]] = None

    def label(self) -> str:
        keys = [c.key for c, _ in self.chunks]
        name = self.stage or self.pipeline.name
        if len(keys) == 1:
            return f"{name}[{keys[0]}]"
        return f"{name}[{keys[0]}..{keys[-1]}] ({len(keys)} chunks)"


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Produced:
    """One chunk, produced and not yet committed.

    Attributes:
        rows: Rows in the file.
        data: The Parquet bytes (one DataFrame or table: committed with ``write_atomic``).
        sink: Where a streamed chunk was written (committed with ``sink.commit()``).
        pieces: Pieces of a streamed chunk.
    """

    rows: int
    data: Optional[bytes] = None
    sink: Optional[AtomicSink] = None
    pieces: int = 0

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else (self.sink.size if self.sink is not None else 0)

    def commit(self, storage: Storage, path: str, create_only: bool) -> bool:
        if self.sink is not None:
            return self.sink.commit()
        return storage.write_atomic(path, self.data, create_only=create_only)


class _Abandoned(Exception):
    """The try of a chunk was given up on (timed out or stopped) while it streamed."""


class _Attempt:
    """One try of one chunk: the sink its streamed pieces go to, and whether the try was
    given up on. :meth:`give_up` (from the watching thread, past a time limit or on a
    stop) aborts the sink at once -- the temp file is removed, the multipart upload
    aborted -- and the producing thread stops at its next piece.

    Args:
        open_sink: Makes the sink (``storage.open_atomic(path, ...)``); called on the
            first piece. None: the file is kept in memory (:func:`_produce` then returns
            its bytes).
        checker: Runs the stage's data checks on each piece (None: no checks).
    """

    def __init__(self, open_sink: Optional[Callable[[], Any]] = None, checker: Optional[Checker] = None,
                 log: Optional[ChunkLog] = None):
        self._open_sink = open_sink
        #: The chunk's own log lines (all its tries).
        self.log = log if log is not None else ChunkLog()
        #: The stage's data checks for this try (None: the stage has none).
        self.checker = checker
        self._guard = threading.Lock()
        self.sink: Any = None
        self.given_up = False
        #: Seconds spent in each of :data:`~distetl.state.results.PHASES` by this try.
        self.phases = dict.fromkeys(PHASES, 0.0)
        self._mark = time.perf_counter()

    def restart_clock(self) -> None:
        """Start timing phases from now."""
        self._mark = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Charge the time since the last lap to ``phase``."""
        now = time.perf_counter()
        self.phases[phase] += now - self._mark
        self._mark = now

    def open(self) -> Any:
        with self._guard:
            self.check()
            self.sink = self._open_sink() if self._open_sink is not None else _MemorySink()
            return self.sink

    def check(self) -> None:
        if self.given_up:
            raise _Abandoned("the chunk was given up on (timed out or stopped); nothing was committed")

    def give_up(self) -> None:
        """Abort the sink (if any); idempotent, a no-op once committed."""
        with self._guard:
            self.given_up = True
            sink = self.sink
        if sink is not None:
            sink.abort()


class _MemorySink(io.BytesIO):
    """A streamed chunk kept in memory (no storage given): :func:`_produce` returns its bytes."""

    def abort(self) -> None:
        pass


def _call(func: Callable[..., Any], value: Any, chunk: Chunk) -> Any:
    return func(value, chunk) if arity(func) >= 2 else func(value)


def _produce(pipeline: Pipeline, chunk: Chunk, context: ChunkContext,
             record: Optional[Mapping[str, Any]] = None, attempt: Optional[_Attempt] = None) -> _Produced:
    """:func:`_produce_chunk` with the log lines of this thread kept in the attempt's
    chunk log (:mod:`distetl.engine.chunklog`)."""
    attempt = attempt or _Attempt()
    with capture(attempt.log):
        return _produce_chunk(pipeline, chunk, context, record, attempt)


def _produce_chunk(pipeline: Pipeline, chunk: Chunk, context: ChunkContext,
                   record: Optional[Mapping[str, Any]], attempt: "_Attempt") -> _Produced:
    """Extract, transform and serialise one chunk.

    One DataFrame or Arrow table (the fast path): cast to the schema, partition columns
    dropped, serialised to Parquet bytes in memory (``_Produced.data``).

    A stream (the extract or the transform returns an iterator, generator, list or
    ``RecordBatchReader`` of DataFrames, tables or record batches): each piece is cast
    and written as it comes with ``pyarrow.parquet.ParquetWriter`` to the sink of
    ``attempt`` (the temp file or multipart upload of the target), so only a few pieces
    are in memory at once; the file is complete but not committed (``_Produced.sink``).
    With a streaming extract, the transform is applied to each piece. See
    :func:`_write_stream`.

    ``record`` (see :mod:`distetl.state.records`; its row count and time are added here)
    goes into the file's key-value metadata, so a file and its provenance cannot
    disagree.
    """
    attempt.restart_clock()
    if arity(pipeline.extract) >= 2:
        frame = pipeline.extract(chunk, context)
    else:
        frame = pipeline.extract(chunk)
    attempt.lap("extract")
    per_piece = None
    if is_stream(frame):
        per_piece = pipeline.transform
    elif pipeline.transform is not None:
        frame = _call(pipeline.transform, frame, chunk)
        attempt.lap("transform")
    if is_stream(frame):
        return _write_stream(pipeline, chunk, context, record, frame, per_piece, attempt)
    table = to_table(frame, pipeline.schema, chunk.key)
    checker = attempt.checker
    if checker is not None:
        attempt.lap("write")
        checker.check(table)  # partition columns still in: checks see them
        checker.finish(table.num_rows, table)
        attempt.lap("check")
        checker.outcome.raise_if_failed(context.stage or pipeline.name, chunk.key)
    table = strip_partitions(table, pipeline.target, chunk, context.output)
    if record is not None:
        full = {**record, "rows": table.num_rows, "produced_at": _now()}
        if checker is not None and checker.outcome.warnings:
            full["checks"] = checker.outcome.warning_records()
        metadata = dict(table.schema.metadata or {})
        metadata[RECORD_KEY] = json.dumps(full, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata(metadata)
        context.record = full
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression=pipeline.compression)
    attempt.lap("write")
    return _Produced(rows=table.num_rows, data=buffer.getvalue())


def _write_stream(pipeline: Pipeline, chunk: Chunk, context: ChunkContext, record: Optional[Mapping[str, Any]],
                  stream: Any, transform: Optional[Callable[..., Any]], attempt: _Attempt) -> _Produced:
    """Write a streamed chunk piece by piece to ``attempt``'s sink; not committed.

    Each piece (after ``transform``, if given) is cast to the declared schema -- or,
    without one, to the first piece's schema, a later piece with other columns or an
    uncastable column failing the chunk -- its partition columns are checked and
    dropped, and it is written as a row group (or several) at once; empty pieces are
    skipped. No piece is kept: memory holds the piece being cast and written and the
    sink's buffer. The record (with the row count) goes into the footer's key-value
    metadata. On any failure (or once the attempt is given up on) the sink is aborted
    and the iterator closed.

    Raises:
        ChunkError: A piece is not a table, cannot be cast, or its partition column
            differs from the path (naming the chunk, the piece and the column); or the
            stream is empty and no schema is declared.
    """
    declared = pipeline.schema
    inferred = None
    writer = None
    rows = count = 0
    iterator = iter(stream)
    done = object()
    try:
        while True:
            attempt.lap("write")
            piece = next(iterator, done)  # the extract's generator computes the piece here
            attempt.lap("extract")
            if piece is done:
                break
            attempt.check()
            count += 1
            if transform is not None:
                piece = _call(transform, piece, chunk)
                attempt.lap("transform")
                if not is_piece(piece):
                    raise ChunkError(
                        "the transform to return one DataFrame or Arrow table per piece (the extract "
                        "yields pieces, and the transform is applied to each)",
                        type(piece).__name__,
                        "transform one piece at a time (def transform(df): ...), or do the "
                        "whole-stream work in the extract's generator",
                        where=f"chunk {chunk.key}, piece {count}",
                    )
            table = to_table(piece, declared or inferred, chunk.key, piece=count,
                             inferred=declared is None and inferred is not None)
            del piece
            if declared is None and inferred is None:
                inferred = table.schema
            if attempt.checker is not None:
                attempt.lap("write")
                attempt.checker.check(table)
                attempt.lap("check")
            table = _strip_piece(table, pipeline, chunk, context, count)
            if writer is None:
                writer = pq.ParquetWriter(attempt.open(), table.schema, compression=pipeline.compression)
            if table.num_rows:
                writer.write_table(table)
                rows += table.num_rows
            del table
        attempt.check()
        if writer is None:  # not one piece: an empty file of the declared schema
            if declared is None:
                raise ChunkError(
                    "at least one piece (DataFrame or Arrow table) from the chunk's iterator, or a "
                    "declared schema", "an empty iterator",
                    "yield at least one (possibly empty) DataFrame, or declare Pipeline(schema=...)",
                    where=f"chunk {chunk.key}",
                )
            table = _strip_piece(declared.empty_table(), pipeline, chunk, context, 0)
            writer = pq.ParquetWriter(attempt.open(), table.schema, compression=pipeline.compression)
        if attempt.checker is not None:  # every piece checked: fail before the commit
            attempt.lap("write")
            attempt.checker.finish(rows)
            attempt.lap("check")
            attempt.checker.outcome.raise_if_failed(context.stage or pipeline.name, chunk.key)
        if record is not None:
            full = {**record, "rows": rows, "produced_at": _now()}
            if attempt.checker is not None and attempt.checker.outcome.warnings:
                full["checks"] = attempt.checker.outcome.warning_records()
            writer.add_key_value_metadata({RECORD_KEY: json.dumps(full, sort_keys=True, default=str).encode()})
            context.record = full
        writer.close()
        attempt.lap("write")
        attempt.check()
    except BaseException:
        attempt.give_up()
        if writer is not None:
            try:
                writer.close()  # its footer goes to the aborted sink: refused, nothing written
            except Exception:  # noqa: BLE001
                pass
        close = getattr(iterator, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - keep the error that brought us here
                pass
        raise
    sink = attempt.sink
    if isinstance(sink, _MemorySink):
        return _Produced(rows=rows, data=sink.getvalue(), pieces=count)
    return _Produced(rows=rows, sink=sink, pieces=count)


def _strip_piece(table: Any, pipeline: Pipeline, chunk: Chunk, context: ChunkContext, piece: int) -> Any:
    """:func:`strip_partitions` for one piece, its errors naming the piece."""
    try:
        return strip_partitions(table, pipeline.target, chunk, context.output)
    except ChunkError as exc:
        where = f"chunk {chunk.key}, piece {piece}" if piece else f"chunk {chunk.key}"
        raise ChunkError(exc.expected, exc.got, exc.fix, where=where) from None


class ChunkTimeout(Exception):
    """A chunk ran past its time limit (``Pipeline(timeout_seconds=…)``)."""


class ChunkStopped(Exception):
    """The run was stopped while this chunk was computing; nothing was committed."""


#: How often a chunk computing in a thread of its own checks for a stop request.
STOP_POLL_SECONDS = 0.2


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _produce_watched(
    pipeline: Pipeline, chunk: Chunk, context: ChunkContext, timeout: Optional[float],
    should_stop: Optional[Callable[[], bool]], record: Optional[Mapping[str, Any]] = None,
    attempt: Optional[_Attempt] = None,
) -> _Produced:
    """:func:`_produce` in a daemon thread, given up on past ``timeout`` seconds or once
    ``should_stop()`` is true. A thread given up on is left running (Python cannot kill
    it) but can commit nothing: the commit happens in the caller. A streamed chunk's sink
    is aborted here when the thread is given up on (its temp file removed, its multipart
    upload aborted), and the thread stops at its next piece.

    Raises:
        ChunkTimeout: Past the time limit.
        ChunkStopped: On a stop request.
    """
    done = threading.Event()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = _produce(pipeline, chunk, context, record, attempt)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=target, name=f"distetl-chunk-{chunk.key}", daemon=True)
    started = time.monotonic()
    thread.start()
    while True:
        left = None if timeout is None else timeout - (time.monotonic() - started)
        step = STOP_POLL_SECONDS if should_stop is not None else left
        if left is not None and step is not None:
            step = min(step, max(left, 0.0))
        if done.wait(step):
            break
        if should_stop is not None and should_stop():
            if attempt is not None:
                attempt.give_up()
            raise ChunkStopped(f"chunk {chunk.key} was stopped with its run; nothing was committed")
        if timeout is not None and time.monotonic() - started >= timeout:
            if attempt is not None:
                attempt.give_up()
            raise ChunkTimeout(
                f"chunk {chunk.key} timed out after {timeout:g} s (its time limit); nothing was "
                f"committed. Fix: raise the limit with Pipeline(timeout_seconds=...) or "
                f"`distetl run --chunk-timeout SECONDS`, or make the chunk smaller"
            )
    if "error" in box:
        raise box["error"]
    return box["value"]


def run_chunk(
    pipeline: Pipeline,
    chunk: Chunk,
    path: str,
    storage: Storage,
    context: ChunkContext,
    force: bool = False,
    should_stop: Optional[Callable[[], bool]] = None,
    watch_stop: bool = False,
    record: Optional[Mapping[str, Any]] = None,
    previous_rows: Sequence[int] = (),
) -> ChunkResult:
    """Run one chunk end to end and commit its file. Retries per the pipeline.

    A stage's data checks (:mod:`distetl.engine.checking`) run on its output before the
    commit; ``previous_rows`` are the known row counts of the chunks before it, for its
    row-count rules. A chunk that fails an error-level check is not retried: it fails
    with an error starting ``check failed`` and its failing rows are quarantined.

    The commit is create-only on object stores that support it (a target another writer
    committed meanwhile is reported as skipped), unless ``force`` replaces it.

    With ``pipeline.timeout_seconds`` (or ``watch_stop``) the chunk computes in a
    thread of its own, watched from here: past its limit it fails with a timeout (and
    is retried like any failure); on a stop request (``should_stop()`` true) it ends as
    not run. ``should_stop`` is also asked just before the commit, so a chunk of a
    stopped run commits nothing after the stop.

    Never raises for a failure of the chunk itself: the error goes into the result.
    """
    attempts = 0
    timed_out = False
    start = time.perf_counter()
    wall = time.time()
    timeout = pipeline.timeout_seconds
    log = ChunkLog()
    while True:
        attempts += 1
        # A streamed chunk writes to the target's temp file / multipart upload; the try
        # that fails, times out or is stopped aborts it (nothing reaches the target).
        checks = getattr(pipeline, "checks", ())
        attempt = _Attempt(lambda: storage.open_atomic(path, create_only=not force),
                           Checker(checks, previous_rows) if checks else None, log)
        try:
            if timeout is None and not watch_stop:
                produced = _produce(pipeline, chunk, context, record, attempt)
            else:
                produced = _produce_watched(pipeline, chunk, context, timeout,
                                            should_stop if watch_stop else None, record, attempt)
            if should_stop is not None and should_stop():
                raise ChunkStopped(f"chunk {chunk.key} was stopped with its run before its commit")
            attempt.lap("write")
            committed = produced.commit(storage, path, create_only=not force)
            attempt.lap("commit")
            warned = None
            if attempt.checker is not None:
                if committed:  # rows quarantined by an earlier try go once the chunk commits
                    storage.delete(quarantine_path(context.output, context.pipeline or pipeline.name,
                                                   context.stage or pipeline.name, chunk.key))
                    if attempt.checker.outcome.warnings:
                        warned = json.dumps(attempt.checker.outcome.warning_records(), default=str)
            return ChunkResult(
                warnings=warned,
                key=chunk.key, path=path, status=WRITTEN if committed else SKIPPED, stage=context.stage,
                record=json.dumps(context.record, sort_keys=True, default=str)
                if committed and context.record is not None else None,
                rows=produced.rows if committed else 0, bytes=produced.size if committed else 0,
                seconds=time.perf_counter() - start, attempts=attempts, worker=_worker_name(),
                timed_out=timed_out, started=wall, ended=time.time(), log=log.text(),
                **{f"{phase}_s": seconds for phase, seconds in attempt.phases.items()},
            )
        except CheckFailed as exc:  # the data is wrong: no retry, the failing rows kept aside
            _quarantine(exc, storage, context, pipeline, chunk)
            return ChunkResult(
                key=chunk.key, path=path, status=FAILED, stage=context.stage, seconds=time.perf_counter() - start,
                attempts=attempts, worker=_worker_name(), error=str(exc), check_failed=True,
                started=wall, ended=time.time(), log=log.text(),
            )
        except ChunkStopped as exc:
            return ChunkResult(
                key=chunk.key, path=path, status=NOT_RUN, stage=context.stage, seconds=time.perf_counter() - start,
                attempts=attempts, worker=_worker_name(), error=str(exc), timed_out=timed_out,
                started=wall, ended=time.time(), log=log.text(),
            )
        except Exception as exc:  # noqa: BLE001 - one chunk's failure is data, not a crash
            timed_out = timed_out or isinstance(exc, ChunkTimeout)
            if attempts <= pipeline.retries and not (should_stop is not None and should_stop()):
                time.sleep(pipeline.retry_delay_seconds)
                continue
            return ChunkResult(
                key=chunk.key, path=path, status=FAILED, stage=context.stage, seconds=time.perf_counter() - start,
                attempts=attempts, worker=_worker_name(), error=f"{type(exc).__name__}: {exc}",
                traceback=None if isinstance(exc, ChunkTimeout) else
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:],
                timed_out=timed_out, started=wall, ended=time.time(), log=log.text(),
            )
        finally:
            attempt.give_up()  # a no-op once committed


def _quarantine(exc: CheckFailed, storage: Storage, context: ChunkContext, pipeline: Any, chunk: Chunk) -> None:
    """Write a chunk's failing rows under the stage's quarantine folder (the message
    then names the file); a failure to write them is named in the message too."""
    path = quarantine_path(context.output, context.pipeline or pipeline.name, context.stage or pipeline.name,
                           chunk.key)
    if exc.quarantined is None or not exc.quarantined.num_rows:
        storage.delete(path)  # no rows to keep: an older try's file would mislead
        return
    try:
        write_quarantine(storage, path, exc.quarantined)
        exc.path = path
    except Exception as error:  # noqa: BLE001 - the check's failure stays the chunk's error
        exc.path = f"nothing: writing {path} failed ({type(error).__name__}: {error})"


def run_batch(
    job: BatchJob,
    report: Optional[Callable[[ChunkResult], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    watch_stop: bool = False,
) -> list[ChunkResult]:
    """Run a batch of chunks in order; report each result as it lands.

    A chunk whose target exists when the batch reaches it is skipped unless ``force``:
    a batch rerun after a lost worker therefore never recomputes a committed chunk.
    Once ``should_stop()`` is true, the chunks not yet done end as not run (with
    ``watch_stop``, the chunk computing then too: see :func:`run_chunk`).
    """
    storage = Storage.for_url(job.output, job.storage_options)
    report = report or _default_reporter(job.topic)
    stage = job.pipeline.stage(job.stage) if job.stage else job.pipeline
    name = job.stage
    results = []
    #: This batch's chunks by path: their outcome and data version (a chain segment's
    #: links read their predecessors in the same batch).
    here = {path: chunk.key for chunk, path in job.chunks}
    outcome: dict[str, tuple[Any, ...]] = {}
    for n, (chunk, path) in enumerate(job.chunks):
        retries = storage.retries
        before = _unfinished_input(job, n, here, outcome)
        record = None
        if should_stop is not None and should_stop():
            result = ChunkResult(key=chunk.key, path=path, status=NOT_RUN, stage=name,
                                 error="not started: the run was stopped")
        elif before is not None:
            status, key = before
            result = ChunkResult(
                key=chunk.key, path=path, stage=name, worker=_worker_name(),
                status=NOT_RUN if status == NOT_RUN else BLOCKED,
                error=("not started: the run was stopped" if status == NOT_RUN else
                       f"blocked: its input {name}:{key} failed; rerun after fixing that chunk"))
        elif not job.force and storage.exists(path):
            result = ChunkResult(key=chunk.key, path=path, status=SKIPPED, stage=name, worker=_worker_name())
        else:
            inputs = InputFiles(job.inputs[n] if job.inputs is not None else ())
            context = ChunkContext(chunk=chunk, output=job.output, storage_options=job.storage_options,
                                   inputs=inputs, input_root=job.input_root, stage=name,
                                   input_roots=job.input_roots, sources=job.sources,
                                   pipeline=job.pipeline.name)
            sent = job.fingerprints[n] if job.fingerprints is not None else None
            record = _chunk_record(job.record, chunk, inputs, storage, sent, outcome) if job.record else None
            result = run_chunk(stage, chunk, path, storage, context, force=job.force,
                               should_stop=should_stop, watch_stop=watch_stop, record=record,
                               previous_rows=_previous_rows(job, n, outcome, storage))
        result.storage_retries = storage.retries - retries
        outcome[path] = (result.status, record["data_version"] if result.status == WRITTEN and record else None,
                         result.rows if result.status == WRITTEN else None)
        results.append(result)
        report(result)
    flush = getattr(report, "flush", None)
    if flush is not None:
        flush()
    return results


def _previous_rows(job: BatchJob, n: int, outcome: Mapping[str, tuple[Any, ...]], storage: Storage) -> list[int]:
    """The known row counts of chunk ``n``'s previous chunks: sent by the driver, or
    (``["?", path]``, a chunk of this run) of a chunk committed earlier in this batch, or
    from the footer of a chunk this run committed elsewhere meanwhile (one small read;
    a file of another run, about to be replaced, does not count)."""
    if job.previous_rows is None:
        return []
    out = []
    for value in job.previous_rows[n]:
        if isinstance(value, (list, tuple)):
            here = outcome.get(value[1])
            if here is not None:
                value = here[2]
            else:
                record = read_record(storage, value[1])
                value = record.rows if record is not None and record.run_id == job.record.get("run_id") else None
        if value is not None:
            out.append(int(value))
    return out


def _unfinished_input(job: BatchJob, n: int, here: Mapping[str, str],
                      outcome: Mapping[str, tuple[Any, ...]]) -> Optional[tuple[str, str]]:
    """The first input of chunk ``n`` that is an earlier chunk of this batch and was not
    committed (its status and key), or None."""
    if job.inputs is None or len(here) < 2:
        return None
    reads = job.inputs[n]
    paths = (p for group in reads.values() for p in group) if isinstance(reads, Mapping) else reads
    for path in paths:
        if path in here:
            status = outcome.get(path, (NOT_RUN, None))[0]
            if status not in (WRITTEN, SKIPPED):
                return status, here[path]
    return None


def _chunk_record(base: Mapping[str, Any], chunk: Chunk, inputs: Sequence[str], storage: Storage,
                  sent: Optional[Mapping[str, Any]] = None,
                  produced: Optional[Mapping[str, tuple[Any, ...]]] = None) -> dict[str, Any]:
    """A chunk's record before it runs: the stage's shared fields, the chunk's key and
    its inputs' fingerprints (a source file's stamp from the plan's listing; each
    upstream chunk's data version, sent by the driver, or read from the file's footer
    when not sent), and its data version."""
    fingerprints: dict[str, Any] = {}
    if sent is not None:
        for key, value in sent.items():
            if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == "?":
                known = (produced or {}).get(value[1], (None, None))[1]  # written earlier in this batch
                if known is not None:
                    value = known
                else:
                    upstream = read_record(storage, value[1])  # not known to the driver: from the footer
                    value = upstream.data_version if upstream is not None else None
            fingerprints[key] = value
    else:
        for url in inputs:
            upstream = read_record(storage, url)
            if upstream is not None:
                fingerprints[upstream.key] = upstream.data_version
            else:
                fingerprints[url] = None
    if "fingerprint" in chunk.fields:  # a file plan's chunk (of a root or a downstream stage)
        fingerprints["source"] = chunk.fields["fingerprint"]
    return {**base, "key": chunk.key, "inputs": fingerprints,
            "data_version": data_version(base.get("version"), fingerprints)}


_LOCAL_LISTENERS: dict[str, Callable[[ChunkResult], None]] = {}


def _default_reporter(topic: str) -> Callable[[ChunkResult], None]:
    """Per-chunk progress: a Dask worker event on a cluster, a callback in-process."""
    listener = _LOCAL_LISTENERS.get(topic)
    if listener is not None:
        return listener
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return lambda result: None

    return _WorkerEvents(worker, topic)


class _WorkerEvents:
    """Progress events of a batch on a Dask worker, aggregated: one event per
    :data:`EVENT_INTERVAL` seconds (and one at the batch's end) carrying every chunk
    that landed since, as ``{"chunks": [[stage, key, status, rows], ...]}``. A message
    per chunk would cost the scheduler and the driver a message each."""

    def __init__(self, worker: Any, topic: str):
        self.worker = worker
        self.topic = topic
        self.pending: list[list[Any]] = []
        self.last = time.monotonic()

    def __call__(self, result: ChunkResult) -> None:
        self.pending.append([result.stage, result.key, result.status, result.rows])
        if time.monotonic() - self.last >= EVENT_INTERVAL:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.worker.log_event(self.topic, {"chunks": self.pending})
            self.pending = []
        self.last = time.monotonic()


#: Seconds between a worker's aggregated progress events for a batch.
EVENT_INTERVAL = 0.25
