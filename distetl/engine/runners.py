"""Where chunk tasks run: a local Dask cluster, a remote scheduler, or one thread.

This module builds the Prefect task runner and checks, before anything is planned as
running, that a remote cluster is usable: the scheduler answers as a Dask scheduler
within the connect timeout, at least one worker is connected, every worker runs the
driver's distetl and Python, and every worker can load the flow's code.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import urlparse

from distetl.engine.clusters import (
    check_cluster, cluster_conflicts, cluster_runner, memory_limit_bytes, threads_per_worker, with_memory_limit,
)
from distetl.errors import ClusterError, ConfigError
from distetl.model.plans import FileList

__all__ = ["RunnerSpec", "ClusterFacts", "SCHEDULER_ENV", "local_cluster", "probe_cluster"]

SCHEDULER_ENV = "DISTETL_SCHEDULER"
RUNNERS = ("local", "remote", "sequential", "cluster")

_TLS_FIX = (
    "for tls:// give the client its certificates through Dask's security configuration "
    "(distributed.comm.tls.ca-file, .client.cert, .client.key in ~/.config/dask/*.yaml, or "
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE / __CLIENT__CERT / __CLIENT__KEY; see cluster/README.md)"
)


@dataclass(frozen=True)
class ClusterFacts:
    """What the pre-flight check learned about a remote cluster.

    Attributes:
        address: The scheduler address.
        workers: Worker address → what the worker reported (``nthreads``, ``python``,
            ``distetl``, ``host``).
        dashboard: The scheduler's dashboard URL, if it serves one.
    """

    address: str
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboard: Optional[str] = None

    @property
    def threads(self) -> int:
        """Worker threads in the cluster (at least 1)."""
        return max(1, sum(int(w.get("nthreads") or 1) for w in self.workers.values()))


@dataclass(frozen=True)
class RunnerSpec:
    """Which runner a backfill uses.

    Attributes:
        kind: ``local`` (a LocalCluster, one process per worker, one thread each),
            ``remote`` (an existing scheduler), ``cluster`` (a cluster the run starts
            from ``cluster_class``: SLURM, Kubernetes, Coiled…), or ``sequential``
            (Prefect's ``ThreadPoolTaskRunner(max_workers=1)``: the baseline).
        workers: Worker processes for ``local``; defaults to the number of cores.
        scheduler: ``tcp://host:port`` (or ``tls://host:port``) for ``remote``.
        connect_timeout: Seconds to wait for a remote scheduler (TCP connect, Dask
            handshake) and for its first worker.
        performance_report: Write Dask's performance report of the run to this HTML
            file (Dask runners only; see :mod:`distetl.engine.watch`).
        cluster_class: ``MODULE.CLASS`` of the Dask cluster ``cluster`` starts.
        cluster_options: Keyword arguments of that class (or, for ``local``, overrides
            of distetl's ``LocalCluster`` settings).
        adapt: ``cluster.adapt`` keyword arguments (``minimum``, ``maximum`` workers…)
            for an adaptive ``local`` or ``cluster`` run; None for a fixed size.
    """

    kind: str = "local"
    workers: int | None = None
    scheduler: str | None = None
    connect_timeout: float = 10.0
    performance_report: str | None = None
    cluster_class: str | None = None
    cluster_options: dict[str, Any] = field(default_factory=dict)
    adapt: dict[str, Any] | None = None

    @classmethod
    def from_options(
        cls, runner: str | None, workers: int | None, scheduler: str | None, connect_timeout: float = 10.0,
        performance_report: str | None = None, *, cluster_class: str | None = None,
        cluster_options: Any = None, adapt: Any = None,
    ) -> "RunnerSpec":
        """Resolve command-line options and ``DISTETL_SCHEDULER`` into one spec.

        A scheduler address (flag or environment) implies ``remote``; a cluster class
        implies ``cluster``. ``cluster_options`` are ``KEY=VALUE`` strings (values parsed
        as JSON where they parse) or a mapping; ``adapt`` is ``"min=N,max=M"`` or a
        mapping.

        Raises:
            ConfigError: On conflicting or unknown options.
        """
        env_scheduler = None if scheduler else os.environ.get(SCHEDULER_ENV) or None
        scheduler = scheduler or env_scheduler
        kind, workers, cluster_options, adapt = cluster_conflicts(
            runner, workers, scheduler, env_scheduler is not None, cluster_class, cluster_options, adapt)
        kind = kind or runner or ("remote" if scheduler else "local")
        if kind not in RUNNERS:
            raise ConfigError(f"--runner one of {', '.join(RUNNERS)}", repr(kind), "pass --runner local")
        if kind == "remote" and not scheduler:
            raise ConfigError(
                "a scheduler address for --runner remote", "none",
                f"pass --scheduler tcp://HOST:8786 or set {SCHEDULER_ENV}",
            )
        if scheduler and kind != "remote":
            raise ConfigError(
                f"no scheduler address with --runner {kind}", repr(scheduler),
                f"drop --runner {kind} (the address implies remote) or unset {SCHEDULER_ENV}",
            )
        if workers is not None and workers < 1:
            raise ConfigError("--workers 1 or more", str(workers), "pass e.g. --workers 2")
        if workers is not None and kind != "local":
            raise ConfigError(
                f"--workers only with --runner local", f"--workers {workers} with {kind}",
                "size a remote cluster where it is started (distetl cluster up --workers N)",
            )
        if not connect_timeout or connect_timeout <= 0:
            raise ConfigError("--connect-timeout above 0 seconds", str(connect_timeout), "pass e.g. --connect-timeout 10")
        if performance_report is not None:
            from distetl.engine.watch import check_performance_report

            performance_report = check_performance_report(performance_report, kind)
        return cls(kind=kind, workers=workers, scheduler=scheduler, connect_timeout=connect_timeout,
                   performance_report=performance_report, cluster_class=cluster_class,
                   cluster_options=cluster_options, adapt=adapt)

    @classmethod
    def for_run(cls, runner: "str | RunnerSpec | None", workers: int | None = None, scheduler: str | None = None,
                worker_memory_limit: Any = None) -> "RunnerSpec":
        """The Python API's runner (:func:`distetl.run`): ``runner`` as given when it is a
        spec, else one from the options; ``worker_memory_limit`` (``"2GiB"``, bytes) is the
        ``memory_limit`` of each worker of a cluster the run starts.

        Raises:
            ConfigError: Conflicting options, a size Dask cannot parse, or a limit for a
                remote cluster (its workers take ``dask worker --memory-limit``).
        """
        if not isinstance(runner, RunnerSpec):
            remote = scheduler or os.environ.get(SCHEDULER_ENV) or None
            return cls.from_options(runner, workers, scheduler,
                                    cluster_options=with_memory_limit([], worker_memory_limit, remote) or None)
        if worker_memory_limit is None:
            return runner
        size = memory_limit_bytes(worker_memory_limit, runner.scheduler if runner.kind == "remote" else None)
        if runner.kind == "sequential" or "memory_limit" in runner.cluster_options:
            raise ConfigError("one memory limit, for a cluster the run starts",
                              f"worker_memory_limit={worker_memory_limit!r} with {runner.describe()}",
                              "drop worker_memory_limit (or the runner's own memory_limit)")
        return replace(runner, cluster_options={**runner.cluster_options, "memory_limit": size})

    @property
    def n_workers(self) -> int:
        if self.kind == "cluster":
            return int(self.cluster_options.get("n_workers") or 0)
        return self.workers or self.cluster_options.get("n_workers") or os.cpu_count() or 1

    @property
    def batch_threads(self) -> int:
        """Worker threads a cluster this run starts will have at most (adapt maximum, or
        its workers, times threads per worker): what batches are sized for."""
        workers = self.adapt["maximum"] if self.adapt else self.n_workers
        return max(1, workers * threads_per_worker(self.cluster_class, self.cluster_options))

    @property
    def address(self) -> Optional[str]:
        """The scheduler address with its scheme (``tcp://`` when none was given)."""
        if not self.scheduler:
            return None
        return self.scheduler if "://" in self.scheduler else f"tcp://{self.scheduler}"

    def check(self, pipeline: Any = None, paths: Sequence[tuple[str, str]] = ()) -> Optional[ClusterFacts]:
        """Fail fast when a remote cluster cannot run the backfill.

        Checks, each within ``connect_timeout``: the address is well formed; a TCP
        connection opens; the listener answers as a Dask scheduler; at least one worker
        is connected; every worker imports the driver's distetl version under the same
        Python minor version; and, given a pipeline, every worker can load the flow's
        code (the shipped flow file and everything it imports); and, given paths, every
        worker sees the driver's local output folder and local sources (a remote
        worker on another host does not: a run would write its output where the
        driver cannot read it).

        For a cluster the run starts (``cluster``, or ``local`` with options): the class
        imports and accepts the options and ``adapt`` keys (:func:`distetl.engine.clusters.check_cluster`).

        Args:
            pipeline: The pipeline to check the workers can load (optional).
            paths: Local paths every worker must see (see :func:`worker_paths`).

        Returns:
            What was learned about the cluster, or None for local runners.

        Raises:
            ClusterError: With the address, what went wrong and the fix.
            ConfigError: A cluster class that does not import or rejects an option.
        """
        if self.kind == "cluster" or (self.kind == "local" and (self.cluster_options or self.adapt)):
            check_cluster(self.cluster_class, self.cluster_options, self.adapt)
            return None
        if self.kind != "remote":
            return None
        address = self.address or ""
        parsed = urlparse(address)
        try:
            port = parsed.port
        except ValueError:
            port = None
        if parsed.scheme not in ("tcp", "tls") or not parsed.hostname or not port:
            raise ClusterError(
                "a scheduler address like tcp://HOST:8786", repr(self.scheduler),
                f"pass --scheduler tcp://HOST:PORT or set {SCHEDULER_ENV} "
                "(tls://HOST:PORT with Dask's TLS configuration)",
            )
        try:
            with socket.create_connection((parsed.hostname, port), timeout=self.connect_timeout):
                pass
        except OSError as exc:
            raise ClusterError(
                f"a Dask scheduler listening at {address}",
                f"{type(exc).__name__}: {exc or 'timed out'} (after at most {self.connect_timeout:g}s)",
                "start one (`distetl cluster up`, or `dask scheduler` on that host) or fix --scheduler / "
                f"{SCHEDULER_ENV}; check firewalls between here and the scheduler; raise --connect-timeout "
                "for slow networks",
            ) from None
        return probe_cluster(address, self.connect_timeout, pipeline, paths)

    def task_runner(self) -> Any:
        """The Prefect task runner for this spec."""
        if self.kind == "sequential":
            from prefect.task_runners import ThreadPoolTaskRunner

            return ThreadPoolTaskRunner(max_workers=1)
        from prefect_dask import DaskTaskRunner

        if self.kind == "remote":
            return DaskTaskRunner(
                address=self.address,
                client_kwargs={"timeout": f"{self.connect_timeout}s"},
                performance_report_path=self.performance_report,
            )
        if self.kind == "cluster" or self.cluster_options or self.adapt:
            return cluster_runner(self, performance_report_path=self.performance_report)
        return DaskTaskRunner(
            cluster_class=local_cluster,
            cluster_kwargs={
                "n_workers": self.n_workers,
                "threads_per_worker": 1,
                "processes": True,
                "host": "127.0.0.1",
                "dashboard_address": ":0",
            },
            performance_report_path=self.performance_report,
        )

    def describe(self) -> str:
        if self.adapt:
            return (f"{'local Dask cluster' if self.kind == 'local' else self.cluster_class}, adaptive "
                    f"{self.adapt['minimum']}..{self.adapt['maximum']} worker(s)")
        if self.kind == "cluster":
            return f"{self.cluster_class}, {self.n_workers} worker(s)"
        if self.kind == "local":
            return f"local Dask cluster, {self.n_workers} worker process(es)"
        if self.kind == "remote":
            return f"remote Dask scheduler {self.address}"
        return "sequential (one thread)"


#: Dask's default ``MALLOC_TRIM_THRESHOLD_`` for the worker processes its nannies spawn.
DASK_MALLOC_TRIM = 65536


def unset_malloc_trim() -> bool:
    """Let distetl's local worker processes start without Dask's ``MALLOC_TRIM_THRESHOLD_``.

    Dask's nannies set it (64 KiB) so that freed memory goes back to the system at once.
    Setting it at all, to any value, also turns off glibc's adaptive mmap threshold, so
    every buffer over 128 KiB is mapped and unmapped again on each use: in the
    ``chunk_cost`` benchmark (an 18,000-row CSV read per chunk) the same loop took
    4.3 ms per chunk in such a worker against 3.9 ms without it. distetl's local workers
    therefore start with glibc's defaults; a worker's RSS may then keep more freed
    memory between chunks. A value configured in Dask other than its default
    (``distributed.nanny.pre-spawn-environ``, e.g.
    ``DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__MALLOC_TRIM_THRESHOLD_=65537``) is left
    as it is.

    Returns:
        True if Dask's default was removed from this process's Dask config (nannies read
        it when they spawn a worker, so adaptive clusters' later workers get it too).
    """
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", None) or {})
    if str(environ.get("MALLOC_TRIM_THRESHOLD_")) != str(DASK_MALLOC_TRIM):
        return False
    environ.pop("MALLOC_TRIM_THRESHOLD_")
    dask.config.set({"distributed.nanny.pre-spawn-environ": environ})
    return True


def local_cluster(**kwargs: Any) -> Any:
    """A ``distributed.LocalCluster`` whose worker processes ignore the terminal's Ctrl-C.

    Ctrl-C signals the terminal's whole process group; worker processes would each die
    of it with a traceback while the driver is still stopping the run cleanly (see
    :mod:`distetl.engine.stopping`), and the driver closes them itself. Each worker
    process ignores SIGINT from its start (:class:`~distetl.engine.quietclose.NoCtrlC`);
    the driver keeps its handler, so a Ctrl-C while the cluster starts is not lost.

    Its workers also carry :class:`~distetl.engine.quietclose.QuietClose`: the cluster's
    close prints no heartbeat traceback (a user's own ``plugins`` are kept beside them),
    and worker processes start without Dask's ``MALLOC_TRIM_THRESHOLD_``
    (:func:`unset_malloc_trim`).
    """
    from distributed import LocalCluster

    from distetl.engine.quietclose import NoCtrlC, QuietClose

    kwargs = {**kwargs, "plugins": [*kwargs.get("plugins", ()), QuietClose(), NoCtrlC()]}
    unset_malloc_trim()
    return LocalCluster(**kwargs)


# -- the pre-flight check of a remote cluster ---------------------------------------------

# Runs on each worker. Built from source so cloudpickle ships it by value: it must run
# (and say so) on a worker where distetl is missing or broken.
_WORKER_FACTS_SOURCE = '''
def worker_facts():
    import os, socket, sys
    facts = {"python": "%d.%d.%d" % sys.version_info[:3], "host": socket.gethostname(),
             "pid": os.getpid(), "executable": sys.executable}
    try:
        import distetl
        facts["distetl"] = str(getattr(distetl, "__version__", "unknown"))
        facts["distetl_path"] = os.path.dirname(getattr(distetl, "__file__", "") or "")
    except BaseException as exc:
        facts["distetl"] = None
        facts["distetl_error"] = "%s: %s" % (type(exc).__name__, exc)
    return facts
'''


def _worker_facts_function() -> Any:
    namespace: dict[str, Any] = {"__name__": "distetl_worker_probe"}
    exec(compile(_WORKER_FACTS_SOURCE, "<distetl worker probe>", "exec"), namespace)
    return namespace["worker_facts"]


# Runs on each worker (by value, as above): which of the driver's local paths it cannot see.
_SEES_SOURCE = '''
def unseen(paths, probe, token):
    import os
    out = [path for _, path in paths if not os.path.exists(path)]
    if probe is not None:
        try:
            with open(probe) as f:
                seen = f.read() == token
        except OSError:
            seen = False
        if not seen:
            out.insert(0, probe)
    return out
'''


def _unseen_function() -> Any:
    namespace: dict[str, Any] = {"__name__": "distetl_worker_probe"}
    exec(compile(_SEES_SOURCE, "<distetl path probe>", "exec"), namespace)
    return namespace["unseen"]


def _check_paths_seen(client: Any, facts: Mapping[str, Mapping[str, Any]], paths: Sequence[tuple[str, str]]) -> None:
    """Every worker sees the driver's local output folder and local sources, or a
    ClusterError (exit 2) before any compute.

    The output folder is proved by a probe file with a random token that the driver
    writes under ``{output}/_distetl/`` and every worker reads back (a folder of the same
    name on the worker's own disk does not pass); the probe is removed before this
    returns, and so are the folders made for it when the check fails (a run that passes
    writes under them next). A source file must exist on every worker.
    """
    import uuid

    output = next((path for what, path in paths if what == OUTPUT_FOLDER), None)
    sources = [(what, path) for what, path in paths if what != OUTPUT_FOLDER]
    probe = token = None
    blind: Optional[dict[str, Any]] = None
    made: list[str] = []
    try:
        if output is not None:
            folder = os.path.join(output, "_distetl")
            missing = folder
            while missing and not os.path.exists(missing):
                made.append(missing)
                missing = os.path.dirname(missing)
            token = uuid.uuid4().hex
            probe = os.path.join(folder, f".probe-{token}")
            for attempt in range(20):
                # Another run starting on the same output at the same moment removes the
                # folders it made once its own probe is gone: make them again and retry.
                try:
                    os.makedirs(folder, exist_ok=True)
                    with open(probe, "w") as f:
                        f.write(token)
                    break
                except (FileNotFoundError, FileExistsError):
                    if attempt == 19:
                        raise
        found = client.run(_unseen_function(), list(sources), probe, token)
        blind = {worker: unseen for worker, unseen in found.items() if unseen}
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                os.remove(probe)
        # The folders made for the probe go only when the run stops here: a run that goes
        # on writes under them at once, and so may another run starting on the same
        # output, whose files must not lose their folder under it.
        for folder in made if blind is None or blind else ():  # deepest first, only if empty
            with contextlib.suppress(OSError):
                os.rmdir(folder)
    if not blind:
        return
    worker, unseen = sorted(blind.items())[0]
    host = facts.get(worker, {}).get("host", "?")
    first = unseen[0]
    what, path = ((OUTPUT_FOLDER, output) if first == probe else
                  next((w, p) for w, p in sources if p == first))
    raise ClusterError(
        f"{what} {path} visible at the same path to every Dask worker (a local path: the workers "
        f"{'write it' if what == OUTPUT_FOLDER else 'read it'} themselves)",
        f"{len(blind)} of {len(found)} worker(s) do not see it, e.g. worker {worker} (host {host})"
        + (" (a probe file the driver wrote there did not reach it)" if what == OUTPUT_FOLDER else ""),
        "use an object store URL for it (s3://bucket/...; credentials through --storage-option or the "
        "environment), or a folder mounted at the same path on every worker host (NFS, a shared volume)",
    )


#: How :func:`worker_paths` names the output folder.
OUTPUT_FOLDER = "the output folder"


def worker_paths(planned: Any) -> list[tuple[str, str]]:
    """The local paths a remote run's workers must see: the output folder (when local)
    and, of each stage with chunks to run, one local file of each declared source and
    its file plan's first file to run. Object store URLs are not checked (every host
    reaches them with the run's storage options)."""
    out: list[tuple[str, str]] = []
    if planned.targets.storage.is_local:
        out.append((OUTPUT_FOLDER, planned.targets.storage.normalize(planned.output)))
    for p in planned.stages:
        need = planned.need.get(p.name) or ()
        if not need:
            continue
        for name, (_, files) in p.sources.items():
            if files and _local(files[0]):
                out.append((f"declared source {name!r} of stage {p.name!r}", _plain(files[0])))
        first = p.chunks[need[0]]
        path = first.fields.get("path") if hasattr(first, "fields") else None
        if isinstance(path, str) and isinstance(p.stage.plan, FileList) and _local(path):
            out.append((f"the source file of chunk {first.key} of stage {p.name!r}", _plain(path)))
    return out


def _local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _plain(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def load_flow_on_worker(sources: list[Any], blob: bytes) -> Optional[str]:
    """Load the flow's shipped files and unpickle its pipeline, as a batch would.

    Runs on a worker. Returns None, or the error (with the module it was loading).
    """
    import traceback

    import cloudpickle

    from distetl.engine.loader import ensure_modules

    try:
        ensure_modules(sources)
    except BaseException as exc:  # noqa: BLE001 - reported to the driver
        where = ", ".join(s.path for s in sources) or "the flow file"
        frames = traceback.extract_tb(exc.__traceback__)
        line = next((f"{f.filename}:{f.lineno}" for f in reversed(frames) if f.filename in
                     {s.path for s in sources}), where)
        return f"{type(exc).__name__}: {exc} (loading {line})"
    try:
        cloudpickle.loads(blob)
    except BaseException as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc} (unpickling the pipeline)"
    return None


def _hint_for(error: str) -> str:
    if "ModuleNotFoundError" in error or "ImportError" in error:
        name = error.split("No module named", 1)[-1].strip(" '\"").split("'")[0] if "No module named" in error else ""
        what = f"`{name}`" if name else "the missing package"
        return (f"install {what} in the Python environment of every worker host (the same "
                "environment that runs `dask worker`) and restart the workers (modules in the flow "
                "file's own folder travel with it; code it imports from anywhere else must be installed)")
    return "fix the flow file (it fails when a worker loads it) or the worker's environment"


def _identity(address: str, timeout: float) -> dict[str, Any]:
    """Ask whatever listens at ``address`` who it is, in Dask's protocol, within
    ``timeout`` (``distributed.Client`` can wait far longer on a listener that is not a
    Dask scheduler). Uses Dask's security configuration for ``tls://``.

    Raises:
        TimeoutError, OSError: If no Dask answer comes in time.
    """
    import asyncio

    from distributed.comm import connect
    from distributed.security import Security

    async def ask() -> dict[str, Any]:
        args = Security().get_connection_args("client")
        comm = await asyncio.wait_for(connect(address, timeout=timeout, **args), timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            answer = await asyncio.wait_for(comm.read(), timeout)
        finally:
            comm.abort()
        return answer if isinstance(answer, dict) else {}

    return asyncio.run(ask())


def probe_cluster(address: str, timeout: float, pipeline: Any = None,
                  paths: Sequence[tuple[str, str]] = ()) -> ClusterFacts:
    """Connect to a scheduler and check it can run distetl batches.

    Args:
        address: ``tcp://HOST:PORT`` or ``tls://HOST:PORT``.
        timeout: Seconds for the Dask handshake and for the first worker to appear.
        pipeline: If given, check every worker can load it (flow files included).
        paths: Local paths the workers must see, as (what, path): the output folder
            (proved by a probe file the driver writes there and every worker reads,
            removed after) and local source files (each must exist on every worker).

    Raises:
        ClusterError: On the first problem, naming the address (and worker) and the fix.
    """
    import cloudpickle
    from distributed import Client

    from distetl.engine.loader import sources_for
    from distetl.version import __version__

    try:
        identity = _identity(address, timeout)
        if identity.get("type") != "Scheduler":
            kind = identity.get("type") or "something else"
            raise ClusterError(
                f"a Dask scheduler at {address}", f"a Dask {kind} (id {identity.get('id')})",
                "pass the scheduler's address (what `dask scheduler` prints as 'Scheduler at'), "
                "not a worker's or nanny's",
            )
        client = Client(address, timeout=f"{timeout}s", set_as_default=False)
    except ClusterError:
        raise
    except Exception as exc:  # noqa: BLE001 - every connection failure gets the same advice
        text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        if isinstance(exc, TimeoutError) and not str(exc):
            text = f"no answer within {timeout:g}s"
        elif not isinstance(exc, (OSError, TimeoutError)):
            text = f"an answer that is not Dask's protocol ({text[:120]})"
        tls = address.startswith("tls://") or "TLS" in text or "SSL" in text
        raise ClusterError(
            f"a Dask scheduler answering at {address} within {timeout:g}s",
            f"{type(exc).__name__}: {text}" + (
                "" if tls else " (something accepts connections there but did not answer as a Dask scheduler)"
            ),
            (_TLS_FIX if tls else
             "point --scheduler (or DISTETL_SCHEDULER) at the address `dask scheduler` prints as "
             "'Scheduler at' (port 8786 by default; 8787 is the dashboard, not the scheduler); "
             "raise --connect-timeout for slow networks"),
        ) from None
    with client:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except Exception:  # noqa: BLE001 - distributed raises TimeoutError here
            raise ClusterError(
                f"at least one Dask worker connected to {address}",
                f"none within {timeout:g}s",
                f"start workers (`dask worker {address}` on each worker host, or "
                "`distetl cluster up`), or raise --connect-timeout while they start",
            ) from None
        facts = client.run(_worker_facts_function())
        nthreads = client.nthreads()
        info = client.scheduler_info()
        mine = f"{__version__}"
        here_py = f"{sys.version_info[0]}.{sys.version_info[1]}"
        for worker, f in sorted(facts.items()):
            host = f.get("host", "?")
            if f.get("distetl") is None:
                raise ClusterError(
                    f"distetl {mine} importable on every Dask worker",
                    f"worker {worker} (host {host}, {f.get('executable')}) cannot import it: "
                    f"{f.get('distetl_error')}",
                    f"install distetl {mine} in the environment that runs `dask worker` on {host} "
                    "(pip install distetl==VERSION, or pip install -e . from the same checkout) "
                    "and restart the worker",
                )
            if f["distetl"] != mine:
                raise ClusterError(
                    f"distetl {mine} (the driver's version) on every Dask worker",
                    f"distetl {f['distetl']} on worker {worker} (host {host}, {f.get('distetl_path')})",
                    f"install distetl {mine} on {host} (the environment that runs `dask worker`) and "
                    "restart the worker, or run the driver from the workers' version",
                )
            worker_py = ".".join(f["python"].split(".")[:2])
            if worker_py != here_py:
                raise ClusterError(
                    f"Python {here_py} (the driver's) on every Dask worker",
                    f"Python {f['python']} on worker {worker} (host {host})",
                    "run the driver and the workers on the same Python minor version "
                    "(pipelines travel pickled)",
                )
            f["nthreads"] = nthreads.get(worker, 1)
        if pipeline is not None:
            blob = cloudpickle.dumps(pipeline)
            sources = sources_for(blob)
            errors = client.run(load_flow_on_worker, sources, blob)
            for worker, error in sorted(errors.items()):
                if error:
                    raise ClusterError(
                        f"every Dask worker to load the flow {getattr(pipeline, 'name', '')!r} "
                        "and everything it imports",
                        f"worker {worker} (host {facts[worker].get('host', '?')}): {error}",
                        _hint_for(error),
                    )
        if paths:
            _check_paths_seen(client, facts, paths)
        dashboard = client.dashboard_link if info.get("services", {}).get("dashboard") else None
        return ClusterFacts(address=address, workers=facts, dashboard=dashboard)


class EarlyCluster:
    """A local Dask cluster started in a thread while the run's Prefect server starts.

    A run's fixed cost used to be the server's start, then the cluster's start, one after
    the other; started side by side they cost the longer of the two (with the home's
    kept server up, the cluster's start alone). Worker processes ignore the terminal's
    Ctrl-C (:func:`local_cluster`); the driver's handler stays, so a Ctrl-C while the
    cluster starts stops the run.

    Args:
        spec: A ``local`` runner spec without cluster options.
        chunks: Chunks to run: no more worker processes than that are started.
    """

    def __init__(self, spec: "RunnerSpec", chunks: int):
        self.spec = spec
        self.cluster: Any = None
        self.error: Optional[BaseException] = None
        self.wanted = max(1, min(spec.n_workers, chunks))
        self._thread = threading.Thread(target=self._start, args=(self.wanted,),
                                        name="distetl-early-cluster", daemon=True)
        self._thread.start()

    @staticmethod
    def applies(spec: "RunnerSpec") -> bool:
        """Whether a spec runs on a plain local cluster this can start."""
        return spec.kind == "local" and not spec.cluster_options and not spec.adapt

    @classmethod
    def take(cls, spec: "RunnerSpec", chunks: int) -> Optional["EarlyCluster"]:
        """The cluster for a run of ``chunks`` chunks on ``spec``, started now; None
        when the spec does not apply."""
        return cls(spec, chunks) if cls.applies(spec) else None

    def _start(self, n_workers: int) -> None:
        try:
            self.cluster = local_cluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                         host="127.0.0.1", dashboard_address=":0")
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self.error = exc

    def task_runner(self, stop: Any = None, timeout: float = 120.0) -> Any:
        """A Prefect task runner on the started cluster (waits for it and its workers).

        Args:
            stop: The run's stop request. Once it is set (a Ctrl-C, which may also have
                ended a worker process still starting), no chunk will run: a failed
                start or missing workers then give a one-thread runner that runs nothing.
            timeout: Seconds to wait for the workers the run wants.

        Raises:
            ClusterError: Its workers did not all come up in ``timeout`` seconds.
            Exception: The cluster's own start error, without a stop request.
        """
        from prefect.task_runners import ThreadPoolTaskRunner
        from prefect_dask import DaskTaskRunner

        self._thread.join()
        stopped = lambda: stop is not None and stop.stopped  # noqa: E731
        if self.error is not None:
            if stopped():
                return ThreadPoolTaskRunner(max_workers=1)
            raise self.error
        deadline = time.monotonic() + timeout
        while len(self.cluster.scheduler_info.get("workers", {})) < self.wanted and not stopped():
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.wanted} local worker processes within {timeout:.0f} s",
                                   f"{len(self.cluster.scheduler_info.get('workers', {}))}",
                                   "check the worker logs above; rerun (committed chunks are skipped)")
            time.sleep(0.05)
        if stopped() and len(self.cluster.scheduler_info.get("workers", {})) < self.wanted:
            return ThreadPoolTaskRunner(max_workers=1)
        return DaskTaskRunner(address=self.cluster.scheduler_address,
                              performance_report_path=self.spec.performance_report)

    def close(self) -> None:
        """Close the cluster (after the flow run)."""
        self._thread.join()
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None
