"""``distetl serve``'s command line: its schedule and options, checked before anything starts.

``--cron`` and ``--interval`` become Prefect schedules in ``--tz``; everything else a
``distetl run`` takes (output, storage options, stages, runner, cluster, retries,
alerts) applies to each scheduled run. :class:`ServeOptions` is all of it, checked: a
wrong option is a usage error (exit 2) before any server or cluster starts. The service
itself is :mod:`distetl.ops.serve`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from distetl.errors import ConfigError

__all__ = ["POLL_SECONDS", "ServeOptions", "add_serve_parser"]

#: Seconds between polls of the API for due runs (``--poll``).
POLL_SECONDS = 5.0


# -- the command line ---------------------------------------------------------------------

def add_serve_parser(sub: Any) -> None:
    """The ``serve`` subcommand and its options."""
    text = ("register the pipeline as a Prefect deployment with a schedule and execute its runs, each a "
            "distetl run over the window its scheduled time gives, until SIGTERM/SIGINT")
    p = sub.add_parser("serve", help=text, description=text)
    p.add_argument("flow", help="flow file (e.g. flows/nycflights.py) or module:attribute")
    when = p.add_argument_group("schedule")
    when.add_argument("--cron", default=None, metavar="EXPR",
                      help='cron expression, in --tz (e.g. "0 2 * * *": every day at 02:00)')
    when.add_argument("--interval", type=float, default=None, metavar="SECONDS",
                      help="a run every SECONDS (with --cron too: both schedules)")
    when.add_argument("--tz", default=None, metavar="ZONE",
                      help="time zone of the cron schedule and of 'today' in relative plan dates (default UTC)")
    when.add_argument("--name", default=None,
                      help="deployment name (default: the pipeline's name); the deployment is FLOW_NAME/NAME")
    when.add_argument("--poll", type=float, default=POLL_SECONDS, metavar="SECONDS",
                      help=f"seconds between looks for due runs (default {POLL_SECONDS:g}); runs start at "
                           "their scheduled time whatever this is")
    when.add_argument("--prefect-port", type=int, default=None, metavar="PORT",
                      help="port of the Prefect server serve starts when PREFECT_API_URL is not set "
                           "(default: a free one)")
    p.add_argument("--output", default=os.environ.get("DISTETL_OUTPUT", "./output"),
                   help="root every target template writes under (default ./output; s3://bucket/prefix works)")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec storage option, repeatable (e.g. endpoint_url=http://127.0.0.1:9000)")
    p.add_argument("--stage", action="append", default=None, metavar="NAME",
                   help="only this stage and the stages it needs (repeatable)")
    p.add_argument("--stale", action="store_true", help="each run redoes stale chunks too")
    p.add_argument("--json", action="store_true", help="print one JSON line per run on stdout")
    p.add_argument("--runner", choices=["local", "remote", "sequential", "cluster"], default=None,
                   help="local Dask cluster per run (default), remote scheduler, or sequential")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes for --runner local or --keep-cluster (default: cores)")
    p.add_argument("--scheduler", default=None,
                   help="remote scheduler tcp://HOST:PORT (or DISTETL_SCHEDULER): every run uses that cluster")
    p.add_argument("--keep-cluster", action="store_true",
                   help="start one local Dask cluster and keep it warm between runs")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to reach a remote scheduler")
    from distetl.ops.clusters import add_cluster_arguments

    add_cluster_arguments(p)
    p.add_argument("--chunks-per-task", type=int, default=None,
                   help="chunks per Prefect task (default: about 8 tasks per worker)")
    p.add_argument("--retries", type=int, default=None, help="times a failing chunk is retried")
    p.add_argument("--retry-delay", type=float, default=None, help="seconds between retries")
    p.add_argument("--chunk-timeout", type=float, default=None, metavar="SECONDS",
                   help="time limit of one try of one chunk")
    from distetl.ops.alerts import add_alert_arguments

    add_alert_arguments(p)


# -- options ------------------------------------------------------------------------------

@dataclass
class ServeOptions:
    """Everything ``serve`` was told, checked."""

    flow: str
    pipeline: Any
    output: str
    params: dict[str, Any]
    storage_options: dict[str, Any]
    schedules: list[Any]
    schedule_text: str
    tz: Optional[str]
    name: str
    poll: float
    spec: Any
    keep_cluster: bool
    workers: Optional[int]
    connect_timeout: float
    prefect_port: Optional[int]
    stages: Optional[list[str]] = None
    stale: bool = False
    chunks_per_task: Optional[int] = None
    json: bool = False
    alerts: Any = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, extra: Sequence[str]) -> "ServeOptions":
        """Check the command line (exit code 2 on anything wrong, before anything starts)."""
        from distetl.ops.alerts import AlertConfig
        from distetl.model.dates import zone
        from distetl.engine.loader import load_pipeline, plan_params
        from distetl.engine.runners import RunnerSpec
        from distetl.storage import parse_storage_options

        zone(args.tz)  # an unknown zone is a usage error
        if args.cron is None and args.interval is None:
            raise ConfigError("a schedule: --cron EXPR and/or --interval SECONDS", "neither",
                              'pass e.g. --cron "0 2 * * *" (every day at 02:00 in --tz) or --interval 3600')
        if args.interval is not None and not args.interval > 0:
            raise ConfigError("--interval above 0 seconds", str(args.interval), "pass e.g. --interval 3600")
        if not args.poll > 0:
            raise ConfigError("--poll above 0 seconds", str(args.poll), "pass e.g. --poll 5")
        schedules, text = _schedules(args.cron, args.interval, args.tz)
        pipeline = load_pipeline(args.flow)
        params = plan_params(pipeline, extra)
        pipeline = pipeline.with_retry_options(args.retries, args.retry_delay, args.chunk_timeout)
        name = args.name or pipeline.name
        _check_name(name)
        if args.keep_cluster:
            given = [flag for flag, value in (("--scheduler", args.scheduler), ("--cluster-class", args.cluster_class),
                                              ("--runner", args.runner), ("--adapt", args.adapt),
                                              ("--worker-memory-limit", args.worker_memory_limit)) if value]
            if given or os.environ.get("DISTETL_SCHEDULER"):
                raise ConfigError(
                    "--keep-cluster alone (it starts a local Dask cluster and keeps it between runs)",
                    f"--keep-cluster with {', '.join(given) or 'DISTETL_SCHEDULER'}",
                    "drop --keep-cluster to run on that cluster (a --scheduler cluster stays warm by itself), "
                    "or drop the other option",
                )
            if args.workers is not None and args.workers < 1:
                raise ConfigError("--workers 1 or more", str(args.workers), "pass e.g. --workers 2")
            spec = None  # the warm cluster's address, once it is up
        else:
            from distetl.ops.clusters import with_memory_limit

            cluster_options = with_memory_limit(args.cluster_option, args.worker_memory_limit,
                                        args.scheduler or os.environ.get("DISTETL_SCHEDULER"))
            spec = RunnerSpec.from_options(args.runner, args.workers, args.scheduler, args.connect_timeout,
                                           cluster_class=args.cluster_class, cluster_options=cluster_options,
                                           adapt=args.adapt)
        return cls(
            flow=args.flow, pipeline=pipeline, output=args.output, params=params,
            storage_options=parse_storage_options(args.storage_option), schedules=schedules, schedule_text=text,
            tz=args.tz, name=name, poll=float(args.poll), spec=spec, keep_cluster=bool(args.keep_cluster),
            workers=args.workers, connect_timeout=args.connect_timeout, prefect_port=args.prefect_port,
            stages=args.stage, stale=bool(args.stale), chunks_per_task=args.chunks_per_task, json=bool(args.json),
            alerts=AlertConfig.from_args(args),
        )


def _schedules(cron: Optional[str], interval: Optional[float], tz: Optional[str]) -> tuple[list[Any], str]:
    """Prefect schedules for ``--cron`` / ``--interval`` in zone ``tz``, and how to say them.

    Raises:
        ConfigError: For a cron expression Prefect does not accept.
    """
    from prefect.schedules import Cron, Interval

    zone_name = tz or "UTC"
    out, text = [], []
    if cron is not None:
        try:
            schedule = Cron(cron, timezone=zone_name)
            from prefect.client.schemas.schedules import CronSchedule

            CronSchedule(cron=cron, timezone=zone_name)  # validates the expression
        except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError or ValueError
            raise ConfigError('a cron expression of five fields, e.g. "0 2 * * *"', repr(cron),
                              f"fix the expression ({_first_line(exc)})") from None
        out.append(schedule)
        text.append(f'cron "{cron}" ({zone_name})')
    if interval is not None:
        out.append(Interval(dt.timedelta(seconds=interval), timezone=zone_name))
        text.append(f"every {interval:g} s")
    return out, " and ".join(text)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _check_name(name: str) -> None:
    if not name or any(c in name for c in "/%&><"):
        raise ConfigError("a deployment name without / % & > <", repr(name), "pass another --name")
