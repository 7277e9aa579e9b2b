"""The command line of clusters a run starts through a Dask deployment library.

``--cluster-class``, ``--cluster-option`` and ``--adapt`` (for ``distetl run`` and
``distetl serve``) and the line that says how an adaptive cluster grew. Parsing, checking
and building the cluster is the engine's (:mod:`distetl.engine.clusters`); its names are
importable from here too.
"""

from __future__ import annotations

from typing import Any

from distetl.errors import ConfigError
from distetl.engine.clusters import (
    ADAPT_KEYS,
    ADAPTIVE_UNKNOWN_TASK_DURATION,
    LOCAL_DEFAULTS,
    Scaling,
    accepted_options,
    check_cluster,
    cluster_conflicts,
    cluster_factory,
    cluster_runner,
    import_cluster_class,
    last_scaling,
    parse_adapt,
    parse_cluster_options,
    planned_threads,
    threads_per_worker,
)

__all__ = [
    "ADAPT_KEYS", "ADAPTIVE_UNKNOWN_TASK_DURATION", "LOCAL_DEFAULTS", "Scaling", "accepted_options",
    "check_cluster", "cluster_conflicts", "cluster_factory", "cluster_runner", "import_cluster_class",
    "last_scaling", "parse_adapt", "with_memory_limit", "parse_cluster_options", "planned_threads", "threads_per_worker",
]


# -- the command line ---------------------------------------------------------------------

def add_cluster_arguments(parser: Any) -> None:
    """``distetl run``'s options for a cluster the run starts through a deployment library."""
    parser.add_argument("--cluster-class", default=None, metavar="MODULE.CLASS",
                        help="start this Dask cluster class for the run (dask_jobqueue.SLURMCluster, "
                             "dask_kubernetes.operator.KubeCluster, coiled.Cluster, distributed.LocalCluster…)")
    parser.add_argument("--cluster-option", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword argument of the cluster class, repeatable; VALUE is JSON where it parses "
                             "(4, 1.5, true, [\"--qos=low\"]), else a string (16GiB)")
    parser.add_argument("--adapt", default=None, metavar="min=N,max=M",
                        help="scale the cluster the run starts adaptively between N and M workers")
    parser.add_argument("--worker-memory-limit", default=None, metavar="SIZE",
                        help="memory limit of each worker of a cluster the run starts (2GiB, 512MB; Dask's "
                             "nanny restarts a worker past 95%% of it); remote workers: dask worker --memory-limit")


def with_memory_limit(options: Any, limit: Any, scheduler: Any = None) -> list[str]:
    """``--cluster-option`` strings with ``--worker-memory-limit`` added as ``memory_limit``.

    Args:
        options: The ``--cluster-option`` strings.
        limit: The ``--worker-memory-limit`` value (None: none).
        scheduler: The remote scheduler's address, if the run has one.

    Raises:
        ConfigError: A size Dask cannot parse, or a limit for a remote cluster (its
            workers are started elsewhere, with their own limit).
    """
    options = list(options or [])
    if limit is None:
        return options
    if scheduler:
        raise ConfigError(
            "--worker-memory-limit only for a cluster the run starts (local, or --cluster-class)",
            f"--worker-memory-limit {limit} with the remote scheduler {scheduler}",
            "a remote cluster's workers set their own limit where they start: "
            f"dask worker {scheduler} --memory-limit {limit} (drop --worker-memory-limit here)",
        )
    from dask.utils import parse_bytes

    try:
        size = parse_bytes(str(limit))
    except (ValueError, TypeError):
        size = 0
    if size <= 0:
        raise ConfigError("--worker-memory-limit as a size such as 2GiB, 512MiB or 4GB", repr(limit),
                          "pass e.g. --worker-memory-limit 2GiB")
    if any(o.split("=", 1)[0].strip() == "memory_limit" for o in options if isinstance(o, str)):
        raise ConfigError("one memory limit", f"--worker-memory-limit {limit} and --cluster-option memory_limit=…",
                          "keep one of them")
    return [*options, f"memory_limit={size}"]


def print_scaling(console: Any) -> None:
    """Say how an adaptive cluster of this run grew (nothing for other runs)."""
    scaling = last_scaling()
    if scaling is not None:
        console.print(f"cluster:  {scaling.describe()}", highlight=False, soft_wrap=True)
