"""Clusters a run starts through Dask's deployment libraries: ``--cluster-class``,
``--cluster-option`` and ``--adapt``.

End to end (the command line, real processes): dask-jobqueue's local mode
(``dask_jobqueue.local.LocalCluster``, the same machinery as SLURM/PBS/SGE, with jobs run
as local processes) and ``distributed.LocalCluster``, both adaptive from 0 to 2 workers.
The pre-flight errors (exit 2) and the batch sizing for a cluster that starts empty are
checked without starting anything.
"""

from __future__ import annotations

import importlib.util
import json
import time
import uuid
from pathlib import Path

import pandas as pd
import psutil
import pytest

from conftest import cli

N_CHUNKS = 10

FLOW = '''
import os, time
import pandas as pd
from distetl import ChunkList, Pipeline

def extract(chunk):
    time.sleep(1.5)
    return pd.DataFrame({"part": [chunk["part"]], "pid": [os.getpid()],
                         "mark": [os.environ.get("DISTETL_TEST_MARK", "")]})

pipeline = Pipeline(name="grows", plan=ChunkList([f"p{i:02d}" for i in range(%d)], key_field="part"),
                    extract=extract, target="{output}/grows/p={part}/part-0.parquet")
''' % N_CHUNKS

JOBQUEUE_LOCAL = [
    "--cluster-class", "dask_jobqueue.local.LocalCluster",
    "--cluster-option", "cores=1", "--cluster-option", "memory=1GiB", "--cluster-option", "processes=1",
    # The scheduler runs in the driver: its dashboard on a free port, not jobqueue's :8787.
    "--cluster-option", 'scheduler_options={"dashboard_address": ":0"}',
]


#: Environment variable marking the processes one test started (its run and, through
#: inheritance, the run's worker jobs): other tests' workers, e.g. in another xdist
#: worker process at the same moment, are never counted as this test's leftovers.
MARK = "DISTETL_TEST_MARK"


def _leftover_workers(mark: str) -> list[psutil.Process]:
    """dask worker processes started by the run marked ``mark`` that are still running."""
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "distributed.cli.dask_worker" not in cmd:
            continue
        try:
            if proc.environ().get(MARK) == mark:
                out.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return out


def _run_adaptive(tmp_path: Path, flow_file, *args: str, mark: str = "") -> tuple[dict, str]:
    flow = flow_file(FLOW)
    proc = cli("run", str(flow), "--output", str(tmp_path / "out"), "--adapt", "min=0,max=2", "--json", *args,
               timeout=240, env={MARK: mark} if mark else None)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout), proc.stderr


def _assert_grew_from_zero_to_two(report: dict, stderr: str, out: Path) -> None:
    assert report["summary"]["written"] == N_CHUNKS and report["summary"]["failed"] == 0
    assert len(list((out / "grows").rglob("*.parquet"))) == N_CHUNKS
    # The run's cluster had no worker when it was created and two at its peak, both of
    # which ran chunks (the worker address is in every chunk's result).
    assert "(0..2 workers): 0 worker(s) at start, grew to 2; 2 worker(s) took part" in stderr, stderr[-3000:]
    workers = {r["worker"] for r in report["results"]}
    assert len(workers) == 2 and all(w.startswith("tcp://") for w in workers), workers
    # Batches were sized for the adaptive maximum (2 workers: up to 16 batches).
    assert report["task_runs"] == N_CHUNKS


@pytest.mark.timeout(300)
def test_jobqueue_local_mode_scales_from_zero_to_two_jobs(tmp_path, flow_file, prefect_api):
    mark = uuid.uuid4().hex
    report, stderr = _run_adaptive(tmp_path, flow_file, *JOBQUEUE_LOCAL, mark=mark)
    assert report["runner"] == "dask_jobqueue.local.LocalCluster, adaptive 0..2 worker(s)"
    _assert_grew_from_zero_to_two(report, stderr, tmp_path / "out")
    # The jobs (local worker processes) carried the run's mark (so the look for leftovers
    # below sees them) and ended with the run.
    marks = set(pd.read_parquet(tmp_path / "out" / "grows")["mark"])
    assert marks == {mark}, marks
    deadline = time.monotonic() + 30
    while _leftover_workers(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _leftover_workers(mark)


@pytest.mark.timeout(300)
def test_distributed_local_cluster_adaptive_from_zero_to_two(tmp_path, flow_file, prefect_api):
    report, stderr = _run_adaptive(tmp_path, flow_file)  # the default runner: distributed.LocalCluster
    assert report["runner"] == "local Dask cluster, adaptive 0..2 worker(s)"
    _assert_grew_from_zero_to_two(report, stderr, tmp_path / "out")


# -- pre-flight: exit 2 before anything runs ----------------------------------------------

def _run_fails(tmp_path: Path, flow_file, *args: str, env: dict | None = None) -> str:
    proc = cli("run", str(flow_file(FLOW)), "--output", str(tmp_path / "out"), *args, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert not (tmp_path / "out" / "grows").exists()
    assert "Traceback" not in proc.stderr
    return " ".join(proc.stderr.split())


def test_unimportable_cluster_class_names_the_package_to_install(tmp_path, flow_file):
    text = _run_fails(tmp_path, flow_file, "--cluster-class", "distetl_missing_deploy.CloudCluster",
                      "--adapt", "min=0,max=2")
    assert "distetl_missing_deploy.CloudCluster importable" in text
    assert "pip install distetl-missing-deploy" in text


@pytest.mark.skipif(importlib.util.find_spec("dask_kubernetes") is not None, reason="dask-kubernetes is installed")
def test_kubernetes_class_without_dask_kubernetes_says_pip_install_dask_kubernetes(tmp_path, flow_file):
    text = _run_fails(tmp_path, flow_file, "--cluster-class", "dask_kubernetes.operator.KubeCluster",
                      "--cluster-option", "image=ghcr.io/dask/dask:latest", "--workers", "2")
    assert "pip install dask-kubernetes" in text


def test_unknown_cluster_option_is_named_with_the_accepted_ones(tmp_path, flow_file):
    text = _run_fails(tmp_path, flow_file, *JOBQUEUE_LOCAL, "--cluster-option", "coress=2", "--adapt", "min=0,max=2")
    assert "got 'coress'" in text and "did you mean cores?" in text
    assert "walltime" in text and "memory" in text  # the accepted options are listed


def test_jobqueue_options_are_checked_by_building_the_job(tmp_path, flow_file):
    text = _run_fails(tmp_path, flow_file, "--cluster-class", "dask_jobqueue.local.LocalCluster",
                      "--cluster-option", "cores=1", "--adapt", "min=0,max=2")  # no memory
    assert "You must specify how much cores and memory" in text


def test_scheduler_with_cluster_class_is_a_conflict(tmp_path, flow_file):
    text = _run_fails(tmp_path, flow_file, "--scheduler", "tcp://127.0.0.1:8786", *JOBQUEUE_LOCAL,
                      "--adapt", "min=0,max=2")
    assert "either --scheduler" in text and "--cluster-class" in text
    text = _run_fails(tmp_path, flow_file, *JOBQUEUE_LOCAL, "--adapt", "min=0,max=2",
                      env={"DISTETL_SCHEDULER": "tcp://127.0.0.1:8786"})
    assert "DISTETL_SCHEDULER=tcp://127.0.0.1:8786 with --cluster-class" in text


def test_workers_with_adapt_is_a_conflict(tmp_path, flow_file):
    text = _run_fails(tmp_path, flow_file, "--workers", "2", "--adapt", "min=0,max=2")
    assert "either --workers N" in text


# -- parsing, sizing, configuration (in process, nothing started) -------------------------

def test_options_parse_as_json_where_they_parse():
    from distetl.ops.clusters import parse_adapt, parse_cluster_options

    assert parse_cluster_options(["cores=4", "memory=16GiB", "x=1.5", "flag=true", 'extra=["--qos=low"]',
                                  'opts={"a": 1}', "name=abc", "empty="]) == {
        "cores": 4, "memory": "16GiB", "x": 1.5, "flag": True, "extra": ["--qos=low"], "opts": {"a": 1},
        "name": "abc", "empty": ""}
    assert parse_adapt("min=0,max=10") == {"minimum": 0, "maximum": 10}
    assert parse_adapt("max=3,interval=500ms") == {"minimum": 0, "maximum": 3, "interval": "500ms"}
    from distetl.errors import ConfigError

    for bad in ("min=2,max=1", "min=0", "max=0", "min=a,max=2", "min=0,max=2,foo=1", "min0max2"):
        with pytest.raises(ConfigError):
            parse_adapt(bad)
    for bad in (["cores"], ["1x=2"], ["a=1", "a=2"]):
        with pytest.raises(ConfigError):
            parse_cluster_options(bad)


def test_runner_spec_sizes_batches_and_in_flight_work_for_the_adaptive_maximum():
    from distetl.ops.clusters import planned_threads
    from distetl.engine.dispatch import BATCHES_PER_WORKER
    from distetl.engine.runners import RunnerSpec, local_cluster

    spec = RunnerSpec.from_options(None, None, None, cluster_class="dask_jobqueue.local.LocalCluster",
                                   cluster_options=["cores=4", "memory=4GiB", "processes=2"], adapt="min=0,max=6")
    assert spec.kind == "cluster"
    # 6 workers of 2 threads each (4 cores / 2 processes per job).
    assert spec.batch_threads == 12
    runner = spec.task_runner()
    assert runner.adapt_kwargs == {"minimum": 0, "maximum": 6}
    assert runner.cluster_kwargs == {"cores": 4, "memory": "4GiB", "processes": 2}
    assert planned_threads(runner) == 12 and planned_threads(runner.duplicate()) == 12
    assert BATCHES_PER_WORKER * spec.batch_threads == 96

    local = RunnerSpec.from_options(None, None, None, adapt="min=1,max=3")
    assert local.kind == "local" and local.batch_threads == 3
    runner = local.task_runner()
    assert runner.cluster_kwargs["n_workers"] == 1 and runner.cluster_kwargs["threads_per_worker"] == 1
    assert runner.adapt_kwargs == {"minimum": 1, "maximum": 3}

    fixed = RunnerSpec.from_options(None, 4, None, cluster_class="dask_jobqueue.SLURMCluster",
                                    cluster_options=["cores=8", "memory=32GiB", "processes=1"])
    assert fixed.cluster_options["n_workers"] == 4 and fixed.batch_threads == 32 and fixed.adapt is None
    plain = RunnerSpec.from_options(None, 2, None)
    assert plain.batch_threads == 2 and plain.task_runner().cluster_class is local_cluster


def test_a_cluster_class_needs_a_size():
    from distetl.errors import ConfigError
    from distetl.engine.runners import RunnerSpec

    with pytest.raises(ConfigError, match="neither --adapt nor --workers"):
        RunnerSpec.from_options(None, None, None, cluster_class="dask_jobqueue.SLURMCluster")
    with pytest.raises(ConfigError, match="--adapt only for a cluster the run starts"):
        RunnerSpec.from_options("sequential", None, None, adapt="min=0,max=2")
    with pytest.raises(ConfigError, match="--cluster-class MODULE.CLASS with --runner cluster"):
        RunnerSpec.from_options("cluster", 2, None)


def test_adaptive_scheduler_counts_an_unmeasured_batch_as_long(monkeypatch):
    """The scheduler of an adaptive cluster is created with unknown-task-duration raised
    (so an empty cluster asks for every worker the queued batches can use at once);
    a value the user configured wins."""
    import dask

    from distetl.ops.clusters import ADAPTIVE_UNKNOWN_TASK_DURATION, cluster_factory
    from dask.utils import parse_timedelta

    make = cluster_factory(None, {"minimum": 0, "maximum": 1}, 1)
    kwargs = {"n_workers": 0, "processes": False, "dashboard_address": ":0"}
    with make(**kwargs) as cluster:
        assert cluster.scheduler.UNKNOWN_TASK_DURATION == parse_timedelta(ADAPTIVE_UNKNOWN_TASK_DURATION)
    assert dask.config.get("distributed.scheduler.unknown-task-duration") == "500ms"  # restored
    with dask.config.set({"distributed.scheduler.unknown-task-duration": "7s"}):
        with make(**kwargs) as cluster:
            assert cluster.scheduler.UNKNOWN_TASK_DURATION == 7
    with cluster_factory(None, None, 1)(**kwargs) as cluster:  # not adaptive: Dask's default
        assert cluster.scheduler.UNKNOWN_TASK_DURATION == 0.5


def test_a_cluster_that_fails_to_close_does_not_lose_the_run(capsys):
    """A deployment library failing to tear down (dask-jobqueue's local mode does when a
    job never started) warns; the run's results, report and manifest stand."""
    from distetl.engine.clusters import _keep_results_if_close_fails

    class Broken:
        def close(self, timeout=None):
            raise TypeError("int() argument must be a string, not 'NoneType'")

        def __exit__(self, *exc):
            self.close()

    cluster = Broken()
    _keep_results_if_close_fails(cluster, "dask_jobqueue.local.LocalCluster")
    cluster.__exit__(None, None, None)
    err = capsys.readouterr().err
    assert "closing the dask_jobqueue.local.LocalCluster cluster failed (TypeError: int() argument" in err
