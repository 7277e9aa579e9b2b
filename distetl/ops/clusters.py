"""The command line of clusters a run starts through a Dask deployment library.

``--cluster-class``, ``--cluster-option`` and ``--adapt`` (for ``distetl run`` and
``distetl serve``) and the line that says how an adaptive cluster grew. Parsing, checking
and building the cluster is the engine's (:mod:`distetl.engine.clusters`); its names are
importable from here too.
"""

from __future__ import annotations

from typing import Any

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
    with_memory_limit,
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


def print_scaling(console: Any) -> None:
    """Say how an adaptive cluster of this run grew (nothing for other runs)."""
    scaling = last_scaling()
    if scaling is not None:
        console.print(f"cluster:  {scaling.describe()}", highlight=False, soft_wrap=True)
