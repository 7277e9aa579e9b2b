"""Clusters a run starts through a Dask deployment library (``--cluster-class``).

Any importable Dask cluster class -- ``dask_jobqueue.SLURMCluster``,
``dask_kubernetes.operator.KubeCluster``, ``coiled.Cluster``, ``distributed.LocalCluster``
-- is built by ``prefect_dask.DaskTaskRunner`` from ``cluster_class``, ``cluster_kwargs``
(``--cluster-option KEY=VALUE``) and ``adapt_kwargs`` (``--adapt min=N,max=M``).

This module parses those options, checks them before anything runs (the class imports;
it accepts every option, as far as its signature tells), and builds the factory the task
runner calls. For an adaptive cluster the factory raises
``distributed.scheduler.unknown-task-duration`` while the cluster (and so its scheduler)
is created: the scheduler sizes an adaptive cluster from the expected duration of the
queued tasks, and a batch of chunks whose duration is not known yet counts as 500 ms by
default, so a cluster that starts empty would grow one worker at a time.

Its command-line options (``--cluster-class``, ``--cluster-option``, ``--adapt``) are
declared in :mod:`distetl.ops.clusters`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional

from distetl.errors import ConfigError

__all__ = [
    "ADAPT_KEYS", "ADAPTIVE_UNKNOWN_TASK_DURATION", "LOCAL_DEFAULTS", "Scaling", "accepted_options",
    "check_cluster", "cluster_conflicts", "cluster_factory", "cluster_runner", "import_cluster_class", "last_scaling", "parse_adapt",
    "memory_limit_bytes", "parse_cluster_options", "planned_threads", "threads_per_worker", "with_memory_limit",
]

#: What a batch of chunks whose duration the scheduler has not measured yet counts as
#: in an adaptive run (Dask's default is 500 ms). Only while the setting is Dask's
#: default: ``DASK_DISTRIBUTED__SCHEDULER__UNKNOWN_TASK_DURATION`` (or a Dask config
#: file) wins.
ADAPTIVE_UNKNOWN_TASK_DURATION = "60s"

_UNKNOWN_KEY = "distributed.scheduler.unknown-task-duration"

#: ``--adapt`` keys: distetl's short names → ``cluster.adapt`` keyword arguments.
ADAPT_KEYS = {"min": "minimum", "minimum": "minimum", "max": "maximum", "maximum": "maximum",
              "interval": "interval", "wait_count": "wait_count", "target_duration": "target_duration"}

#: distetl's settings for a ``distributed.LocalCluster`` (``--cluster-option`` overrides them).
LOCAL_DEFAULTS = {"threads_per_worker": 1, "processes": True, "host": "127.0.0.1", "dashboard_address": ":0"}

_LOCAL_NAMES = ("distributed.LocalCluster", "dask.distributed.LocalCluster", "distributed.deploy.LocalCluster",
                "distributed.deploy.local.LocalCluster")


# -- parsing ------------------------------------------------------------------------------

def _value(text: str) -> Any:
    """A ``KEY=VALUE`` value: JSON where it parses (ints, floats, bools, null, lists,
    objects, quoted strings), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_cluster_options(items: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["cores=4", "memory=16GiB", 'job_extra_directives=["--qos=low"]']`` → keyword
    arguments of the cluster class (a mapping passes through).

    Raises:
        ConfigError: On an item without ``=``, a key that is not a Python identifier, or a
            key given twice.
    """
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError("--cluster-option KEY=VALUE (KEY a keyword argument of the cluster class)",
                              repr(item), "pass e.g. --cluster-option cores=4 --cluster-option memory=16GiB")
        if key in out:
            raise ConfigError(f"--cluster-option {key}=… once", f"{key} twice", f"keep one --cluster-option {key}=…")
        out[key] = _value(text.strip())
    return out


def parse_adapt(text: str | Mapping[str, Any] | None) -> Optional[dict[str, Any]]:
    """``"min=0,max=10"`` → ``{"minimum": 0, "maximum": 10}`` (the keyword arguments of
    ``cluster.adapt``); ``interval``, ``wait_count`` and ``target_duration`` pass on too.

    Raises:
        ConfigError: On a malformed item, an unknown key, a missing ``max``, or bounds
            that are not whole numbers with ``0 <= min <= max`` and ``max >= 1``.
    """
    if text is None:
        return None
    fix = "pass e.g. --adapt min=0,max=10 (workers)"
    items: list[tuple[str, Any]]
    if isinstance(text, Mapping):
        items = list(text.items())
    else:
        items = []
        for part in (p.strip() for p in str(text).split(",")):
            key, sep, value = part.partition("=")
            if not part or not sep or not key.strip():
                raise ConfigError("--adapt min=N,max=M", repr(text), fix)
            items.append((key.strip(), _value(value.strip())))
    out: dict[str, Any] = {}
    for key, value in items:
        if key not in ADAPT_KEYS:
            raise ConfigError(f"--adapt keys among {', '.join(sorted(set(ADAPT_KEYS) - {'minimum', 'maximum'}))}",
                              repr(key), fix)
        name = ADAPT_KEYS[key]
        if name in out:
            raise ConfigError(f"--adapt {key}=… once", repr(text), fix)
        out[name] = value
    out.setdefault("minimum", 0)
    if "maximum" not in out:
        raise ConfigError("--adapt with max=M (the most workers the cluster may grow to)", repr(text), fix)
    low, high = out["minimum"], out["maximum"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)) or low < 0 or high < 1 \
            or low > high:
        raise ConfigError("--adapt whole numbers with 0 <= min <= max and max >= 1",
                          f"min={low!r}, max={high!r}", fix)
    return out


def cluster_conflicts(
    runner: Optional[str], workers: Optional[int], scheduler: Optional[str], scheduler_from_env: bool,
    cluster_class: Optional[str], cluster_options: Any, adapt: Any,
) -> tuple[Optional[str], Optional[int], dict[str, Any], Optional[dict[str, Any]]]:
    """The runner options about a cluster the run starts, checked against each other.

    Returns:
        ``(kind, workers, cluster_options, adapt)``: ``"cluster"`` when a class is given
        (None otherwise: the caller decides), ``--workers`` (None for ``cluster``, where
        it becomes the class's ``n_workers``), the parsed options and adapt arguments.

    Raises:
        ConfigError: ``--scheduler`` (or ``DISTETL_SCHEDULER``) with ``--cluster-class``,
            ``--workers`` with ``--adapt``, cluster options with ``remote`` or
            ``sequential``, ``--runner cluster`` without a class, a ``cluster`` run with
            no size (neither ``--adapt`` nor ``--workers``/``n_workers``).
    """
    options = parse_cluster_options(cluster_options)
    adapt_kwargs = parse_adapt(adapt)
    where = f"{'DISTETL_SCHEDULER=' if scheduler_from_env else '--scheduler '}{scheduler}"
    if cluster_class and scheduler:
        raise ConfigError(
            "either --scheduler (a cluster that is already running) or --cluster-class (a cluster the run "
            "starts), not both", f"{where} with --cluster-class {cluster_class}",
            "drop --cluster-class to use the running cluster" + (
                ", or unset DISTETL_SCHEDULER" if scheduler_from_env else ", or drop --scheduler"),
        )
    if workers is not None and adapt_kwargs is not None:
        raise ConfigError(
            "either --workers N (a fixed size) or --adapt min=N,max=M (a size that follows the work)",
            f"--workers {workers} with --adapt", "drop one of them",
        )
    kind = None
    if cluster_class:
        if runner not in (None, "cluster"):
            raise ConfigError(f"--cluster-class with --runner cluster (or no --runner)",
                              f"--runner {runner}", "drop --runner (the class implies --runner cluster)")
        kind = "cluster"
    elif runner == "cluster":
        raise ConfigError("--cluster-class MODULE.CLASS with --runner cluster", "none",
                          "pass e.g. --cluster-class dask_jobqueue.SLURMCluster")
    plain = runner or ("remote" if scheduler else "local")
    if kind is None and plain in ("remote", "sequential") and (options or adapt_kwargs is not None):
        flag = "--adapt" if adapt_kwargs is not None else "--cluster-option"
        raise ConfigError(
            f"{flag} only for a cluster the run starts (--runner local, or --cluster-class)",
            f"{flag} with " + (where if plain == "remote" else "--runner sequential"),
            f"drop {flag}" + (" (size a running cluster where it was started)" if plain == "remote" else ""),
        )
    if kind == "cluster":
        if workers is not None:
            if "n_workers" in options:
                raise ConfigError("the cluster's size once", "--workers and --cluster-option n_workers",
                                  "drop one of them")
            if workers < 1:
                raise ConfigError("--workers 1 or more", str(workers), "pass e.g. --workers 4")
            options["n_workers"] = workers
            workers = None
        if adapt_kwargs is None and not (isinstance(options.get("n_workers"), int) and options["n_workers"] > 0):
            raise ConfigError(
                f"a size for the cluster {cluster_class} starts", "neither --adapt nor --workers",
                "pass --adapt min=0,max=N (workers join as the work needs them) or --workers N",
            )
    if adapt_kwargs is not None and options.get("n_workers"):
        raise ConfigError("either --adapt or a fixed n_workers", "both",
                          "drop --cluster-option n_workers (the adaptive minimum is where it starts)")
    return kind, workers, options, adapt_kwargs


# -- the class and its options ------------------------------------------------------------

def memory_limit_bytes(limit: Any, scheduler: Any = None) -> int:
    """``--worker-memory-limit`` (``worker_memory_limit=``) in bytes.

    Args:
        limit: A size Dask parses (``"2GiB"``, ``"512MB"``) or a number of bytes.
        scheduler: The remote scheduler's address, if the run has one.

    Raises:
        ConfigError: A size Dask cannot parse, or a limit for a remote cluster (its
            workers are started elsewhere, with their own limit).
    """
    if scheduler:
        raise ConfigError(
            "--worker-memory-limit only for a cluster the run starts (local, or --cluster-class)",
            f"--worker-memory-limit {limit} with the remote scheduler {scheduler}",
            "a remote cluster's workers set their own limit where they start: "
            f"dask worker {scheduler} --memory-limit {limit} (drop --worker-memory-limit here)",
        )
    from dask.utils import parse_bytes

    try:
        size = int(limit) if isinstance(limit, (int, float)) and not isinstance(limit, bool) \
            else parse_bytes(str(limit))
    except (ValueError, TypeError):
        size = 0
    if size <= 0:
        raise ConfigError("--worker-memory-limit as a size such as 2GiB, 512MiB or 4GB", repr(limit),
                          "pass e.g. --worker-memory-limit 2GiB")
    return size


def with_memory_limit(options: Any, limit: Any, scheduler: Any = None) -> list[str]:
    """``--cluster-option`` strings with ``--worker-memory-limit`` added as ``memory_limit``.

    Args:
        options: The ``--cluster-option`` strings.
        limit: The ``--worker-memory-limit`` value (None: none).
        scheduler: The remote scheduler's address, if the run has one.

    Raises:
        ConfigError: See :func:`memory_limit_bytes`; also a ``memory_limit`` among the
            options.
    """
    options = list(options or [])
    if limit is None:
        return options
    size = memory_limit_bytes(limit, scheduler)
    if any(o.split("=", 1)[0].strip() == "memory_limit" for o in options if isinstance(o, str)):
        raise ConfigError("one memory limit", f"--worker-memory-limit {limit} and --cluster-option memory_limit=…",
                          "keep one of them")
    return [*options, f"memory_limit={size}"]


def is_local_cluster(name: Optional[str]) -> bool:
    """Whether a ``--cluster-class`` names ``distributed.LocalCluster`` (or none is given)."""
    return name is None or name in _LOCAL_NAMES


def _pip_name(module: str) -> str:
    return module.split(".")[0].replace("_", "-")


def import_cluster_class(name: str) -> Any:
    """Import ``MODULE.CLASS`` (``dask_jobqueue.SLURMCluster``, ``coiled.Cluster``…).

    Raises:
        ConfigError: If the module does not import (naming the package to install), the
            class is not in it, or it is not a class.
    """
    module_name, _, attr = name.rpartition(".")
    if not module_name or not attr:
        raise ConfigError("--cluster-class MODULE.CLASS, e.g. dask_jobqueue.SLURMCluster", repr(name),
                          "pass the class with its module")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module_name
        package = _pip_name(module_name)
        also = ""
        if missing.split(".")[0] != module_name.split(".")[0]:
            also = f" ({module_name} needs {missing.split('.')[0]}: pip install {_pip_name(missing)})"
        raise ConfigError(
            f"the cluster class {name} importable", f"ImportError: {exc}",
            f"install the package that provides it in this environment: pip install {package}{also}",
        ) from None
    cls = getattr(module, attr, None)
    if cls is None:
        near = [n for n in dir(module) if n.endswith("Cluster") and not n.startswith("_")]
        raise ConfigError(
            f"a class {attr} in {module_name}", "no such attribute",
            f"pass one of {', '.join(f'{module_name}.{n}' for n in near)}" if near else "check the name",
        )
    if not callable(cls):
        raise ConfigError(f"{name} to be a cluster class", type(cls).__name__, "check the name")
    return cls


def _init_params(cls: Any) -> tuple[list[str], bool]:
    """Keyword parameters of ``cls.__init__`` (without ``self``), and whether it takes
    ``**kwargs``."""
    try:
        signature = inspect.signature(cls.__init__ if inspect.isclass(cls) else cls)
    except (TypeError, ValueError):
        return [], True
    names = [p.name for p in signature.parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]
    return names, any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())


def _super_chain(cls: Any) -> tuple[list[str], bool]:
    """Keyword parameters of ``cls.__init__`` and of the ``__init__`` above it in its MRO
    while each takes ``**kwargs`` (the ``super().__init__(**kwargs)`` pattern), and
    whether the chain ends in an ``__init__`` without ``**kwargs``."""
    names: list[str] = []
    if not inspect.isclass(cls):
        own, open_ = _init_params(cls)
        return own, not open_
    definers = [c for c in cls.__mro__ if "__init__" in vars(c) and c is not object]
    for definer in definers:
        own, open_ = _init_params(definer)
        names += [n for n in own if n not in names]
        if not open_:
            return names, True
    return names, not definers


def _mro_names(cls: Any) -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in getattr(cls, "__mro__", ())}


def _is_jobqueue(cls: Any) -> bool:
    return "dask_jobqueue.core.JobQueueCluster" in _mro_names(cls) and getattr(cls, "job_cls", None) is not None


def _local_jobs(cls: Any) -> bool:
    """Whether a dask-jobqueue class runs its jobs as local processes (``LocalJob``)."""
    return _is_jobqueue(cls) and "dask_jobqueue.local.LocalJob" in _mro_names(cls.job_cls)


def _is_distributed_local(cls: Any) -> bool:
    return "distributed.deploy.local.LocalCluster" in _mro_names(cls)


def accepted_options(cls: Any) -> tuple[list[str], bool]:
    """The keyword arguments a cluster class accepts, and whether that list is complete.

    Complete for ``distributed.LocalCluster`` (its ``**worker_kwargs`` go to its workers:
    ``Nanny`` and ``Worker``), for dask-jobqueue classes (``**job_kwargs`` go to the
    class's ``job_cls``), and for classes without ``**kwargs``. For other classes the
    ``**kwargs`` are followed up the class's MRO, which is only a guess.
    """
    own, open_ = _init_params(cls)
    if not open_:
        return own, True
    if _is_jobqueue(cls):
        job, closed = _super_chain(cls.job_cls)
        return own + [n for n in job if n not in own and n not in ("scheduler", "name")], closed
    if _is_distributed_local(cls):
        from distributed import Nanny, Worker

        names = list(own)
        closed = True
        for part in (Nanny, Worker):
            more, part_closed = _super_chain(part)
            closed = closed and part_closed
            names += [n for n in more if n not in names]
        return names, closed
    chain, _closed = _super_chain(cls)
    return chain, False


def _close_matches(name: str, names: list[str]) -> list[str]:
    import difflib

    return difflib.get_close_matches(name, names, n=3, cutoff=0.6)


def check_cluster(class_name: Optional[str], options: Mapping[str, Any], adapt: Optional[Mapping[str, Any]],
                  warn: Callable[[str], None] | None = None) -> Any:
    """Check, without starting anything, that a cluster can be built as asked.

    The class imports; every option is a keyword argument it accepts (an unknown one is an
    error where the class's signature says so for certain, a warning where the class
    takes ``**kwargs`` it hands on to code distetl cannot see); a dask-jobqueue class gets
    its job script built (which checks ``cores``, ``memory`` and the job options); the
    ``--adapt`` keys are arguments of the class's ``adapt``.

    Args:
        class_name: ``MODULE.CLASS``, or None for ``distributed.LocalCluster``.
        options: The class's keyword arguments (as passed).
        adapt: ``cluster.adapt`` keyword arguments, or None.
        warn: Where warnings go (default: standard error).

    Returns:
        The class.

    Raises:
        ConfigError: Naming the package to install, the unknown option (and the accepted
            ones), or the option the class rejects.
    """
    warn = warn or (lambda text: print(f"warning: {text}", file=sys.stderr))
    if is_local_cluster(class_name):
        from distributed import LocalCluster as cls
        name = "distributed.LocalCluster"
    else:
        cls = import_cluster_class(class_name or "")
        name = class_name or ""
    if "asynchronous" in options:
        raise ConfigError(f"options of {name} other than asynchronous", "asynchronous",
                          "drop --cluster-option asynchronous (the task runner drives the cluster synchronously)")
    accepted, complete = accepted_options(cls)
    unknown = [k for k in options if k not in accepted]
    for key in unknown:
        near = _close_matches(key, accepted)
        hint = f"did you mean {' or '.join(near)}? " if near else ""
        if complete:
            raise ConfigError(
                f"--cluster-option keys that {name} accepts ({', '.join(sorted(accepted))})",
                repr(key), f"{hint}drop or rename --cluster-option {key}=…",
            )
        warn(f"{name} takes **kwargs that distetl cannot follow: --cluster-option {key} is passed on "
             f"unchecked ({hint}its named options: {', '.join(sorted(accepted))})")
    if _is_jobqueue(cls):
        _check_jobqueue(cls, name, options)
    if adapt:
        _check_adapt(cls, name, adapt)
    return cls


def _check_jobqueue(cls: Any, name: str, options: Mapping[str, Any]) -> None:
    """Build the job a dask-jobqueue class would submit (no submission): it checks that
    ``cores`` and ``memory`` are given and every job option is valid."""
    for moved in ("host", "dashboard_address"):
        if moved in options:
            raise ConfigError(
                f"{name}'s {moved} inside scheduler_options", f"--cluster-option {moved}=…",
                f"pass --cluster-option 'scheduler_options={{\"{moved}\": …}}' instead",
            )
    cluster_params, _ = _init_params(cls)
    job_kwargs = {k: v for k, v in options.items() if k not in cluster_params}
    for shared in ("config_name", "interface", "protocol"):
        if shared in options:
            job_kwargs[shared] = options[shared]
    try:
        cls.job_cls("tcp://127.0.0.1:8786", name="distetl-check", **job_kwargs)
    except (ValueError, TypeError, KeyError) as exc:
        text = " ".join(str(exc).split())
        raise ConfigError(f"options {name} can build a job from", f"{type(exc).__name__}: {text[:400]}",
                          "fix the --cluster-option values it names (cores and memory are required, "
                          "e.g. --cluster-option cores=4 --cluster-option memory=16GiB)") from None


def _check_adapt(cls: Any, name: str, adapt: Mapping[str, Any]) -> None:
    method = getattr(cls, "adapt", None)
    if method is None:
        raise ConfigError(f"{name} to support adaptive scaling (an adapt method)", "none",
                          "size it with --workers N instead of --adapt")
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    for key in adapt:
        if key not in params:
            names = [n for n in params if n != "self"]
            raise ConfigError(f"--adapt keys that {name}.adapt accepts ({', '.join(names)})", repr(key),
                              f"drop {key} from --adapt")


def threads_per_worker(class_name: Optional[str], options: Mapping[str, Any]) -> int:
    """Threads each worker of the cluster will have, as far as the options say:
    ``threads_per_worker``; a dask-jobqueue job's cores per worker process;
    ``worker_options={"nthreads": N}`` (Coiled); ``--nthreads N`` in a worker command;
    otherwise 1 (distetl's own local clusters use one thread per worker)."""
    if isinstance(options.get("threads_per_worker"), int):
        return max(1, options["threads_per_worker"])
    if is_local_cluster(class_name):
        return 1
    worker_options = options.get("worker_options")
    if isinstance(worker_options, Mapping) and isinstance(worker_options.get("nthreads"), int):
        return max(1, worker_options["nthreads"])
    for key in ("worker_command", "worker_extra_args"):
        words = options.get(key)
        words = words.split() if isinstance(words, str) else list(words or [])
        for i, word in enumerate(words[:-1]):
            if word in ("--nthreads", "--nworkers-threads") and str(words[i + 1]).isdigit():
                return max(1, int(words[i + 1]))
    try:
        cls = import_cluster_class(class_name or "")
        if _is_jobqueue(cls):
            cluster_params, _ = _init_params(cls)
            job = cls.job_cls("tcp://127.0.0.1:8786", name="distetl-check",
                              **{k: v for k, v in options.items() if k not in cluster_params})
            return max(1, int(job.worker_process_threads))
    except Exception:  # noqa: BLE001 - an estimate: check_cluster reports real problems
        pass
    return 1


# -- the factory the task runner calls ----------------------------------------------------

@dataclass
class Scaling:
    """How an adaptive cluster's size moved during a run (polled from the cluster).

    Attributes:
        cluster: The class, ``MODULE.CLASS``.
        minimum, maximum: The adaptive bounds (workers).
        at_start: Workers connected right after the cluster was created.
        peak: Most workers connected at once.
        seen: Every worker address that connected.
        last: Workers connected when polling stopped (the cluster closing).
    """

    cluster: str
    minimum: int
    maximum: int
    at_start: int = 0
    peak: int = 0
    last: int = 0
    seen: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "adapt": {"minimum": self.minimum, "maximum": self.maximum},
                "workers_at_start": self.at_start, "workers_peak": self.peak, "workers_seen": len(self.seen)}

    def describe(self) -> str:
        return (f"adaptive cluster {self.cluster} ({self.minimum}..{self.maximum} workers): "
                f"{self.at_start} worker(s) at start, grew to {self.peak}; {len(self.seen)} worker(s) took part")


_SCALINGS: list[Scaling] = []


def last_scaling() -> Optional[Scaling]:
    """The :class:`Scaling` of the last adaptive cluster this process started, if any."""
    return _SCALINGS[-1] if _SCALINGS else None


def _workers_of(cluster: Any) -> dict[str, Any]:
    info = getattr(cluster, "scheduler_info", None) or {}
    try:
        return dict(info.get("workers") or {})
    except Exception:  # noqa: BLE001 - a cluster mid-close
        return {}


def _watch(cluster: Any, scaling: Scaling, interval: float = 0.2) -> None:
    """Poll the cluster's worker list until it closes (a daemon thread)."""
    from distributed.core import Status

    def poll() -> None:
        seen = set(scaling.seen)
        while getattr(cluster, "status", None) not in (Status.closing, Status.closed, Status.failed):
            workers = _workers_of(cluster)
            scaling.last = len(workers)
            scaling.peak = max(scaling.peak, len(workers))
            for address in workers:
                if address not in seen:
                    seen.add(address)
                    scaling.seen.append(address)
            time.sleep(interval)

    threading.Thread(target=poll, name="distetl-scaling", daemon=True).start()


def _keep_results_if_close_fails(cluster: Any, name: str) -> None:
    """Make the cluster's ``close`` (called by the task runner as the flow run ends) warn
    instead of raising: a deployment library failing to tear down (a job that never got
    an id, an API timeout) must not lose the run's results, report and manifest."""
    original = cluster.close

    def close(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reported; the run's outcome stands
            text = " ".join(str(exc).split())[:300]
            print(f"warning: closing the {name} cluster failed ({type(exc).__name__}: {text}); look for "
                  "jobs, pods or machines it left running", file=sys.stderr)
            return None

    cluster.close = close


def cluster_factory(class_name: Optional[str], adapt: Optional[Mapping[str, Any]], planned: int) -> Callable[..., Any]:
    """The ``cluster_class`` handed to ``DaskTaskRunner``: builds the cluster from its
    keyword arguments.

    ``distributed.LocalCluster`` goes through :func:`distetl.engine.runners.local_cluster` (its
    workers ignore the terminal's Ctrl-C). For an adaptive cluster the scheduler is
    created with ``distributed.scheduler.unknown-task-duration`` at
    :data:`ADAPTIVE_UNKNOWN_TASK_DURATION` (unless configured otherwise), and its size
    is recorded (:func:`last_scaling`).

    Args:
        class_name: ``MODULE.CLASS``, or None for ``distributed.LocalCluster``.
        adapt: The ``adapt`` keyword arguments, or None.
        planned: Worker threads the cluster may have (adapt maximum or worker count ×
            threads per worker): the flow keeps twice that many batches in flight even
            while the cluster is still empty (:func:`planned_threads`).
    """

    def make_cluster(**kwargs: Any) -> Any:
        import dask

        from distetl.engine.runners import local_cluster

        build = local_cluster if is_local_cluster(class_name) else import_cluster_class(class_name or "")
        if _local_jobs(build):
            # dask-jobqueue's local mode knows a job has started when its worker logs
            # "Registered to:" (INFO): the command line's quieter worker logging
            # (DASK_LOGGING__DISTRIBUTED=warning) would leave every job "starting" for good.
            os.environ["DASK_LOGGING__DISTRIBUTED"] = "info"
        settings: dict[str, Any] = {}
        if adapt:
            from dask.utils import parse_timedelta

            if parse_timedelta(dask.config.get(_UNKNOWN_KEY, "500ms")) == 0.5:
                settings[_UNKNOWN_KEY] = ADAPTIVE_UNKNOWN_TASK_DURATION
        with dask.config.set(settings):
            cluster = build(**kwargs)
        _keep_results_if_close_fails(cluster, class_name or "distributed.LocalCluster")
        if adapt:
            scaling = Scaling(class_name or "distributed.LocalCluster", int(adapt.get("minimum", 0)),
                              int(adapt["maximum"]))
            workers = _workers_of(cluster)
            scaling.at_start = scaling.peak = scaling.last = len(workers)
            scaling.seen = list(workers)
            _SCALINGS.append(scaling)
            _watch(cluster, scaling)
        return cluster

    make_cluster.distetl_planned_threads = planned  # type: ignore[attr-defined]
    make_cluster.__qualname__ = make_cluster.__name__ = f"distetl_{(class_name or 'LocalCluster').rsplit('.', 1)[-1]}"
    return make_cluster


def cluster_runner(spec: Any, **runner_kwargs: Any) -> Any:
    """The ``DaskTaskRunner`` of a :class:`~distetl.engine.runners.RunnerSpec` whose run starts its
    own cluster from a class, options and adapt arguments.

    ``distributed.LocalCluster`` gets distetl's settings (:data:`LOCAL_DEFAULTS`, one worker
    per core or the adaptive minimum), which the options override.
    """
    from prefect_dask import DaskTaskRunner

    kwargs = dict(spec.cluster_options)
    if is_local_cluster(spec.cluster_class):
        size = spec.adapt["minimum"] if spec.adapt else (kwargs.get("n_workers") or spec.n_workers)
        kwargs = {"n_workers": size, **LOCAL_DEFAULTS, **{k: v for k, v in kwargs.items() if k != "n_workers"}}
    factory = cluster_factory(spec.cluster_class, spec.adapt, spec.batch_threads)
    return DaskTaskRunner(cluster_class=factory, cluster_kwargs=kwargs, adapt_kwargs=dict(spec.adapt or {}),
                          **runner_kwargs)


def planned_threads(task_runner: Any) -> int:
    """Worker threads the task runner's cluster is planned to have (0 if not known): what
    the flow sizes its batches in flight by while an adaptive or starting cluster has
    fewer workers than it will."""
    return int(getattr(getattr(task_runner, "cluster_class", None), "distetl_planned_threads", 0) or 0)
