"""The benchmark variants, measured the same way on the same chunks.

Every variant runs the same per-chunk work: the pipeline's extract and transform, the
cast to its schema, the Parquet serialisation and the atomic commit of
:mod:`distetl.engine.execute` (the naive Prefect variant splits exactly that code into three
tasks; dask.dataframe writes through its own ``to_parquet``). What differs is only how the
chunks are orchestrated:

``loop``
    A plain Python loop in the driver: no Prefect, no Dask. Its wall time divided by
    the number of workers is the *ideal* parallel time.
``sequential``
    ``distetl.run(runner="sequential")``: the baseline, Prefect's
    ``ThreadPoolTaskRunner(max_workers=1)``.
``distetl``
    ``distetl.run(runner="local", workers=2)``: a LocalCluster of 2 worker processes × 1
    thread, started and closed by the run.
``raw_dask``
    ``Client.map`` of the per-chunk function (one task per chunk) on a LocalCluster of
    the same shape: the orchestration ceiling.
``naive_prefect``
    One ``DaskTaskRunner`` task each for extract, transform and load per chunk, the
    DataFrames passed between tasks as futures; a LocalCluster of the same shape.
``dask_dataframe``
    ``dd.from_map(extract) → map_partitions(transform) → to_parquet`` on a LocalCluster of
    the same shape.

Timing rule: ``wall_s`` is the whole call as its user makes it, including starting and
closing its own LocalCluster (the same ``LocalCluster`` arguments for every Dask
variant). ``cluster_s`` is the part of it spent inside ``LocalCluster(...)`` and its
``close()``, measured the same way for every variant by wrapping those two methods
(:class:`ClusterTimer`); 0 for variants without a cluster. ``phase_s = wall_s −
cluster_s`` is the same phase for every variant: planning, orchestration, compute and
commit, with the cluster already up. The ratio checks compare ``phase_s``; the table
shows both.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import psutil
import pyarrow.parquet as pq

import distetl
from distetl.model.chunks import Chunk
from distetl.engine.execute import FAILED, WRITTEN, BatchJob, ChunkContext, ChunkResult, run_batch
from distetl.model.pipeline import Pipeline, arity
from distetl.storage import Storage

__all__ = [
    "CLUSTER_KWARGS", "Measurement", "PeakRSS", "WORKERS", "Workload", "discard", "emit", "measure",
    "run_dask_dataframe", "run_distetl", "run_loop", "run_naive_prefect", "run_raw_dask",
    "run_record_bytes", "run_sequential", "run_variant", "settled_sqlite_bytes", "sqlite_bytes",
]

#: Worker processes of every Dask variant: one per core of the 2-core benchmark machine.
WORKERS = 2

#: The LocalCluster every Dask variant starts (distetl's local runner uses the same).
CLUSTER_KWARGS: dict[str, Any] = {
    "n_workers": WORKERS, "threads_per_worker": 1, "processes": True,
    "host": "127.0.0.1", "dashboard_address": ":0",
}


# -- measuring ------------------------------------------------------------------------


def _hwm_kb(pid: int | str) -> Optional[int]:
    """Peak resident set size (VmHWM) of a process in KiB, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores, from /proc/stat)."""
    try:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:9]]
    except OSError:
        return 0.0
    busy = sum(values) - values[3] - values[4]  # minus idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds of this process, its reaped children and its live children."""
    me = psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in me.children(recursive=True):
        try:
            c = child.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total


def _cpu_seconds_of(pids: Sequence[int]) -> float:
    """CPU seconds of these processes themselves (not their children; 0 for one gone)."""
    total = 0.0
    for pid in pids:
        try:
            total += sum(psutil.Process(pid).cpu_times()[:2])
        except psutil.Error:
            pass
    return total


#: Environment variable listing the benchmark session's service processes (its Prefect
#: server, and the session process itself, which hosts the S3 server of the S3
#: workloads), so each variant's process can tell their CPU (a cost of the variant that
#: talks to them) from other programs' (noise).
SERVICE_PIDS_ENV = "DISTETL_BENCH_SERVICE_PIDS"

#: Runs shorter than this get no CPU-share figures (a few ms of anything would dominate).
MIN_SHARE_SECONDS = 0.5


class PeakRSS:
    """Peak RSS of the driver and of every Dask worker process during a block, and the
    CPU the rest of the machine used meanwhile.

    The driver's high-water mark is reset on entry (``/proc/self/clear_refs``) and read
    on exit. Worker processes (children of the driver started by multiprocessing's
    spawn, as LocalCluster's nannies do) are polled for their own high-water mark
    (VmHWM, which only grows) every ``interval`` seconds while the block runs; the list
    of worker processes is refreshed every ``rescan`` seconds. Both are kept cheap on
    purpose: the monitor runs on the cores it measures (at 50 ms it took ~4 % of a
    core). Processes in ``exclude`` are ignored.

    Attributes:
        driver_mb: Peak RSS of this process during the block, MB.
        workers_mb: Peak RSS of each worker process seen, MB, largest first.
        other_cores: Average cores busy outside this process tree during the block:
            the session's services (the Prefect API server recording this run, the S3
            server) and other programs. None for a block under ``MIN_SHARE_SECONDS``.
        service_cores: Of ``other_cores``, the share of the session's service processes
            (``$DISTETL_BENCH_SERVICE_PIDS``): a cost of the variant that talks to them.
        foreign_cores: ``other_cores - service_cores``: other programs, i.e. noise. A
            benchmark on 2 cores is only as clean as this is low.
        driver_cpu_s: CPU seconds this process (the driver: orchestration, and for
            LocalCluster its scheduler and nannies) used during the block.
    """

    def __init__(self, exclude: Sequence[int] = (), interval: float = 0.25, rescan: float = 1.0):
        self.exclude = set(exclude)
        self.interval = interval
        self.rescan = rescan
        self.driver_mb = 0.0
        self.workers_mb: list[float] = []
        self.other_cores: Optional[float] = None
        self.service_cores: Optional[float] = None
        self.foreign_cores: Optional[float] = None
        self.driver_cpu_s = 0.0
        self._services = [int(p) for p in os.environ.get(SERVICE_PIDS_ENV, "").split(",") if p.strip()]
        self._peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _workers(self) -> list[int]:
        found = []
        for child in psutil.Process().children(recursive=True):
            if child.pid in self.exclude:
                continue
            try:
                if child.ppid() in self.exclude:
                    continue
                cmd = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if "spawn_main" in cmd and "resource_tracker" not in cmd:
                found.append(child.pid)
        return found

    def _poll(self) -> None:
        pids: list[int] = []
        scanned = 0.0
        while True:
            now = time.monotonic()
            if now - scanned >= self.rescan:
                pids, scanned = self._workers(), now
            for pid in pids:
                peak = _hwm_kb(pid)
                if peak is not None:
                    self._peaks[pid] = max(peak, self._peaks.get(pid, 0))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakRSS":
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            pass
        self._thread = threading.Thread(target=self._poll, name="peak-rss", daemon=True)
        self._service0 = _cpu_seconds_of(self._services)
        self._cpu0, self._busy0, self._t0 = _own_cpu_seconds(), _busy_seconds(), time.perf_counter()
        self._driver0 = sum(psutil.Process().cpu_times()[:2])
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        elapsed = time.perf_counter() - self._t0
        other = (_busy_seconds() - self._busy0) - (_own_cpu_seconds() - self._cpu0)
        service = _cpu_seconds_of(self._services) - self._service0
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if elapsed >= MIN_SHARE_SECONDS:
            self.other_cores = max(0.0, other / elapsed)
            self.service_cores = max(0.0, min(service, other) / elapsed)
            self.foreign_cores = max(0.0, (other - service) / elapsed)
        self.driver_cpu_s = sum(psutil.Process().cpu_times()[:2]) - self._driver0
        self.driver_mb = (_hwm_kb("self") or 0) / 1024
        self.workers_mb = sorted((kb / 1024 for kb in self._peaks.values()), reverse=True)

    def worker_count(self) -> int:
        """Worker processes seen during the block."""
        return len(self._peaks)


@dataclass
class Measurement:
    """One variant's run of one workload."""

    workload: str
    variant: str
    chunks: int
    wall_s: float
    rows: int = 0
    bytes: int = 0
    written: int = 0
    failed: int = 0
    driver_peak_mb: float = 0.0
    worker_peak_mb: list[float] = field(default_factory=list)
    cluster_s: float = 0.0
    sample_of: Optional[int] = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def phase_s(self) -> float:
        """Wall time without LocalCluster start and close."""
        return self.wall_s - (self.cluster_s or 0.0)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.phase_s if self.phase_s else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.phase_s if self.phase_s else 0.0

    @property
    def s_per_chunk(self) -> float:
        return self.phase_s / self.chunks if self.chunks else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(phase_s=round(self.phase_s, 4), rows_per_s=round(self.rows_per_s, 1),
                    mb_per_s=round(self.mb_per_s, 3), ms_per_chunk=round(self.s_per_chunk * 1000, 3))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Measurement":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Workload:
    """A pipeline and the chunks every variant runs.

    Attributes:
        name: Workload name in the report.
        pipeline: The pipeline (importable on workers: flows/ and benchmarks/ are on
            ``sys.path`` of the driver, which spawned workers inherit).
        root: Folder under which each variant gets its own fresh output root.
        params: Plan parameter overrides.
        storage_options: fsspec options for ``output`` URLs (S3).
        output_url: Base URL for outputs when not local (e.g. ``s3://bucket/bench``).
    """

    name: str
    pipeline: Pipeline
    root: Path
    params: Mapping[str, Any] = field(default_factory=dict)
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    output_url: Optional[str] = None
    last_output: Optional[str] = None

    def output(self, variant: str) -> str:
        """A fresh output root for a variant (remembered as ``last_output``)."""
        tag = f"{variant}-{uuid.uuid4().hex[:6]}"
        if self.output_url:
            self.last_output = f"{self.output_url.rstrip('/')}/{self.name}/{tag}"
            return self.last_output
        path = self.root / self.name / tag
        if path.exists():
            shutil.rmtree(path)
        self.last_output = str(path)
        return self.last_output

    def todo(self, output: str, limit: Optional[int] = None) -> list[tuple[Chunk, str]]:
        """Every chunk with its target under ``output`` (the first ``limit`` ones)."""
        planned = distetl.plan(self.pipeline, output, self.params, self.storage_options)
        items = planned.todo
        return items[:limit] if limit else items

    @property
    def total(self) -> int:
        return len(self.pipeline.plan.with_params(**dict(self.params)).chunks(self.storage_options))


def _from_results(m: Measurement, results: Sequence[ChunkResult]) -> Measurement:
    m.rows = sum(r.rows for r in results)
    m.bytes = sum(r.bytes for r in results)
    m.written = sum(1 for r in results if r.status == WRITTEN)
    m.failed = sum(1 for r in results if r.status == FAILED)
    m.notes["chunk_seconds"] = round(sum(r.seconds for r in results), 3)
    if m.failed:
        first = next(r for r in results if r.status == FAILED)
        m.notes["first_error"] = f"{first.key}: {first.error}"
    return m


def _from_report(m: Measurement, report: Any) -> Measurement:
    """Like :func:`_from_results`, from the report's counters: reading every chunk's
    result back would put one object per chunk into the driver being measured."""
    m.rows, m.bytes, m.written, m.failed = report.rows, report.bytes, report.written, report.failed_count
    m.notes["chunk_seconds"] = round(report.ledger.chunk_seconds, 3)
    if m.failed:
        first = report.failed[0]
        m.notes["first_error"] = f"{first.key}: {first.error}"
    return m


class ClusterTimer:
    """Seconds spent inside ``LocalCluster.__init__`` (start) and the first
    ``close()`` of each cluster, in this process, while the block runs."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.clusters = 0
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> "ClusterTimer":
        from distributed import LocalCluster
        from distributed.deploy.spec import SpecCluster

        timer = self
        closed: set[int] = set()
        init, close = LocalCluster.__init__, SpecCluster.close

        @functools.wraps(init)
        def timed_init(cluster: Any, *args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            try:
                init(cluster, *args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - start
                timer.clusters += 1

        @functools.wraps(close)
        def timed_close(cluster: Any, *args: Any, **kwargs: Any) -> Any:
            if id(cluster) in closed or not isinstance(cluster, LocalCluster):
                return close(cluster, *args, **kwargs)
            closed.add(id(cluster))
            start = time.perf_counter()
            try:
                return close(cluster, *args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - start

        LocalCluster.__init__ = timed_init
        SpecCluster.close = timed_close
        self._undo = [lambda: setattr(LocalCluster, "__init__", init), lambda: setattr(SpecCluster, "close", close)]
        return self

    def __exit__(self, *exc: Any) -> None:
        for undo in self._undo:
            undo()


def _measure(exclude: Sequence[int], body: Callable[[], Measurement]) -> Measurement:
    with PeakRSS(exclude) as rss, ClusterTimer() as clusters:
        m = body()
    m.driver_peak_mb = round(rss.driver_mb, 1)
    m.worker_peak_mb = [round(x, 1) for x in rss.workers_mb]
    m.cluster_s = round(clusters.seconds, 4)
    m.notes["clusters_started"] = clusters.clusters
    for key in ("other_cores", "service_cores", "foreign_cores"):
        value = getattr(rss, key)
        m.notes[key] = None if value is None else round(value, 3)
    m.notes["driver_cpu_s"] = round(rss.driver_cpu_s, 2)
    return m


# -- the per-chunk function (shared by the loop and raw Dask) --------------------------


def run_one(pipeline: Pipeline, output: str, storage_options: Mapping[str, Any],
            item: tuple[Chunk, str]) -> ChunkResult:
    """One chunk through distetl's own chunk code (the code distetl's workers run)."""
    job = BatchJob(pipeline, [item], output, dict(storage_options))
    return run_batch(job, report=lambda result: None)[0]


# -- variants ----------------------------------------------------------------------------


def run_loop(w: Workload, exclude: Sequence[int] = (), limit: Optional[int] = None) -> Measurement:
    """A plain Python loop over the chunks in this process (the first ``limit`` ones,
    ``sample_of`` saying of how many, where all would take too long)."""
    output = w.output("loop")
    items = w.todo(output)
    total = len(items)
    items = items[:limit] if limit else items

    def body() -> Measurement:
        start = time.perf_counter()
        results = [run_one(w.pipeline, output, w.storage_options, item) for item in items]
        return _from_results(Measurement(w.name, "loop", len(items), time.perf_counter() - start,
                                         sample_of=total if len(items) < total else None), results)

    return _measure(exclude, body)


def _distetl(w: Workload, variant: str, runner: str, exclude: Sequence[int],
             output: Optional[str] = None, **kwargs: Any) -> tuple[Measurement, Any]:
    output = output or w.output(variant)
    holder: dict[str, Any] = {}

    def body() -> Measurement:
        start = time.perf_counter()
        report = distetl.run(w.pipeline, output, runner=runner, params=w.params,
                             storage_options=dict(w.storage_options), **kwargs)
        m = Measurement(w.name, variant, report.total, time.perf_counter() - start)
        holder["report"] = report
        m.notes.update(task_runs=report.task_runs, task_runs_recorded=report.task_runs_recorded,
                       skipped=report.skipped, output=output, plan_seconds=round(report.plan_seconds, 4),
                       run_seconds=round(report.seconds, 4), to_run=report.to_run)
        if report.dry_run:
            m.notes["dry_run"] = True
        if len(w.pipeline.all_stages) > 1:
            from stages_workload import stage_breakdown

            m.notes.update(stage_summary=report.stage_summary(), stages=stage_breakdown(report.results))
        return _from_report(m, report)

    m = _measure(exclude, body)
    return m, holder["report"]


def run_sequential(w: Workload, exclude: Sequence[int] = ()) -> Measurement:
    """distetl's sequential runner: the baseline."""
    return _distetl(w, "sequential", "sequential", exclude)[0]


def run_distetl(w: Workload, exclude: Sequence[int] = (), output: Optional[str] = None,
                variant: str = "distetl", **kwargs: Any) -> tuple[Measurement, Any]:
    """distetl on its local runner, one worker process per core; returns the report too."""
    return _distetl(w, variant, "local", exclude, output=output, workers=WORKERS, **kwargs)


def run_raw_dask(w: Workload, exclude: Sequence[int] = (), limit: Optional[int] = None) -> Measurement:
    """``Client.map`` of the per-chunk function, one task per chunk (the first ``limit``
    chunks, ``sample_of`` saying of how many, where all would take too long)."""
    from distributed import Client, LocalCluster

    output = w.output("raw_dask")
    items = w.todo(output)
    total = len(items)
    items = items[:limit] if limit else items

    def body() -> Measurement:
        start = time.perf_counter()
        with LocalCluster(**CLUSTER_KWARGS) as cluster, Client(cluster) as client:
            func = functools.partial(run_one, w.pipeline, output, dict(w.storage_options))
            futures = client.map(func, items, pure=False)
            results = client.gather(futures)
            del futures
        m = Measurement(w.name, "raw_dask", len(items), time.perf_counter() - start,
                        sample_of=total if len(items) < total else None)
        return _from_results(m, results)

    return _measure(exclude, body)


def run_naive_prefect(w: Workload, exclude: Sequence[int] = (), limit: Optional[int] = None) -> Measurement:
    """Three DaskTaskRunner tasks per chunk on a LocalCluster of the same shape (started
    here and handed to the task runner by address). Runs the first ``limit`` chunks
    (``sample_of`` says of how many) where all would take too long.
    """
    from distributed import LocalCluster
    from prefect import Flow
    from prefect_dask import DaskTaskRunner

    import naive

    output = w.output("naive_prefect")
    items = w.todo(output)
    total = len(items)
    items = items[:limit] if limit else items
    key = uuid.uuid4().hex
    naive.REGISTRY[key] = (w.pipeline, items, output, dict(w.storage_options))

    def body() -> Measurement:
        start = time.perf_counter()
        with LocalCluster(**CLUSTER_KWARGS) as cluster:
            flow = Flow(fn=naive.naive_body, name=f"naive-{w.name}", validate_parameters=False,
                        task_runner=DaskTaskRunner(address=cluster.scheduler_address),
                        persist_result=False, log_prints=False)
            results = flow(run_key=key)
        m = Measurement(w.name, "naive_prefect", len(items), time.perf_counter() - start,
                        sample_of=total if len(items) < total else None)
        return _from_results(m, results)

    try:
        return _measure(exclude, body)
    finally:
        naive.REGISTRY.pop(key, None)


# -- dask.dataframe ------------------------------------------------------------------------


def _dd_extract(pipeline: Pipeline, output: str, storage_options: dict, chunk: Chunk) -> Any:
    if arity(pipeline.extract) >= 2:
        return pipeline.extract(chunk, ChunkContext(chunk, output, storage_options))
    return pipeline.extract(chunk)


def _dd_transform(frame: Any, pipeline: Pipeline, chunks: list[Chunk], partition_info: Any = None) -> Any:
    if pipeline.transform is None:
        return frame
    chunk = chunks[partition_info["number"]] if partition_info else chunks[0]
    if arity(pipeline.transform) >= 2:
        return pipeline.transform(frame, chunk)
    return pipeline.transform(frame)


def run_dask_dataframe(w: Workload, exclude: Sequence[int] = (), limit: Optional[int] = None) -> Measurement:
    """``dd.from_map(extract)`` → ``map_partitions(transform)`` → ``to_parquet`` (one
    ``part.N.parquet`` per chunk in one folder, cast to the pipeline's schema).

    Like a user who knows their data, it gives dask the metadata: the first chunk is
    extracted on the driver and its first rows transformed there (part of the wall
    time), so dask infers nothing from fake data. Runs the first ``limit`` chunks where
    all would take too long.
    """
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    output = w.output("dask_dataframe")
    items = w.todo(output)
    total = len(items)
    items = items[:limit] if limit else items
    chunks = [chunk for chunk, _ in items]
    target = f"{output}/data"
    options = dict(w.storage_options)

    def body() -> Measurement:
        start = time.perf_counter()
        with LocalCluster(**CLUSTER_KWARGS) as cluster, Client(cluster):
            sample = _dd_extract(w.pipeline, output, options, chunks[0])
            out_meta = _dd_transform(sample.head(50), w.pipeline, chunks).iloc[:0]
            frame = dd.from_map(functools.partial(_dd_extract, w.pipeline, output, options), chunks,
                                meta=sample.iloc[:0], enforce_metadata=False)
            frame = frame.map_partitions(_dd_transform, w.pipeline, chunks, meta=out_meta,
                                         enforce_metadata=False, align_dataframes=False)
            frame.to_parquet(target, write_index=False, compression=w.pipeline.compression,
                             schema=w.pipeline.schema or "infer", storage_options=options or None)
        m = Measurement(w.name, "dask_dataframe", len(items), time.perf_counter() - start,
                        sample_of=total if len(items) < total else None)
        storage = Storage.for_url(target, options)
        files = [f for f in storage.list_files(target) if f.endswith(".parquet")]
        m.written = len(files)
        for f in files:
            with storage.open(f) as handle:
                m.rows += pq.ParquetFile(handle).metadata.num_rows
            m.bytes += storage.fs.size(storage.strip(f))
        return m

    return _measure(exclude, body)


# -- one variant per process -----------------------------------------------------------

RUNNER = Path(__file__).resolve().parent / "runvariant.py"
_RESULT = "BENCH-RESULT "
#: The variants :func:`run_variant` knows.
KNOWN_VARIANTS = ("loop", "sequential", "distetl", "raw_dask", "naive_prefect", "dask_dataframe", "distetl_by_stage",
                 "luigi", "luigi_chain")


def run_variant(w: Workload, spec: Mapping[str, Any]) -> Measurement:
    """Run the variant ``spec["variant"]`` of a workload in this process.

    Spec keys besides ``variant``: ``limit`` (first chunks only), ``output`` (an existing
    output root, for reruns), ``label`` (the variant's name in the report),
    ``chunks_per_task``, ``dry_run`` (distetl: plan only, nothing runs).

    Raises:
        ValueError: If the variant is not one of the known ones.
    """
    variant = spec["variant"]
    if variant == "loop":
        m = run_loop(w, limit=spec.get("limit"))
    elif variant == "sequential":
        m = run_sequential(w)
    elif variant == "distetl":
        extra = {"chunks_per_task": spec["chunks_per_task"]} if spec.get("chunks_per_task") else {}
        if spec.get("dry_run"):
            extra["dry_run"] = True
        m, _ = run_distetl(w, output=spec.get("output"), **extra)
    elif variant == "raw_dask":
        m = run_raw_dask(w, limit=spec.get("limit"))
    elif variant == "naive_prefect":
        m = run_naive_prefect(w, limit=spec.get("limit"))
    elif variant == "dask_dataframe":
        m = run_dask_dataframe(w, limit=spec.get("limit"))
    elif variant == "distetl_by_stage":
        from stages_workload import run_by_stage

        m = run_by_stage(w)
    elif variant == "luigi":
        from luigi_stages import run_luigi

        m = run_luigi(w, days=spec["workload"]["days"])
    elif variant == "luigi_chain":
        from chain_workload import run_luigi_chain

        m = run_luigi_chain(w, days=spec["workload"]["days"], workers=spec.get("workers", 1))
    else:
        raise ValueError(f"Expected one of the variants {', '.join(KNOWN_VARIANTS)}; got {variant!r}. "
                         "Fix: use one of those in the spec.")
    if spec.get("label"):
        m.variant = spec["label"]
    m.notes["output"] = spec.get("output") or w.last_output
    return m


def measure(workload: Mapping[str, Any], variant: str, timeout: float = 3600, **options: Any) -> Measurement:
    """Run one variant in a fresh Python process and return its measurement.

    A fresh process per variant gives every variant the same start: a driver with
    nothing cached (flows cache their source data per process) and a clean peak RSS.
    Process start and the imports of the variant's libraries (``runvariant.PRELOAD``)
    are not timed; everything the variant does is.

    Raises:
        RuntimeError: If the process printed no result (its output tail is included).
    """
    spec = {"workload": dict(workload), "variant": variant, **options}
    proc = subprocess.run([sys.executable, str(RUNNER), json.dumps(spec)], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ))
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT):
            return Measurement.from_dict(json.loads(line[len(_RESULT):]))
    tail = (proc.stdout[-2000:] + "\n" + proc.stderr[-4000:]).strip()
    raise RuntimeError(f"{variant} of {workload.get('name')} printed no result (exit {proc.returncode}):\n{tail}")


def run_record_bytes(output: str, pipeline: str) -> dict[str, int]:
    """Bytes of a pipeline's run records under a local output root: every file under
    ``{output}/_distetl/{pipeline}/runs/`` (each run's JSON manifest and per-chunk
    Parquet file) plus ``latest.json``.

    Returns:
        ``{"runs": bytes, "latest": bytes, "files": count, "total": bytes}``.

    Raises:
        FileNotFoundError: If the output has no ``latest.json`` for the pipeline.
    """
    folder = Path(output) / "_distetl" / pipeline
    latest = folder / "latest.json"
    if not latest.is_file():
        raise FileNotFoundError(f"Expected the run records of {pipeline!r} under {folder}; got no latest.json. "
                                "Fix: measure a run that wrote its manifest (not a dry run) into that output.")
    runs = [p for p in (folder / "runs").rglob("*") if p.is_file()]
    sizes = {"runs": sum(p.stat().st_size for p in runs), "latest": latest.stat().st_size, "files": len(runs)}
    sizes["total"] = sizes["runs"] + sizes["latest"]
    return sizes


def sqlite_bytes(home: Path) -> dict[str, int]:
    """Bytes of the SQLite database files under a Prefect home (``*.db`` and their
    ``-wal``, ``-shm`` and ``-journal`` files), per file name and in ``total``.

    Raises:
        FileNotFoundError: If ``home`` holds no ``*.db`` file.
    """
    files = sorted(p for p in Path(home).glob("*.db*") if p.is_file())
    if not any(p.suffix == ".db" for p in files):
        raise FileNotFoundError(f"Expected a Prefect SQLite database (*.db) under {home}; got "
                                f"{[p.name for p in files] or 'no database file'}. Fix: pass the PREFECT_HOME of the "
                                "server that records the runs (the session's prefect_server fixture's home).")
    sizes = {p.name: p.stat().st_size for p in files}
    sizes["total"] = sum(sizes.values())
    return sizes


def settled_sqlite_bytes(home: Path, quiet_s: float = 6.0, limit_s: float = 30.0) -> dict[str, int]:
    """:func:`sqlite_bytes` once the total has not changed for ``quiet_s`` seconds (the
    server persists events in batches a few seconds after a run), or after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    sizes, since = sqlite_bytes(home), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        time.sleep(0.5)
        now = sqlite_bytes(home)
        if now["total"] != sizes["total"]:
            sizes, since = now, time.monotonic()
    return sizes


def discard(m: Measurement) -> None:
    """Delete a local variant's output (S3 outputs go with the server)."""
    output = m.notes.get("output")
    if output and "://" not in output and os.path.isdir(output):
        shutil.rmtree(output, ignore_errors=True)


def emit(m: Measurement) -> None:
    """Print a measurement for :func:`measure` to read."""
    print(_RESULT + json.dumps(m.to_dict(), default=str), flush=True)
