"""The ``distetl`` command: ``run``, ``status`` and ``cluster``.

Exit codes: 0 every chunk committed, 1 some chunk failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import itertools
import json
import os
import sys
import threading
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from distetl.errors import DistetlError
from distetl.version import __version__

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _base_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distetl", description="Resumable chunked Parquet backfills on Dask, orchestrated by Prefect 3.",
    )
    parser.add_argument("--version", action="version", version=f"distetl {__version__}",
                        help="print distetl's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("run", "run a backfill (missing and failed chunks; stale ones with --stale)"),
                       ("status", "per stage: fresh, stale (and why), missing, failed in the last run"),
                       ("accept", "accept the current code of a stage for its chunks without recomputing them")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("flow", help="flow file (e.g. flows/nycflights.py) or module:attribute")
        p.add_argument("--output", default=os.environ.get("DISTETL_OUTPUT", "./output"),
                       help="root every target template writes under (default ./output; s3://bucket/prefix works)")
        p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                       help="fsspec storage option, repeatable (e.g. endpoint_url=http://127.0.0.1:9000)")
        p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
        p.add_argument("--stage", action="append", default=None, metavar="NAME",
                       help="only this stage and the stages it needs (repeatable)")
        p.add_argument("--tz", default=None, metavar="ZONE",
                       help="time zone of 'today' in relative plan dates such as --start today-7d (default UTC)")
        if name == "status":
            p.add_argument("--explain", metavar="KEY", default=None,
                           help="say why one chunk is stale (or that it is fresh or missing): KEY, or STAGE:KEY for one stage")
        if name == "accept":
            p.add_argument("--key", action="append", default=None, metavar="KEY",
                           help="only this chunk (repeatable; default: every code-stale chunk)")
        if name == "run":
            p.add_argument("--stale", action="store_true",
                           help="redo stale chunks too, and everything downstream of them")
            p.add_argument("--runner", choices=["local", "remote", "sequential", "cluster"], default=None,
                           help="local Dask cluster (default), remote scheduler, or sequential baseline")
            p.add_argument("--workers", type=int, default=None, help="worker processes for --runner local (default: cores)")
            p.add_argument("--scheduler", default=None, help="remote scheduler tcp://HOST:PORT (or DISTETL_SCHEDULER)")
            p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to reach a remote scheduler")
            from distetl.ops.clusters import add_cluster_arguments

            add_cluster_arguments(p)
            p.add_argument("--force", action="store_true", help="recompute every chunk, committed or not")
            p.add_argument("--dry-run", action="store_true", help="plan only: print total / to run / to skip")
            p.add_argument("--chunks-per-task", type=int, default=None,
                           help="chunks per Prefect task (default: about 8 tasks per worker)")
            p.add_argument("--retries", type=int, default=None, help="times a failing chunk is retried")
            p.add_argument("--retry-delay", type=float, default=None, help="seconds between retries")
            p.add_argument("--chunk-timeout", type=float, default=None, metavar="SECONDS",
                           help="time limit of one try of one chunk; past it the try fails and is retried")
            p.add_argument("--no-progress", action="store_true", help="no live progress display")
            p.add_argument("--performance-report", default=None, metavar="FILE.html",
                           help="write Dask's performance report of the run to FILE.html (Dask runners)")
            from distetl.ops.alerts import add_alert_arguments

            add_alert_arguments(p)
    cluster = sub.add_parser("cluster", help="start or stop a laptop Dask cluster and Prefect API")
    csub = cluster.add_subparsers(dest="action", required=True)
    up = csub.add_parser("up", help="start a scheduler, N workers and a Prefect server on 127.0.0.1")
    up.add_argument("--workers", type=int, default=None)
    up.add_argument("--scheduler-port", type=int, default=8786)
    up.add_argument("--dashboard-port", type=int, default=8787)
    up.add_argument("--prefect-port", type=int, default=4200)
    csub.add_parser("down", help="stop what `cluster up` started")
    csub.add_parser("status", help="show what `cluster up` started")
    from distetl.ops.ui import add_ui_parser

    add_ui_parser(sub)
    from distetl.ops.serve import add_serve_parser

    add_serve_parser(sub)
    from distetl.ops.logs import add_logs_parser

    add_logs_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``distetl`` command."""
    _env_defaults()
    parser = _base_parser()
    args, extra = parser.parse_known_args(argv)
    console = Console(stderr=True)
    try:
        if args.command == "cluster":
            from distetl.ops.up import cluster_command

            return cluster_command(args, console)
        if args.command == "ui":
            from distetl.ops.ui import ui_command

            return ui_command(args, console)
        if args.command == "logs":
            from distetl.ops.logs import logs_command

            return logs_command(args, extra, console)
        if args.command == "serve":
            from distetl.ops.serve import serve_command

            return serve_command(args, extra, console)
        from distetl.model.dates import fixed_today

        with fixed_today(tz=args.tz):  # relative plan dates: one "today" for the whole command
            return _run_or_status(args, extra, console)
    except DistetlError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: committed chunks stay; rerun to do the rest")
        return 130


def _run_or_status(args: argparse.Namespace, extra: Sequence[str], console: Console) -> int:
    if args.command != "run" or args.dry_run:
        return _commands(args, extra, console)
    from distetl.engine.prefect_api import launch_early, stop_early

    # The run's Prefect server (unless the home's kept one runs) starts while the flow
    # file loads and the run imports and plans what it needs; one no run takes (nothing
    # to run, bad input) is stopped here.
    launch_early()
    try:
        return _commands(args, extra, console)
    finally:
        stop_early()


def _runner_spec(args: argparse.Namespace) -> Any:
    """The run's :class:`~distetl.engine.runners.RunnerSpec` from its options."""
    from distetl.engine.runners import RunnerSpec
    from distetl.ops.clusters import with_memory_limit

    cluster_options = with_memory_limit(args.cluster_option, args.worker_memory_limit,
                                        args.scheduler or os.environ.get("DISTETL_SCHEDULER"))
    return RunnerSpec.from_options(args.runner, args.workers, args.scheduler, args.connect_timeout,
                                   performance_report=args.performance_report, cluster_class=args.cluster_class,
                                   cluster_options=cluster_options, adapt=args.adapt)


def _commands(args: argparse.Namespace, extra: Sequence[str], console: Console) -> int:
    """``run``, ``status`` and ``accept`` once the flow file is loaded."""
    from distetl.engine import backfill
    from distetl.engine.loader import load_pipeline, plan_params
    from distetl.storage import parse_storage_options

    pipeline = load_pipeline(args.flow)
    params = plan_params(pipeline, extra)
    options = parse_storage_options(args.storage_option)
    if args.command == "status":
        planned = backfill.status(pipeline, args.output, params, options, stages=args.stage)
        if args.explain:
            return _explain(planned, args.explain, console, args.stage)
        return _print_status(planned, args, console)
    if args.command == "accept":
        accepted = backfill.accept(pipeline, args.output, params, options, stages=args.stage, keys=args.key)
        if args.json:
            print(json.dumps(accepted, indent=1))
        for stage, count in accepted.items():
            console.print(f"{stage}: accepted the current code for {count} chunk(s) without recomputing them")
        if not accepted:
            console.print("nothing to accept: no chunk is stale because of its code")
        return EXIT_OK
    pipeline = pipeline.with_retry_options(args.retries, args.retry_delay, args.chunk_timeout)
    spec = _runner_spec(args)
    from distetl.ops.alerts import AlertConfig

    alerts = AlertConfig.from_args(args)
    show = not args.no_progress and not args.json and not args.dry_run
    if not args.json:
        console.print(f"[bold]distetl[/] {pipeline.name}: output {args.output} on {spec.describe()}")
    from distetl.engine.stopping import RunInterrupted

    try:
        report = backfill.run(
            pipeline, args.output, runner=spec, force=args.force, dry_run=args.dry_run, params=params,
            storage_options=options, chunks_per_task=args.chunks_per_task, console=console, progress=show,
            stages=args.stage, stale=args.stale,
        )
    except RunInterrupted as stopped:
        if args.json:
            print(json.dumps(stopped.report.to_dict(), default=str, indent=1))
        else:
            _print_report(stopped.report, console)
        console.print(f"[yellow]stopped by {stopped.report.interrupted}[/]: {stopped.report.written} chunk(s) "
                      f"committed by this run stay; {stopped.report.not_run} not run; rerun to do the rest")
        alerts.fire(stopped.report, console, stopped.exit_code)
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
    from distetl.ops.clusters import print_scaling

    print_scaling(console)
    if report.scheduler_lost:
        console.print(f"[bold red]error:[/] Expected the Dask scheduler to stay up for the whole run; got "
                      f"{report.scheduler_lost}. {report.written} chunk(s) this run committed stay; "
                      f"{report.not_run} not run. Fix: start the scheduler again (or point --scheduler at a live "
                      "one) and rerun: it does only the rest", highlight=False, soft_wrap=True)
    if spec.performance_report and os.path.exists(spec.performance_report) and report.flow_run_id:
        console.print(f"performance report: {spec.performance_report}", highlight=False, soft_wrap=True)
    if not args.dry_run:
        alerts.fire(report, console, EXIT_OK if report.ok else EXIT_FAILED)
    return EXIT_OK if report.ok else EXIT_FAILED


def _print_report(report: Any, console: Console) -> None:
    from distetl.engine.progress import summary_table

    console.print(summary_table(report))
    from distetl.state.ledger import describe_chunk_times

    for stage, times in (report.chunk_times or {}).items():
        console.print(f"chunk time, {stage or report.pipeline}: {describe_chunk_times(times)}", highlight=False,
                      soft_wrap=True)
    if report.failed:
        more = report.failed_count - len(report.failed[:50])
        table = Table(title="failed chunks (rerun to redo them)" + (f"; {more} more in the run's per-chunk file"
                                                                    if more else ""), show_lines=False)
        table.add_column("chunk")
        table.add_column("error")
        for result in report.failed[:50]:
            table.add_row(result.key, (result.error or "")[:300])
        console.print(table)
    if report.to_run == 0:
        console.print(f"nothing to run: all {report.total} chunks already committed")
    for stage, causes in report.stale_left.items():
        count = sum(causes.values())
        why = ", ".join(f"{n} {cause}" for cause, n in causes.items())
        console.print(f"[yellow]{count} chunk(s) are stale[/] in stage {stage} ({why}): "
                      "rerun with --stale to redo them (distetl status --explain KEY says why)")
    console.print(f"output:   {report.output}")
    if report.manifest_path:
        console.print(f"manifest: {report.manifest_path}")
    if report.flow_run_id:
        console.print(f"prefect:  flow run {report.flow_run_id} ({report.task_runs_recorded}/{report.task_runs} "
                      f"task runs recorded at {report.prefect_api})")
        from distetl.engine.watch import after_run_link

        link = after_run_link(report.prefect_api, report.flow_run_id)
        if link:
            console.print(link, highlight=False, soft_wrap=True)


def _last_run(planned: Any) -> dict[str, Any]:
    """The ``latest.json`` pointer of the pipeline's last run ({} if none)."""
    from distetl.state.manifest import manifest_dir

    data = planned.targets.storage.read_bytes(f"{manifest_dir(planned.output, planned.pipeline.name)}/latest.json")
    try:
        return json.loads(data) if data else {}
    except ValueError:
        return {}


def _last_failed(planned: Any, column: str = "failed") -> dict[str, int]:
    """Per stage, the chunks that failed in the last run (from its manifest); with
    ``column="check_failed"``, those that failed a data check."""
    last = _last_run(planned)
    if not last:
        return {}
    if last.get("stage_summary"):  # the latest pointer carries the per-stage counts
        return {row["name"]: int(row.get(column) or 0) for row in last["stage_summary"] if row.get(column)}
    if column != "failed":
        return {}
    if "results" not in last and last.get("manifest"):
        more = planned.targets.storage.read_bytes(last["manifest"])
        last = json.loads(more) if more else {}
    out: dict[str, int] = {}
    for r in last.get("results", []):
        if r.get("status") == "failed":
            stage = r.get("stage") or planned.pipeline.name
            out[stage] = out.get(stage, 0) + 1
    return out


def _print_status(planned: Any, args: argparse.Namespace, console: Console) -> int:
    counts = planned.stage_counts()
    causes = planned.stale_counts()
    failed = _last_failed(planned)
    check_failed = _last_failed(planned, "check_failed")
    warned = planned.check_warnings()
    times = _last_run(planned).get("chunk_times") or {}
    missing_count = sum(c["missing"] for c in counts)
    missing = list(itertools.islice(((p.name, p.chunks[i].key) for p in planned.stages for i in range(len(p.chunks))
                                     if i not in p.committed), KEYS_LISTED))
    stages = []
    for p, c in zip(planned.stages, counts):
        stages.append({"name": c["name"], "total": c["total"], "fresh": c["fresh"], "stale": c["stale"],
                       "stale_by_cause": causes[p.name], "missing": c["missing"],
                       "failed_last_run": failed.get(p.name, 0), "committed": c["committed"],
                       "corrupt": len(planned.corrupt.get(p.name, ())),
                       "version": planned.versions.get(p.name)})
        if times.get(p.name) or times.get(""):
            stages[-1]["chunk_times_last_run"] = times.get(p.name) or times.get("")
        if p.name in warned:  # a stage with data checks
            stages[-1].update({"check_failed_last_run": check_failed.get(p.name, 0),
                               "warned": warned[p.name]["chunks"], "warnings_by_check": warned[p.name]["by_check"]})
    if args.json:
        label = (lambda s, k: f"{s}:{k}") if len(counts) > 1 else (lambda s, k: k)
        committed = list(itertools.islice((label(p.name, p.chunks[i].key) for p in planned.stages
                                           for i in p.committed), KEYS_LISTED))
        committed_count = sum(c["committed"] for c in counts)
        print(json.dumps({"pipeline": planned.pipeline.name, "output": planned.output, "total": planned.total,
                          "stages": stages, "committed": committed,
                          "committed_not_listed": committed_count - len(committed),
                          "missing": [label(s, k) for s, k in missing],
                          "missing_not_listed": missing_count - len(missing)}, indent=1))
    else:
        table = Table(title=f"{planned.pipeline.name} under {planned.output}")
        for column in ("stage", "total", "fresh", "stale", "missing", "failed (last run)"):
            table.add_column(column, justify="left" if column == "stage" else "right")
        for row in stages:
            why = ", ".join(f"{n} {c}" for c, n in row["stale_by_cause"].items() if n)
            table.add_row(row["name"], str(row["total"]), str(row["fresh"]),
                          f"{row['stale']}" + (f" ({why})" if why else ""), str(row["missing"]),
                          str(row["failed_last_run"]))
        console.print(table)
        for row in stages:
            console.print(f"{row['name']}: {row['committed']} of {row['total']} chunks committed "
                          f"({row['fresh']} fresh, {row['stale']} stale); {row['missing']} missing"
                          + (f" ({row['corrupt']} corrupt: not readable Parquet files, moved aside and redone by "
                             "`distetl run`)" if row["corrupt"] else ""), soft_wrap=True)
            if row.get("chunk_times_last_run"):
                from distetl.state.ledger import describe_chunk_times

                console.print(f"  chunk time (last run): {describe_chunk_times(row['chunk_times_last_run'])}",
                              highlight=False, soft_wrap=True)
            if row.get("check_failed_last_run") or row.get("warned"):
                by_check = "; ".join(f"{name}: {rows} row(s)" for name, rows in row["warnings_by_check"].items())
                console.print(f"  data checks: {row['check_failed_last_run']} chunk(s) failed in the last run; "
                              f"{row['warned']} committed chunk(s) with warnings" + (f" ({by_check})" if by_check
                                                                                      else ""), soft_wrap=True)
        for stage, key in missing[:20]:
            console.print(f"  missing {stage}:{key}" if len(counts) > 1 else f"  missing {key}")
        if missing_count > 20:
            console.print(f"  … and {missing_count - 20} more")
        if any(row["stale"] for row in stages):
            console.print("stale chunks are redone by `distetl run --stale`; `distetl status --explain KEY` "
                          "says why one is stale")
    return EXIT_OK if not missing_count else EXIT_FAILED


#: Chunk keys ``status --json`` lists per kind (committed, missing); the rest are counted.
KEYS_LISTED = 10_000


def _explain(planned: Any, key: str, console: Console, stages: Sequence[str] | None = None) -> int:
    """Why one chunk is fresh, stale or missing.

    Args:
        planned: The status plan.
        key: A chunk key (``date=2024-01-05``), or ``STAGE:KEY`` as ``--explain`` prints it.
        console: Where the lines go.
        stages: ``--stage`` names: only these stages (default: every stage that has the key).
    """
    names = [p.name for p in planned.stages]
    head, sep, rest = key.partition(":")
    if sep and head in names:
        stages, key = [head], rest
    shown = [p for p in planned.stages if not stages or p.name in stages]
    found = False
    for p in shown:
        index = p.chunks.find(key) if hasattr(p.chunks, "find") else next(
            (i for i, c in enumerate(p.chunks) if c.key == key), None)
        if index is None:
            continue
        found = True
        record = planned.records.get(p.name, {}).get(index)
        head = f"{p.name}:{key}"
        if index in planned.corrupt.get(p.name, ()):
            console.print(f"{head}: corrupt ({p.paths[index]} is not a readable Parquet file: counted as missing; "
                          "`distetl run` moves it aside and redoes the chunk)", highlight=False, soft_wrap=True)
            continue
        if index not in p.committed:
            console.print(f"{head}: missing ({p.paths[index]} does not exist)", highlight=False, soft_wrap=True)
            continue
        why = planned.stale.get(p.name, {}).get(index)
        state = f"stale ({why.cause}): {why.detail}" if why else "fresh"
        console.print(f"{head}: {state}", highlight=False, soft_wrap=True)
        if record is not None:
            console.print(f"  recorded: code version {record.version}, data version {record.data_version}, "
                          f"run {record.run_id[:8]}, produced {record.produced_at}, {record.rows} rows",
                          highlight=False, soft_wrap=True)
        console.print(f"  current:  code version {planned.versions.get(p.name)}", highlight=False, soft_wrap=True)
    if not found:
        keys = [f"{p.name}:{c.key}" for p in shown for c in p.chunks[:2]]
        where = f"stage {', '.join(p.name for p in shown)}" if stages else "this pipeline"
        raise DistetlError(f"a chunk key of {where} (e.g. {', '.join(keys)})", repr(key),
                           "pass a key as `distetl status` lists them, alone or as STAGE:KEY")
    return EXIT_OK


#: Commands that only read files and print (no Prefect run, no cluster, no server).
_READ_ONLY = ("status", "accept")


def console_main() -> None:
    """The ``distetl`` command (console script and ``python -m distetl.cli``): exit
    with :func:`main`'s code.

    ``status`` and ``accept`` end with ``os._exit`` once their output is flushed: they
    start nothing that needs the interpreter's teardown, and that teardown can abort a
    process whose work is done when a native Arrow thread is still joinable
    ("terminate called without an active exception", exit 134; apache/arrow#34314).
    ``run`` does the same after the exit handlers (``atexit``) have run, when no
    non-daemon thread is left: that saves ~0.35 s of a one-chunk run's ~5 s.
    """
    argv = sys.argv[1:]
    handed, warm = _hand_over(argv)
    if handed is not None:
        _flush()
        os._exit(handed)
    try:
        code = main(argv)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as `cat` does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os._exit(128 + 13)  # SIGPIPE's conventional exit status
    if warm is not None:  # for the next run on this home
        from distetl.handoff import launch

        launch(*warm)
    leave(argv, code)


def _env_defaults() -> None:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # Prefect's run logs go to its API (the UI shows them); the terminal gets distetl's
    # own progress, summary and failed-chunk table instead of a second copy.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")


def _hand_over(argv: Sequence[str]) -> tuple[int | None, Any]:
    """Hand ``distetl run`` to the home's warm run process (:mod:`distetl.handoff`).

    Returns:
        The run's exit code when the warm process ran it, else None and, when one
        should be started for later runs, the arguments of
        :func:`~distetl.handoff.launch`.
    """
    from distetl import handoff

    if not handoff.applies(argv):
        return None, None
    from distetl.engine.prefect_api import keep_seconds, state_home

    _env_defaults()
    try:
        idle = keep_seconds()
    except DistetlError:
        return None, None  # the run reports it
    if idle <= 0:
        return None, None
    env, home = dict(os.environ), state_home()
    name = handoff.key(home, env)
    code = handoff.forward(name, argv, env)
    return (code, None) if code is not None else (None, (name, home, env, idle))


def leave(argv: Sequence[str], code: int) -> None:
    """End the process after the command ``argv`` returned ``code``, as the ``distetl``
    command does (see :func:`console_main`)."""
    if argv[:1] and argv[0] in _READ_ONLY:
        _flush()
        os._exit(code)
    if argv[:1] == ["run"] and _only_daemon_threads_left():
        # The run is over: its report printed, its records written, its cluster and
        # server stopped. Run the exit handlers (logging's flush, Prefect's and Dask's
        # own), then leave without the interpreter's teardown: ~0.35 s of freeing
        # modules on 2 cores, and the Arrow abort above. Only with no other
        # non-daemon thread left, whose work the teardown would wait for.
        _flush()
        atexit._run_exitfuncs()
        _flush()
        os._exit(code)
    sys.exit(code)


def _only_daemon_threads_left() -> bool:
    main = threading.main_thread()
    return all(thread.daemon for thread in threading.enumerate() if thread is not main)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`)
            stream.flush()


if __name__ == "__main__":
    console_main()
