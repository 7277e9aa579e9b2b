"""The ``distetl`` command: ``run``, ``status`` and ``cluster``.

Exit codes: 0 every chunk committed, 1 some chunk failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from distetl.errors import DistetlError

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _base_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distetl", description="Resumable chunked Parquet backfills on Dask, orchestrated by Prefect 3.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run a backfill (only missing chunks)"),
                       ("status", "show which chunks are committed and which are missing")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("flow", help="flow file (e.g. flows/nycflights.py) or module:attribute")
        p.add_argument("--output", default=os.environ.get("DISTETL_OUTPUT", "./output"),
                       help="root every target template writes under (default ./output; s3://bucket/prefix works)")
        p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                       help="fsspec storage option, repeatable (e.g. endpoint_url=http://127.0.0.1:9000)")
        p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
        p.add_argument("--stage", action="append", default=None, metavar="NAME",
                       help="only this stage and the stages it needs (repeatable)")
        if name == "run":
            p.add_argument("--runner", choices=["local", "remote", "sequential"], default=None,
                           help="local Dask cluster (default), remote scheduler, or sequential baseline")
            p.add_argument("--workers", type=int, default=None, help="worker processes for --runner local (default: cores)")
            p.add_argument("--scheduler", default=None, help="remote scheduler tcp://HOST:PORT (or DISTETL_SCHEDULER)")
            p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to reach a remote scheduler")
            p.add_argument("--force", action="store_true", help="recompute every chunk, committed or not")
            p.add_argument("--dry-run", action="store_true", help="plan only: print total / to run / to skip")
            p.add_argument("--chunks-per-task", type=int, default=None,
                           help="chunks per Prefect task (default: about 8 tasks per worker)")
            p.add_argument("--retries", type=int, default=None, help="times a failing chunk is retried")
            p.add_argument("--retry-delay", type=float, default=None, help="seconds between retries")
            p.add_argument("--chunk-timeout", type=float, default=None, metavar="SECONDS",
                           help="time limit of one try of one chunk; past it the try fails and is retried")
            p.add_argument("--no-progress", action="store_true", help="no live progress display")
    cluster = sub.add_parser("cluster", help="start or stop a laptop Dask cluster and Prefect API")
    csub = cluster.add_subparsers(dest="action", required=True)
    up = csub.add_parser("up", help="start a scheduler, N workers and a Prefect server on 127.0.0.1")
    up.add_argument("--workers", type=int, default=None)
    up.add_argument("--scheduler-port", type=int, default=8786)
    up.add_argument("--dashboard-port", type=int, default=8787)
    up.add_argument("--prefect-port", type=int, default=4200)
    csub.add_parser("down", help="stop what `cluster up` started")
    csub.add_parser("status", help="show what `cluster up` started")
    return parser


def _plan_params(pipeline: Any, extra: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    plans = [s.plan for s in pipeline.all_stages if s.plan is not None]
    names = list(dict.fromkeys(n for p in plans for n in p.param_names()))
    group = argparse.ArgumentParser(prog="distetl run FLOW (plan parameters)", add_help=False)
    for name in names:
        default = next(getattr(p, name) for p in plans if name in p.param_names())
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                           help=f"plan parameter (default {default!r})")
    known, unknown = group.parse_known_args(list(extra))
    if unknown:
        options = ", ".join(f"--{n.replace('_', '-')}" for n in names)
        raise DistetlError(
            f"options of distetl or of the plan ({options})", " ".join(unknown),
            "check the spelling; `distetl run --help` lists distetl's options",
        )
    return {k: v for k, v in vars(known).items() if v is not None}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``distetl`` command."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # Prefect's run logs go to its API (the UI shows them); the terminal gets distetl's
    # own progress, summary and failed-chunk table instead of a second copy.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    parser = _base_parser()
    args, extra = parser.parse_known_args(argv)
    console = Console(stderr=True)
    try:
        if args.command == "cluster":
            from distetl.cluster import cluster_command

            return cluster_command(args, console)
        return _run_or_status(args, extra, console)
    except DistetlError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: committed chunks stay; rerun to do the rest")
        return 130


def _run_or_status(args: argparse.Namespace, extra: Sequence[str], console: Console) -> int:
    from distetl import backfill
    from distetl.loader import load_pipeline
    from distetl.storage import parse_storage_options

    pipeline = load_pipeline(args.flow)
    params = _plan_params(pipeline, extra, None)
    options = parse_storage_options(args.storage_option)
    if args.command == "status":
        planned = backfill.status(pipeline, args.output, params, options, stages=args.stage)
        return _print_status(planned, args, console)
    changes = {}
    if args.retries is not None:
        changes["retries"] = args.retries
    if args.retry_delay is not None:
        changes["retry_delay_seconds"] = args.retry_delay
    if args.chunk_timeout is not None:
        changes["timeout_seconds"] = args.chunk_timeout
    if changes:
        pipeline = pipeline.with_options(**changes)
    from distetl.runners import RunnerSpec

    spec = RunnerSpec.from_options(args.runner, args.workers, args.scheduler, args.connect_timeout)
    show = not args.no_progress and not args.json and not args.dry_run
    if not args.json:
        console.print(f"[bold]distetl[/] {pipeline.name}: output {args.output} on {spec.describe()}")
    from distetl.stopping import RunInterrupted

    try:
        report = backfill.run(
            pipeline, args.output, runner=spec, force=args.force, dry_run=args.dry_run, params=params,
            storage_options=options, chunks_per_task=args.chunks_per_task, console=console, progress=show,
            stages=args.stage,
        )
    except RunInterrupted as stopped:
        if args.json:
            print(json.dumps(stopped.report.to_dict(), default=str, indent=1))
        else:
            _print_report(stopped.report, console)
        console.print(f"[yellow]stopped by {stopped.report.interrupted}[/]: {stopped.report.written} chunk(s) "
                      f"committed by this run stay; {stopped.report.not_run} not run; rerun to do the rest")
        return stopped.exit_code
    if args.json:
        print(json.dumps(report.to_dict(), default=str, indent=1))
    elif args.dry_run:
        for stage in report.stages if len(report.stages) > 1 else []:
            console.print(f"stage {stage['name']}: total {stage['total']}, committed {stage['committed']}, "
                          f"to run {stage['to_run']}")
        console.print(f"chunks: total {report.total}, to run {report.to_run}, to skip {report.total - report.to_run}")
    else:
        _print_report(report, console)
    return EXIT_OK if report.ok else EXIT_FAILED


def _print_report(report: Any, console: Console) -> None:
    from distetl.progress import summary_table

    console.print(summary_table(report))
    if report.failed:
        table = Table(title="failed chunks (rerun to redo them)", show_lines=False)
        table.add_column("chunk")
        table.add_column("error")
        for result in report.failed[:50]:
            table.add_row(result.key, (result.error or "")[:300])
        console.print(table)
    if report.to_run == 0:
        console.print(f"nothing to run: all {report.total} chunks already committed")
    console.print(f"output:   {report.output}")
    if report.manifest_path:
        console.print(f"manifest: {report.manifest_path}")
    if report.flow_run_id:
        console.print(f"prefect:  flow run {report.flow_run_id} ({report.task_runs_recorded}/{report.task_runs} "
                      f"task runs recorded at {report.prefect_api})")


def _print_status(planned: Any, args: argparse.Namespace, console: Console) -> int:
    counts = planned.stage_counts()
    missing = [(p.name, c.key) for p in planned.stages for i, c in enumerate(p.chunks) if i not in p.committed]
    if args.json:
        stages = []
        for p, c in zip(planned.stages, counts):
            stages.append({"name": c["name"], "total": c["total"], "committed": c["committed"],
                           "missing": c["missing"], "to_run": c["to_run"],
                           "missing_keys": [k.key for i, k in enumerate(p.chunks) if i not in p.committed][:1000]})
        print(json.dumps({"pipeline": planned.pipeline.name, "total": planned.total,
                          "committed": planned.committed_keys, "missing": [k for _, k in missing],
                          "stages": stages}, indent=1))
    else:
        for c in counts:
            console.print(f"{c['name']}: {c['committed']} of {c['total']} chunks committed; {c['missing']} missing; "
                          f"{c['to_run']} would run")
        console.print(f"under {planned.targets.output}")
        for stage, key in missing[:50]:
            console.print(f"  missing {stage}:{key}" if len(counts) > 1 else f"  missing {key}")
        if len(missing) > 50:
            console.print(f"  … and {len(missing) - 50} more")
    return EXIT_OK if not missing else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
