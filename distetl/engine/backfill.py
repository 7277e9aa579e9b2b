"""Plan and run a backfill: the library's entry points ``plan``, ``run`` and ``status``."""

from __future__ import annotations

import contextlib
import signal
import json
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from rich.console import Console

from distetl.model import dates
from distetl.model.checks import row_rules
from distetl.model.chunks import Chunk
from distetl.model.inputs import fingerprint_key, source_key
from distetl.errors import ConfigError
from distetl.engine.execute import BLOCKED, FAILED, NOT_RUN, SKIPPED, WRITTEN, BatchJob, ChunkResult
from distetl.state.lease import RunLease, TakenOver, parse_time
from distetl.state.leftovers import remove_leftovers
from distetl.model.chunkseq import IndexSet
from distetl.state.ledger import RunLedger
from distetl.storage import _hide_userinfo as _hide
from distetl.storage.listing import Listing
from distetl.state.manifest import RunReport, now_iso
from distetl.model.partitions import check_schema, dataset_root
from distetl.model.pipeline import Pipeline
from distetl.model.plans import Plan
from distetl.engine.prefect_api import quiet_prefect_env
from distetl.engine.runners import EarlyCluster, RunnerSpec, worker_paths
from distetl.engine.stopping import RunInterrupted, StopSignal
from distetl.model.graph import StageGraph, StagePlan, check_distinct_paths, decide
from distetl.state.records import ChunkRecord, StageIndex, StageRecords
from distetl.state.staleness import CAUSES, Acceptance, StaleChunk, classify
from distetl.model.mappings import UpstreamKeys
from distetl.model.targets import Targets
from distetl.engine.linking import check_chain_start, derived_chunks, in_stage, resolve_links, source_stamps

__all__ = ["PlannedRun", "accept", "plan", "run", "status"]


@dataclass
class PlannedRun:
    """A rendered plan: every selected stage's chunks with their targets, which are
    committed, and which must run.

    Attributes:
        pipeline: The pipeline.
        stages: The selected stages' plans, upstream first.
        need: Stage name → indexes of the chunks that run.
        output: The output root, normalised.
        seconds: Planning time.
    """

    pipeline: Pipeline
    stages: list[StagePlan]
    need: dict[str, list[int]]
    output: str
    seconds: float = 0.0
    #: Stage → committed chunk index → why it is stale (see :mod:`distetl.state.staleness`).
    stale: dict[str, dict[int, StaleChunk]] = field(default_factory=dict)
    #: Stage → its committed chunks' records (``.get(i)``: None when the file has
    #: none), joined from the index as columns (see :class:`distetl.state.records.StageRecords`).
    records: dict[str, StageRecords] = field(default_factory=dict)
    #: Stage → its current code version.
    versions: dict[str, str] = field(default_factory=dict)
    #: Footers read because the index did not cover the file (0 when it did).
    footers_read: int = 0
    #: Stage → chunks whose target is not a readable Parquet file (truncated, or another
    #: tool's): counted as missing; a run moves each aside before redoing it.
    corrupt: dict[str, list[int]] = field(default_factory=dict)
    #: Stage → its plan as used: parameters applied, relative dates resolved.
    used_plans: dict[str, Plan] = field(default_factory=dict)

    # -- the first (for a one-stage pipeline, the only) stage ----------------------------

    @property
    def targets(self) -> Targets:
        """The first stage's targets (every stage shares the output root and storage)."""
        return self.stages[0].targets

    @property
    def plan(self) -> Plan:
        """The first root stage's plan, as used (parameters applied, dates resolved)."""
        return next(self.used_plans.get(p.name, p.stage.plan) for p in self.stages if p.stage.plan is not None)

    @property
    def chunks(self) -> list[Chunk]:
        return [c for p in self.stages for c in p.chunks]

    @property
    def paths(self) -> list[str]:
        return [x for p in self.stages for x in p.paths]

    @property
    def committed(self) -> set[str]:
        """Target paths that exist (every selected stage)."""
        return {p.paths[i] for p in self.stages for i in p.committed}

    @property
    def total(self) -> int:
        return sum(len(p.chunks) for p in self.stages)

    @property
    def to_run(self) -> int:
        return sum(len(v) for v in self.need.values())

    @property
    def todo(self) -> list[tuple[Chunk, str]]:
        """Every chunk that runs with its target, upstream stages first."""
        return [(p.chunks[i], p.paths[i]) for p in self.stages for i in self.need[p.name]]

    @property
    def missing_keys(self) -> list[str]:
        return [c.key for p in self.stages for i, c in enumerate(p.chunks) if i not in p.committed]

    @property
    def committed_keys(self) -> list[str]:
        return [p.chunks[i].key for p in self.stages for i in sorted(p.committed)]

    def stale_counts(self) -> dict[str, dict[str, int]]:
        """Per stage, stale chunks by cause."""
        out = {}
        for p in self.stages:
            causes = {c: 0 for c in CAUSES}
            for why in self.stale.get(p.name, {}).values():
                causes[why.cause] += 1
            out[p.name] = causes
        return out

    def check_warnings(self) -> dict[str, dict[str, Any]]:
        """Per stage with data checks: its committed chunks that carry warnings in their
        records (``chunks``) and failing rows per check (``by_check``, ``check`` or
        ``check on column``), read from the stage's index (no data file opened)."""
        out: dict[str, dict[str, Any]] = {}
        for p in self.stages:
            if not getattr(p.stage, "checks", ()):
                continue
            found: dict[str, Any] = {"chunks": 0, "by_check": {}}
            out[p.name] = found
            table = StageIndex(p.targets.storage, self.output, self.pipeline.name, p.name).table(["path", "record"])
            if table is None:
                continue
            committed = {p.paths[i] for i in p.committed}
            for path, text in zip(table.column("path").to_pylist(), table.column("record").to_pylist()):
                if not text or '"checks": [{' not in text or path not in committed:
                    continue
                found["chunks"] += 1
                for w in json.loads(text).get("checks") or ():
                    name = w.get("check") + (f" on column {w['column']}" if w.get("column") else "")
                    found["by_check"][name] = found["by_check"].get(name, 0) + int(w.get("rows") or 0)
        return out

    def stage_counts(self) -> list[dict[str, Any]]:
        """Per stage: total, committed, missing, to run, and committed chunks that run
        again (``--force``) -- for ``--dry-run``, ``status`` and the report."""
        out = []
        for p in self.stages:
            need = self.need[p.name]
            again = sum(1 for i in need if i in p.committed)
            stale = len(self.stale.get(p.name, {}))
            out.append({"name": p.name, "total": len(p.chunks), "committed": len(p.committed),
                        "fresh": len(p.committed) - stale, "stale": stale,
                        "missing": len(p.chunks) - len(p.committed), "to_run": len(need),
                        "committed_to_run": again})
        return out


def plan(
    pipeline: Pipeline,
    output: str,
    params: Optional[Mapping[str, Any]] = None,
    storage_options: Optional[Mapping[str, Any]] = None,
    force: bool = False,
    stages: Optional[Sequence[str]] = None,
    stale: bool = False,
) -> PlannedRun:
    """Render every chunk's target and find the committed ones, before any compute.

    One listing per stage finds its committed chunks (no request per chunk); their
    records come from the stage's index where the listing shows the file unchanged, and
    from the files' footers otherwise. Then :func:`distetl.model.graph.decide` says what runs.

    Args:
        pipeline: The pipeline.
        output: Output root (``{output}`` in the template), local path or URL.
        params: Plan parameter overrides (``{"start": "2013-02-01"}``), applied to every
            stage whose plan has that parameter.
        storage_options: fsspec options for the output and file plans.
        force: Run every chunk of the selected stages, committed or not.
        stages: Run only these stages and what they need (default: all).
        stale: Run stale chunks too, and everything downstream of them.

    Raises:
        PlanError, ConfigError, StorageError: On anything knowable at plan time.
    """
    if not output:
        raise ConfigError("an output root", "nothing", "pass --output ./output or s3://bucket/prefix")
    started = time.perf_counter()
    graph = StageGraph(pipeline.all_stages)
    names = graph.select(stages) if stages else graph.names
    params = dict(params or {})
    _check_params(pipeline, params)
    plans: dict[str, StagePlan] = {}
    keys_of: dict[str, UpstreamKeys] = {}
    used: dict[str, Plan] = {}
    today = dates.current()  # once per plan: every stage resolves today-3d to the same day
    for name in names:
        stage = graph.by_name[name]
        targets = Targets(stage.target, output, storage_options)
        if not plans:
            targets.storage.check_root(targets.output)
        with in_stage(name):
            if stage.plan is not None:
                accepted = {k: v for k, v in params.items() if k in stage.plan.param_names()}
                used[name] = stage.plan.with_params(**accepted).resolve_dates(today)
                chunks = used[name].chunks(storage_options)
                if accepted and any(i.upstream == name for i in stage.all_inputs):
                    check_chain_start(stage, stage.plan.resolve_dates(today).chunks(storage_options), chunks,
                                       accepted)
            else:
                chunks = derived_chunks(stage, plans)
            inputs = resolve_links(stage, chunks, plans, keys_of)
            paths, committed = targets.plan(chunks)
            check_schema(targets.template, stage.schema, chunks, paths, targets.output)
        plans[name] = StagePlan(stage, chunks, paths, committed, inputs, targets,
                                sources=source_stamps(stage, storage_options))
    ordered = list(plans.values())
    check_distinct_paths(ordered)
    planned = PlannedRun(pipeline, ordered, {}, ordered[0].targets.output, used_plans=used)
    _find_stale(planned)
    extra = {name: set(why) for name, why in planned.stale.items()} if stale else None
    planned.need = decide(ordered, force, extra)
    planned.seconds = time.perf_counter() - started
    return planned


def _find_stale(planned: PlannedRun) -> None:
    """Read every committed chunk's record (index first, footers for the rest) and
    classify the stale ones."""
    storage = planned.targets.storage
    for p in planned.stages:
        planned.versions[p.name] = p.stage.code_version()
        index = StageIndex(storage, planned.output, planned.pipeline.name, p.name)
        records = StageRecords.join(storage, p.targets, p.committed, index, p.paths)
        planned.footers_read += len(records.footers) + len(records.corrupt)
        planned.records[p.name] = records
        for i in records.corrupt:  # not a Parquet file at the target: not committed
            p.committed.discard(i)
        if records.corrupt:
            planned.corrupt[p.name] = list(records.corrupt)
    accepted = Acceptance.from_json(storage.read_bytes(acceptance_path(planned.output, planned.pipeline.name)))
    planned.stale = classify(planned.stages, planned.records, planned.versions, accepted)


def accept(
    pipeline: Pipeline,
    output: str,
    params: Optional[Mapping[str, Any]] = None,
    storage_options: Optional[Mapping[str, Any]] = None,
    stages: Optional[Sequence[str]] = None,
    keys: Optional[Sequence[str]] = None,
) -> dict[str, int]:
    """Accept the current code of stages for their code-stale chunks, without
    recomputing them (a refactor known not to change outputs).

    Records "recorded version V is accepted as the current version" per stage (and per
    chunk with ``keys``) in ``{output}/_distetl/{pipeline}/accepted.json``, in one
    atomic write; the data files and their records are left as they are. Chunks stale
    for another cause (a changed input) cannot be accepted: they must be redone.

    Args:
        pipeline: The pipeline.
        output: The output root.
        params: Plan parameter overrides.
        storage_options: fsspec options.
        stages: Only these stages (default: every stage).
        keys: Only these chunk keys.

    Returns:
        Stage → chunks accepted.

    Raises:
        ConfigError: For a key that is not code-stale in any selected stage.
    """
    planned = plan(pipeline, output, params, storage_options, stages=stages)
    wanted = set(stages or [p.name for p in planned.stages])
    storage = planned.targets.storage
    path = acceptance_path(planned.output, pipeline.name)
    acceptance = Acceptance.from_json(storage.read_bytes(path))
    counts: dict[str, int] = {}
    matched: set[str] = set()
    for p in planned.stages:
        if p.name not in wanted:
            continue
        by_version: dict[str, list[str]] = {}
        for i, why in planned.stale.get(p.name, {}).items():
            key = p.chunks[i].key
            if why.cause != "code" or (keys and key not in keys):
                continue
            record = planned.records[p.name][i]
            by_version.setdefault(record.version, []).append(key)
            matched.add(key)
        for version, chosen in by_version.items():
            acceptance.add(p.name, version, planned.versions[p.name], chosen if keys else None)
            counts[p.name] = counts.get(p.name, 0) + len(chosen)
    for key in keys or ():
        if key not in matched:
            raise ConfigError(
                f"a chunk that is stale because of its code in stage(s) {', '.join(sorted(wanted))}",
                repr(key), "check `distetl status --explain KEY`: only code changes can be accepted; "
                "a chunk stale for its input must be redone with --stale",
            )
    if counts:
        storage.write_atomic(path, acceptance.to_json().encode())
    return counts


def acceptance_path(output: str, pipeline: str) -> str:
    """Where ``distetl accept`` keeps the accepted code-version changes."""
    return f"{output.rstrip('/')}/_distetl/{pipeline}/accepted.json"


def _check_params(pipeline: Pipeline, params: Mapping[str, Any]) -> None:
    """Every plan parameter override must belong to some stage's plan."""
    known = {n for s in pipeline.all_stages if s.plan is not None for n in s.plan.param_names()}
    for name in params:
        if name not in known:
            raise ConfigError(
                f"a plan parameter of this pipeline ({', '.join('--' + n.replace('_', '-') for n in sorted(known))})",
                f"--{name.replace('_', '-')}", "drop the option or use one of the listed ones",
            )


def status(
    pipeline: Pipeline,
    output: str,
    params: Optional[Mapping[str, Any]] = None,
    storage_options: Optional[Mapping[str, Any]] = None,
    stages: Optional[Sequence[str]] = None,
) -> PlannedRun:
    """Which chunks are committed and which are missing, per stage (no compute, no
    cluster)."""
    return plan(pipeline, output, params, storage_options, stages=stages)


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
    stages: Optional[Sequence[str]] = None,
    stale: bool = False,
    worker_memory_limit: Optional[str | int] = None,
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
        stages: Run only these stages and what they need (default: every stage).
        stale: Redo stale chunks too (and everything downstream of them); without it a
            run does missing and failed chunks only and reports the stale ones.
        worker_memory_limit: Each worker's memory limit (``"2GiB"``; ``--worker-memory-limit``).

    Returns:
        The run report; ``report.ok`` is False if any chunk failed.

    Raises:
        RunInterrupted: After a SIGINT or SIGTERM (a ``KeyboardInterrupt``): the run
            cancelled its outstanding batches, kept its committed chunks, marked its flow
            run Cancelled and wrote its manifest (``exc.report``). A second signal ends
            the process at once.
    """
    quiet_prefect_env()
    console = console or Console(stderr=True, quiet=not progress)
    started = time.perf_counter()
    spec = RunnerSpec.for_run(runner, workers, scheduler, worker_memory_limit)
    planned = plan(pipeline, output, params, storage_options, force, stages, stale)
    will_run = planned.to_run and not dry_run
    facts = spec.check(planned.pipeline if will_run else None,
                       worker_paths(planned) if will_run and spec.kind == "remote" else ())
    counts = planned.stage_counts()
    report = RunReport(
        pipeline=pipeline.name, output=planned.targets.output, runner=spec.describe(),
        run_id=uuid.uuid4().hex, started_at=now_iso(), plan=planned.plan.describe(),
        total=planned.total, to_run=planned.to_run,
        already_committed=sum(c["committed"] - c["committed_to_run"] for c in counts),
        plan_seconds=planned.seconds, dry_run=dry_run, storage_options=dict(storage_options or {}),
        stages=counts, stale_left=_stale_left(planned),
    )
    if dry_run:
        report.seconds = time.perf_counter() - started
        return report
    with _hold_lease(planned, report, console) as lease, StopSignal(on_second=lambda signum: console.print(
            f"[red]second {'SIGINT' if signum == signal.SIGINT else 'SIGTERM'}[/]: exiting at once; "
            "committed chunks stay; rerun to do the rest")) as stop:
        report.corrupt_moved = _move_corrupt(planned, report.run_id, console)
        if planned.to_run and not stop.stopped:
            _execute(planned, spec, report, force, chunks_per_task, console, progress, record_timeout,
                     dict(storage_options or {}), facts.threads if facts else None, stop,
                     on_flow_run=lease.set_flow_run)
        report.interrupted = stop.name
        _update_indexes(planned, report)
        report.seconds = time.perf_counter() - started
        report.write_manifest(planned.targets.storage)
    if stop.stopped:
        raise RunInterrupted(report, stop.signum or signal.SIGINT)
    return report


def _move_corrupt(planned: PlannedRun, run_id: str, console: Console) -> list[str]:
    """Move every target that is not a readable Parquet file aside, to
    ``{output}/_distetl/{pipeline}/corrupt/{stage}/{key}-{run}.parquet``, so its chunk is
    redone (it counts as missing) and nothing is lost. Returns where each went."""
    import os
    import re

    storage = planned.targets.storage
    moved = []
    for p in planned.stages:
        for i in planned.corrupt.get(p.name, ()):
            source = p.paths[i]
            key = re.sub(r"[^A-Za-z0-9_.=-]", "_", p.chunks[i].key)
            target = f"{planned.output.rstrip('/')}/_distetl/{planned.pipeline.name}/corrupt/{p.name}/" \
                     f"{key}-{run_id[:8]}.parquet"
            if storage.is_local:
                os.makedirs(os.path.dirname(storage.normalize(target)), exist_ok=True)
                os.replace(storage.normalize(source), storage.normalize(target))
            else:
                storage.fs.mv(source, target)
            console.print(f"[yellow]moved aside[/] {_hide(source)} (not a readable Parquet file: its chunk "
                          f"{p.name}:{p.chunks[i].key} is redone) -> {_hide(target)}", highlight=False, soft_wrap=True)
            moved.append(target)
    return moved


def _execute(
    planned: PlannedRun, spec: RunnerSpec, report: RunReport, force: bool,
    chunks_per_task: Optional[int], console: Console, show: bool, record_timeout: float,
    storage_options: dict[str, Any], cluster_threads: Optional[int] = None,
    stop: Optional[StopSignal] = None, on_flow_run: Optional[Callable[[str], None]] = None,
) -> None:
    from distetl.engine.dispatch import Dispatcher
    from distetl.engine.flow import run_flow
    from distetl.engine.prefect_api import prefect_api, wait_for_task_runs
    from distetl.engine.progress import LiveProgress
    from distetl.engine.watch import Watch

    output = planned.output
    workers = spec.batch_threads if spec.kind in ("local", "cluster") else (
        1 if spec.kind == "sequential" else cluster_threads or 8)
    plans = {p.name: p for p in planned.stages}
    records = {p.name: _record_base(planned.pipeline.name, p.name, planned.versions[p.name], report.run_id)
               for p in planned.stages}
    landed: dict[tuple[str, str], dict[str, Any]] = {}
    storage = planned.targets.storage

    #: Data versions of the chunks committed by this run, for their readers' records
    #: (only of stages something reads; dropped with the run).
    fresh: dict[tuple[str, int], Optional[str]] = {}
    read_stages = {item.upstream for p in planned.stages for item, _ in p.links}
    #: Stages with row-count rules: how many previous chunks they look at, and the row
    #: counts of their chunks committed by this run.
    row_window = {p.name: max(r.previous for r in row_rules(p.stage.checks))
                  for p in planned.stages if row_rules(getattr(p.stage, "checks", ()))}
    fresh_rows: dict[tuple[str, int], int] = {}

    def previous_rows(plan: StagePlan, indexes: list[int]) -> list[list[Any]]:
        """Per chunk, its previous chunks' row counts (see BatchJob.previous_rows)."""
        window, in_batch, redo = row_window[plan.name], set(indexes), set(planned.need.get(plan.name, ()))
        out = []
        for i in indexes:
            rows: list[Any] = []
            for j in range(i - 1, max(i - 1 - window, -1), -1):
                if j in in_batch:
                    rows.append(["?", plan.paths[j]])
                elif (plan.name, j) in fresh_rows:
                    rows.append(fresh_rows[(plan.name, j)])
                elif j in redo:  # runs in this run, maybe done by the time chunk i is checked
                    rows.append(["?", plan.paths[j]])
                elif j in plan.committed:
                    record = planned.records[plan.name].get(j)
                    rows.append(record.rows if record is not None else None)
                else:
                    rows.append(None)
            out.append(rows)
        return out

    def version_of(upstream: StagePlan, u: int) -> Any:
        version = fresh.get((upstream.name, u))
        if version is None and u in upstream.committed and (upstream.name, u) not in fresh:
            record = planned.records[upstream.name].get(u)
            version = record.data_version if record is not None else None
        return version if version is not None else ["?", upstream.paths[u]]  # the worker reads the footer

    def make_job(plan: StagePlan, indexes: list[int]) -> BatchJob:
        inputs: Optional[list[dict[str, list[str]]]] = None
        fingerprints: Optional[list[dict[str, Any]]] = None
        roots: dict[str, str] = {}
        sources = {name: stamp for name, (stamp, _) in plan.sources.items()}
        links = plan.links
        if links:
            for item, _ in links:
                if item.upstream not in plans:
                    raise ConfigError(f"stage {item.upstream!r} planned with {plan.name!r}", "not selected",
                                      "report this: the stage selection lost an upstream stage")
                roots[item.name] = dataset_root(plans[item.upstream].stage.target, output)
            inputs, fingerprints = [], []
            in_batch = set(indexes)
            for i in indexes:
                by_name: dict[str, list[str]] = {}
                sent: dict[str, Any] = {source_key(n): v for n, v in sources.items()}
                for item, reads in links:
                    upstream = plans[item.upstream]
                    by_name[item.name] = [upstream.paths[u] for u in reads[i]]
                    own = item.upstream == plan.name
                    for u in reads[i]:
                        # A predecessor in the same chain segment: the worker knows its version once written.
                        version = ["?", upstream.paths[u]] if own and u in in_batch else version_of(upstream, u)
                        sent[fingerprint_key(plan.stage, item.name, upstream.chunks[u].key)] = version
                inputs.append(by_name)
                fingerprints.append(sent)
        elif sources:
            fingerprints = [{source_key(n): v for n, v in sources.items()} for _ in indexes]
        # A batch that redoes committed (stale or forced) chunks replaces their files.
        replace_files = force or any(i in plan.committed for i in indexes)
        return BatchJob(planned.pipeline, [(plan.chunks[i], plan.paths[i]) for i in indexes], output,
                        storage_options, replace_files, stage=plan.name, inputs=inputs,
                        input_root=next(iter(roots.values()), None), record=records[plan.name],
                        input_roots=roots, fingerprints=fingerprints,
                        sources={name: files for name, (_, files) in plan.sources.items()},
                        previous_rows=previous_rows(plan, indexes) if plan.name in row_window else None)

    class _Source(Dispatcher):
        def done(self, job: BatchJob, results: list[ChunkResult]) -> None:
            for n, result in enumerate(results):
                # Its worker's event has done its job once the batch is back: drop it,
                # so the driver keeps events of the batches in flight only.
                event = landed.pop((job.stage, result.key), None)
                results[n] = _reconcile(result, event, storage, job.force)
            super().done(job, results)

        def landed(self, name: str, index: int, result: ChunkResult) -> None:
            # Kept only while a chunk waits to read it (memory follows what is in flight).
            if name in read_stages and result.status == WRITTEN and result.record \
                    and self.tracker.readers.get((name, index)):
                fresh[(name, index)] = json.loads(result.record).get("data_version")
            if name in row_window and result.status == WRITTEN:
                fresh_rows[(name, index)] = result.rows

    source = _Source(planned.stages, planned.need, make_job, workers, chunks_per_task)
    live = LiveProgress(console, planned.stage_counts(), enabled=show)
    ledger = report.ledger = RunLedger([p.name for p in planned.stages])

    def on_chunk(event: dict[str, Any]) -> None:
        landed.setdefault((event.get("stage") or "", event["key"]), event)
        live.chunk(event)

    early = EarlyCluster.take(spec, planned.to_run)  # the one `distetl run` launched, or a new one
    try:
        with prefect_api() as api_url:
            report.prefect_api = api_url
            outcome = _flow(planned, spec, early, source, live, on_chunk, report, console, stop, on_flow_run, ledger,
                            run_flow, Watch)
            if early is not None:
                early.close()  # before waiting for Prefect to record the task runs, as the runner did
            report.task_runs = len(outcome.task_run_ids)
            report.task_runs_recorded = wait_for_task_runs(outcome.task_run_ids, timeout=record_timeout)
    finally:
        if early is not None:
            early.close()
    report.flow_run_id = outcome.flow_run_id
    report.flow_state = outcome.state
    report.flow_state_message = outcome.state_message
    report.restarted_workers, report.scheduler_lost = outcome.restarted_workers, outcome.scheduler_lost
    _settle_unreported(planned, source, landed, ledger, (stop is not None and stop.stopped) or outcome.scheduler_lost)


def _flow(planned: PlannedRun, spec: RunnerSpec, early: Any, source: Any, live: Any, on_chunk: Any,
          report: RunReport, console: Console, stop: Any, on_flow_run: Any, ledger: RunLedger,
          run_flow: Any, Watch: Any) -> Any:
    """The flow run itself (on the early cluster when there is one); returns its outcome."""
    plans = {p.name: p for p in planned.stages}
    watch = Watch(console, report)  # prints the flow run's page and the Dask dashboard
    with live:
        outcome = run_flow(
            planned.pipeline, source, early.task_runner(stop) if early is not None else spec.task_runner(),
            live.settle, on_chunk,
            flow_run_name=f"{planned.pipeline.name} · {planned.to_run} chunks",
            stop=stop, restart_hung_workers=spec.kind == "remote", on_flow_run=watch.flow_run(on_flow_run),
            on_dashboard=watch.dashboard, record_paths=report.record_paths()[::-1], ledger=ledger,
        )
        for (name, index), cause in source.blocked.items():
            live.chunk({"key": plans[name].chunks[index].key, "stage": name, "status": BLOCKED}, remember=False)
    return outcome


def _settle_unreported(planned: PlannedRun, source: Any, landed: dict[tuple[str, str], dict[str, Any]],
                       ledger: RunLedger, stopped: Any) -> None:
    """The results of the chunks that ran but no batch reported: committed by a lost
    batch (its worker's event says so), blocked by a failed input, not run because the
    run stopped, or lost.

    After a stop (its cluster closed, so nothing commits any more) one listing per stage
    finds the chunks not run whose targets now exist and did not before the run: a
    worker committed them as the run stopped, and their progress event was lost with
    the cluster.
    """
    for p in planned.stages:
        reported = source.reported[p.name]
        present: Optional[dict[str, str]] = None
        for i in planned.need[p.name]:
            if i in reported:
                continue
            chunk, path = p.chunks[i], p.paths[i]
            result = _missing_result(p.name, chunk.key, path, landed.get((p.name, chunk.key)),
                                     source.blocked.get((p.name, i)), stopped)
            if result.status == NOT_RUN and i not in p.committed:
                if present is None:
                    present = p.targets.storage.list_stamps(p.targets.listing_root())
                if path in present:
                    result = replace(result, status=WRITTEN,
                                     error="committed as the run stopped; its row count was not reported")
            ledger.add(result, task_run=False)


def _stale_left(planned: PlannedRun) -> dict[str, dict[str, int]]:
    """Per stage, the stale chunks this run leaves as they are, by cause."""
    out: dict[str, dict[str, int]] = {}
    for p in planned.stages:
        running = set(planned.need[p.name])
        for i, why in planned.stale.get(p.name, {}).items():
            if i not in running:
                causes = out.setdefault(p.name, {})
                causes[why.cause] = causes.get(why.cause, 0) + 1
    return out


def _update_indexes(planned: PlannedRun, report: RunReport) -> None:
    """Rewrite the index of every stage this run wrote to (or whose index did not cover
    its files): one listing per such stage; the old index rows still matching the
    listing are kept (filtered in Arrow), the records of the files written now and of
    the footers read at plan time are added. Records are built a row group at a time,
    so the driver never holds one per committed chunk for this."""
    written: dict[str, int] = {}
    unknown: dict[str, set[str]] = {}
    for batch in report.ledger.batches(("stage", "path", "status", "record")):
        for stage, path, status, record in zip(*(batch.column(n).to_pylist() for n in range(4))):
            if status == WRITTEN and record:
                written[stage] = written.get(stage, 0) + 1
            elif status in (WRITTEN, NOT_RUN, FAILED):
                # Ran (or may have) without its record reaching the driver: the file may
                # be new while the plan-time record is old. Leave it out of the index, so
                # the next plan reads its footer.
                unknown.setdefault(stage, set()).add(path)
    for p in planned.stages:
        if not written.get(p.name) and not unknown.get(p.name) and not planned.footers_read:
            continue
        listing = p.targets.storage.list_table(p.targets.listing_root(), keep_stamps=True)
        drop = unknown.get(p.name, set())

        def rows(p: StagePlan = p, listing: Listing = listing,
                 drop: set[str] = drop) -> Iterator[list[tuple[str, str, ChunkRecord]]]:
            for batch in report.ledger.batches(("stage", "path", "status", "record")):
                mine = [(path, record) for stage, path, status, record in
                        zip(*(batch.column(n).to_pylist() for n in range(4)))
                        if stage == p.name and status == WRITTEN and record]
                stamps = listing.stamp_of(listing.find_paths([path for path, _ in mine]))
                yield [(path, stamp, ChunkRecord.from_json(record))
                       for (path, record), stamp in zip(mine, stamps) if stamp is not None]
            # Records read from footers at plan time (the index did not cover them), of
            # the files this run did not redo.
            records = planned.records.get(p.name)
            if records is None or not records.footers:
                return
            redone = IndexSet(len(p.chunks), planned.need[p.name])
            kept = [(p.paths[i], record) for i, record in records.footer_items()
                    if record is not None and i not in redone]
            kept = [(path, record) for path, record in kept if path not in drop]
            stamps = listing.stamp_of(listing.find_paths([path for path, _ in kept]))
            yield [(path, stamp, record) for (path, record), stamp in zip(kept, stamps) if stamp is not None]

        StageIndex(p.targets.storage, planned.output, planned.pipeline.name, p.name).update(listing, drop, rows())


def _record_base(pipeline: str, stage: str, version: str, run_id: str) -> dict[str, Any]:
    """What every chunk record of a stage shares (see :mod:`distetl.state.records`)."""
    from distetl.version import __version__

    return {"pipeline": pipeline, "stage": stage, "version": version, "run_id": run_id, "distetl": __version__}


def _reconcile(result: ChunkResult, event: Optional[dict[str, Any]], storage: Any,
               replacing: bool = False) -> ChunkResult:
    """A chunk's result corrected by its worker's progress event: a batch lost after a
    chunk committed (its worker died) reports it failed or not run, and a rerun of the
    batch reports it skipped; the event says this run committed it. A batch that
    replaces files (stale or forced chunks) finds the old file there: that proves
    nothing, so its lost chunks stay failed."""
    if event and event.get("status") == WRITTEN and result.status in (SKIPPED, FAILED, NOT_RUN):
        return replace(result, status=WRITTEN, rows=int(event.get("rows") or 0), error=None)
    if result.status == FAILED and not result.worker and not replacing and storage.exists(result.path):
        # Lost with its batch (no worker reported it), yet committed: its progress
        # event died with the worker. Done, so not failed; not known to be ours.
        return replace(result, status=SKIPPED, error=None)
    return result


def _missing_result(stage: str, key: str, path: str, event: Optional[dict[str, Any]],
                    blocked_by: Optional[str], stopped: bool) -> ChunkResult:
    """The result of a chunk that runs but no batch reported: blocked by a failed input,
    not run because the run stopped, committed by a lost batch, or lost."""
    if event is not None and event.get("status") == WRITTEN:
        return ChunkResult(key=key, path=path, status=WRITTEN, stage=stage, rows=int(event.get("rows") or 0))
    if blocked_by is not None:
        return ChunkResult(key=key, path=path, status=BLOCKED, stage=stage,
                           error=f"blocked: its input {blocked_by} failed; rerun after fixing that chunk")
    if stopped:  # True, or why the run could not go on (its scheduler lost)
        why = stopped if isinstance(stopped, str) else "the run was stopped"
        return ChunkResult(key=key, path=path, status=NOT_RUN, stage=stage, error=f"not run: {why}")
    return ChunkResult(key=key, path=path, status=FAILED, stage=stage,
                       error="no result came back (worker or task lost); rerun to redo it")


@contextlib.contextmanager
def _hold_lease(planned: PlannedRun, report: RunReport, console: Console) -> Iterator[RunLease]:
    """Hold the output's run lease for the block: one run per pipeline and output.

    On entry: take the lease (a live holder is a ConfigError, exit code 2). If it was
    taken over from a run that is gone, say so and mark that run's flow run Crashed in
    Prefect (the API then stays up for the block, so this run's flow reuses it). Remove
    the temp files killed writes left beside this run's targets. On exit: release it.
    """
    targets = planned.targets
    with RunLease(targets.storage, targets.output, planned.pipeline.name, report.run_id,
                  started_at=report.started_at) as lease, contextlib.ExitStack() as stack:
        taken = lease.taken_over
        if taken is not None:
            console.print(f"[yellow]{taken.message()}[/]", highlight=False, soft_wrap=True)
            report.lease_taken_over_from = taken.to_dict()
            if taken.previous.flow_run_id:
                _mark_crashed(taken, report, console, stack)
        since = parse_time(report.started_at)
        report.leftovers_removed = sum(  # each stage's listing at plan time saw its hidden files
            remove_leftovers(p.targets.storage, p.paths, since, p.targets.hidden, p.targets.listing_root())
            for p in planned.stages)
        yield lease


def _mark_crashed(taken: TakenOver, report: RunReport, console: Console, stack: contextlib.ExitStack) -> None:
    """Mark the flow run of the gone run whose lease was taken over Crashed, keeping the
    Prefect API up in ``stack`` for the rest of the run; a failure is reported, never fatal."""
    from distetl.engine.prefect_api import mark_crashed, prefect_api

    previous = taken.previous
    flow_run, owner = previous.flow_run_id, previous.run_id[:8]
    try:
        api_url = stack.enter_context(prefect_api())
        state, task_runs = mark_crashed(flow_run, f"driver gone ({taken.reason}); marked by run {report.run_id[:8]}")
    except Exception as exc:  # noqa: BLE001 - bookkeeping of another run must not stop this one
        console.print(f"[yellow]could not mark flow run {flow_run} of run {owner} Crashed[/]: "
                      f"{type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)
        return
    if state is None:
        elsewhere = f" (it was recorded at {previous.prefect_api})" if previous.prefect_api != api_url else ""
        console.print(f"flow run {flow_run} of run {owner} is not in the Prefect API at {api_url}{elsewhere}; "
                      "left as it is", highlight=False, soft_wrap=True)
    elif task_runs is None:
        console.print(f"flow run {flow_run} of run {owner} had already ended ({state}); left as it is",
                      highlight=False, soft_wrap=True)
    else:
        report.crashed_runs_marked.append(flow_run)
        console.print(f"[yellow]marked flow run {flow_run} of run {owner} Crashed[/] (was {state}; "
                      f"{task_runs} unfinished task run(s) marked Crashed too)", highlight=False, soft_wrap=True)
