"""Plan and run a backfill: the library's entry points ``plan``, ``run`` and ``status``."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional

from rich.console import Console

from distetl.chunks import Chunk
from distetl.errors import ConfigError
from distetl.execute import FAILED, SKIPPED, WRITTEN, BatchJob, ChunkResult
from distetl.manifest import RunReport, now_iso
from distetl.partitions import check_schema
from distetl.pipeline import Pipeline
from distetl.plans import Plan
from distetl.prefect_api import quiet_prefect_env
from distetl.runners import RunnerSpec
from distetl.targets import Targets

__all__ = ["PlannedRun", "plan", "run", "status"]


@dataclass
class PlannedRun:
    """A rendered plan: every chunk with its target, and which are committed."""

    pipeline: Pipeline
    plan: Plan
    targets: Targets
    chunks: list[Chunk]
    paths: list[str]
    committed: set[str] = field(default_factory=set)
    seconds: float = 0.0

    @property
    def todo(self) -> list[tuple[Chunk, str]]:
        return [(c, p) for c, p in zip(self.chunks, self.paths) if p not in self.committed]

    @property
    def missing_keys(self) -> list[str]:
        return [c.key for c, p in zip(self.chunks, self.paths) if p not in self.committed]

    @property
    def committed_keys(self) -> list[str]:
        return [c.key for c, p in zip(self.chunks, self.paths) if p in self.committed]


def plan(
    pipeline: Pipeline,
    output: str,
    params: Optional[Mapping[str, Any]] = None,
    storage_options: Optional[Mapping[str, Any]] = None,
    force: bool = False,
) -> PlannedRun:
    """Render every chunk's target and find the committed ones, before any compute.

    Args:
        pipeline: The pipeline.
        output: Output root (``{output}`` in the template), local path or URL.
        params: Plan parameter overrides (``{"start": "2013-02-01"}``).
        storage_options: fsspec options for the output and file plans.
        force: Treat every chunk as missing.

    Raises:
        PlanError, ConfigError, StorageError: On anything knowable at plan time.
    """
    if not output:
        raise ConfigError("an output root", "nothing", "pass --output ./output or s3://bucket/prefix")
    started = time.perf_counter()
    the_plan = pipeline.plan.with_params(**(params or {}))
    targets = Targets(pipeline.target, output, storage_options)
    targets.storage.check_root(targets.output)
    chunks = the_plan.chunks(storage_options)
    paths = targets.render(chunks)
    check_schema(targets.template, pipeline.schema, chunks, paths, targets.output)
    committed = set() if force else targets.committed(paths)
    return PlannedRun(pipeline, the_plan, targets, chunks, paths, committed, time.perf_counter() - started)


def status(
    pipeline: Pipeline,
    output: str,
    params: Optional[Mapping[str, Any]] = None,
    storage_options: Optional[Mapping[str, Any]] = None,
) -> PlannedRun:
    """Which chunks are committed and which are missing (no compute, no cluster)."""
    return plan(pipeline, output, params, storage_options)


def run(
    pipeline: Pipeline,
    output: str,
    *,
    runner: str | RunnerSpec | None = None,
    workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    force: bool = False,
    dry_run: bool = False,
    params: Optional[Mapping[str, Any]] = None,
    storage_options: Optional[Mapping[str, Any]] = None,
    chunks_per_task: Optional[int] = None,
    console: Optional[Console] = None,
    progress: bool = False,
    record_timeout: float = 120.0,
) -> RunReport:
    """Run a backfill: plan, skip committed chunks, run the rest as one Prefect flow.

    Args:
        pipeline: The pipeline.
        output: Output root, local path or URL.
        runner: ``local`` (default), ``remote`` or ``sequential``, or a RunnerSpec.
        workers: Worker processes for ``local`` (default: one per core).
        scheduler: Remote scheduler address (implies ``remote``); also from
            ``DISTETL_SCHEDULER``.
        force: Recompute every chunk.
        dry_run: Plan only; nothing runs.
        params: Plan parameter overrides.
        storage_options: fsspec options (credentials allowed; never logged).
        chunks_per_task: Chunks per Prefect task; default about 8 tasks per worker.
        console: Where progress and messages go.
        progress: Show the live progress display.
        record_timeout: Seconds to wait for Prefect to record every task run.

    Returns:
        The run report; ``report.ok`` is False if any chunk failed.
    """
    quiet_prefect_env()
    console = console or Console(stderr=True, quiet=not progress)
    started = time.perf_counter()
    spec = runner if isinstance(runner, RunnerSpec) else RunnerSpec.from_options(runner, workers, scheduler)
    planned = plan(pipeline, output, params, storage_options, force)
    facts = spec.check(planned.pipeline if planned.todo and not dry_run else None)
    report = RunReport(
        pipeline=pipeline.name, output=planned.targets.output, runner=spec.describe(),
        run_id=uuid.uuid4().hex, started_at=now_iso(), plan=planned.plan.describe(),
        total=len(planned.chunks), to_run=len(planned.todo),
        already_committed=len(planned.committed), plan_seconds=planned.seconds,
        dry_run=dry_run, storage_options=dict(storage_options or {}),
    )
    if dry_run:
        report.seconds = time.perf_counter() - started
        return report
    if planned.todo:
        _execute(planned, spec, report, force, chunks_per_task, console, progress, record_timeout,
                 dict(storage_options or {}), facts.threads if facts else None)
    report.seconds = time.perf_counter() - started
    report.write_manifest(planned.targets.storage)
    return report


def _execute(
    planned: PlannedRun, spec: RunnerSpec, report: RunReport, force: bool,
    chunks_per_task: Optional[int], console: Console, show: bool, record_timeout: float,
    storage_options: dict[str, Any], cluster_threads: Optional[int] = None,
) -> None:
    from distetl.flow import run_flow, split_batches
    from distetl.prefect_api import prefect_api, wait_for_task_runs
    from distetl.progress import LiveProgress

    output = planned.targets.output
    workers = spec.n_workers if spec.kind == "local" else (1 if spec.kind == "sequential" else cluster_threads or 8)
    batches = split_batches(planned.todo, workers, chunks_per_task)
    jobs = [BatchJob(planned.pipeline, batch, output, storage_options, force) for batch in batches]
    landed: dict[str, dict[str, Any]] = {}
    live = LiveProgress(console, len(planned.chunks), len(planned.committed), enabled=show)

    def on_chunk(event: dict[str, Any]) -> None:
        landed.setdefault(event["key"], event)
        live.chunk(event)

    def on_result(result: ChunkResult) -> None:
        live.chunk({"key": result.key, "status": result.status, "rows": result.rows})

    with prefect_api() as api_url:
        report.prefect_api = api_url
        with live:
            outcome = run_flow(
                planned.pipeline, jobs, spec.task_runner(), on_result, on_chunk,
                flow_run_name=f"{planned.pipeline.name} · {len(planned.todo)} chunks",
            )
        report.task_runs = len(outcome.task_run_ids)
        report.task_runs_recorded = wait_for_task_runs(outcome.task_run_ids, timeout=record_timeout)
    report.flow_run_id = outcome.flow_run_id
    report.flow_state = outcome.state
    results = {r.key: r for r in outcome.results}
    for chunk, path in planned.todo:
        result = results.get(chunk.key)
        event = landed.get(chunk.key)
        if result is not None and result.status == SKIPPED and event and event.get("status") == WRITTEN:
            # Committed by this run in an attempt that was lost (its worker died after the
            # commit); the rerun of the batch found the file and skipped it.
            result = replace(result, status=WRITTEN, rows=int(event.get("rows") or 0))
        elif result is None or (result.status == FAILED and event and event.get("status") == WRITTEN):
            # The batch was lost (e.g. a worker died) after this chunk had committed.
            status = event["status"] if event else FAILED
            result = ChunkResult(
                key=chunk.key, path=path, status=status, rows=int((event or {}).get("rows") or 0),
                error=None if event else "no result came back (worker or task lost); rerun to redo it",
                task_run_id=result.task_run_id if result is not None else None,
            )
        if result.status == FAILED and not result.worker and planned.targets.storage.exists(path):
            # Lost with its batch (no worker reported it), yet committed: its progress
            # event died with the worker. Done, so not failed; not known to be ours.
            result = replace(result, status=SKIPPED, error=None)
        report.results.append(result)
