"""Memory limits: ``--worker-memory-limit`` for the clusters a run starts, and a chunk
that blows its worker's memory fails alone, named, with the limit and the fix, while the
chunks that shared its batch (and so its dying workers) are rerun one by one and commit.

Real local Dask clusters (nannies that restart a worker past 95 % of its limit), real
Parquet files, the ``distetl`` command line."""

from __future__ import annotations

import json

import pytest

from conftest import cli

FLOW = '''
import os
import time
import numpy as np
import pandas as pd
from distetl import ChunkList, Pipeline

def extract(chunk):
    if chunk["n"] == 5 and os.environ.get("MEMORY_BLOW") == "1":
        hog = np.ones(2 * 2**30 // 8)          # 2 GiB, far past the 300 MiB limit
        time.sleep(5)
        return pd.DataFrame({"n": [int(hog[0])]})
    return pd.DataFrame({"n": [chunk["n"]] * 10})

pipeline = Pipeline(name="mem", plan=ChunkList(list(range(8)), key_field="n"), extract=extract,
                    target="{output}/mem/n={n}/part-0.parquet")
'''


def _committed(out) -> set[str]:
    return {p.parent.name for p in (out / "mem").glob("n=*/part-0.parquet")}


def test_a_chunk_past_the_memory_limit_fails_alone_named_and_the_rest_commit(tmp_path, flow_file, prefect_api):
    path = flow_file(FLOW, "memflow.py")
    out = tmp_path / "out"
    # Dask's own retries as configured by default (3): a chunk queued on a worker that n=5
    # kills dies with it, and must not be blamed.
    env = {"MEMORY_BLOW": "1"}
    done = cli("run", str(path), "--output", str(out), "--workers", "2", "--worker-memory-limit", "300MiB",
               "--chunks-per-task", "2", "--no-progress", "--json", env=env, timeout=240)
    assert done.returncode == 1, done.stderr[-3000:]
    report = json.loads(done.stdout)
    failed = [r for r in report["results"] if r["status"] == "failed"]
    assert [r["key"] for r in failed] == ["n=5"], failed
    error = failed[0]["error"]
    assert "chunk n=5 of stage mem ran out of memory on worker tcp://" in error and "(limit 300 MiB)" in error, error
    assert "Fix: smaller chunks, streamed pieces" in error and "--worker-memory-limit" in error
    assert _committed(out) == {f"n={i}" for i in range(8)} - {"n=5"}, "the chunks beside n=5 must commit"

    rerun = cli("run", str(path), "--output", str(out), "--workers", "2", "--worker-memory-limit", "300MiB",
                "--no-progress", "--json", env={"MEMORY_BLOW": "0"}, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    again = json.loads(rerun.stdout)
    assert [r["key"] for r in again["results"] if r["status"] == "written"] == ["n=5"]
    assert _committed(out) == {f"n={i}" for i in range(8)}


@pytest.mark.parametrize("args,expected", [
    (["--worker-memory-limit", "lots"], "Expected --worker-memory-limit as a size such as 2GiB"),
    (["--worker-memory-limit", "1GiB", "--scheduler", "tcp://127.0.0.1:9"], "dask worker tcp://127.0.0.1:9 --memory-limit 1GiB"),
    (["--worker-memory-limit", "1GiB", "--cluster-option", "memory_limit=2GiB"], "Expected one memory limit"),
])
def test_a_bad_memory_limit_is_refused_before_anything_runs(tmp_path, flow_file, args, expected):
    path = flow_file(FLOW, "memflow.py")
    done = cli("run", str(path), "--output", str(tmp_path / "out"), *args, env={"MEMORY_BLOW": "0"})
    assert done.returncode == 2 and expected in done.stderr and "Fix:" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_the_python_api_takes_the_same_limit(tmp_path, monkeypatch):
    import distetl
    from distetl.engine.runners import RunnerSpec
    from distetl.errors import ConfigError

    monkeypatch.delenv("DISTETL_SCHEDULER", raising=False)
    assert RunnerSpec.for_run(None, 2, None, "300MiB").cluster_options == {"memory_limit": 300 * 2**20}
    assert RunnerSpec.for_run(RunnerSpec(workers=2), worker_memory_limit=2**30).cluster_options == {"memory_limit": 2**30}
    assert RunnerSpec.for_run(None, 2).cluster_options == {}
    pipeline = distetl.Pipeline(name="mem", plan=distetl.ChunkList([1], key_field="n"),
                                extract=lambda chunk: None, target="{output}/mem/n={n}/part-0.parquet")
    for kwargs, expected in [
        ({"worker_memory_limit": "lots"}, "got 'lots'. Fix: pass e.g. --worker-memory-limit 2GiB"),
        ({"worker_memory_limit": "1GiB", "scheduler": "tcp://127.0.0.1:9"},
         "dask worker tcp://127.0.0.1:9 --memory-limit 1GiB"),
        ({"worker_memory_limit": "1GiB", "runner": RunnerSpec(kind="remote", scheduler="tcp://127.0.0.1:9")},
         "dask worker tcp://127.0.0.1:9 --memory-limit 1GiB"),
        ({"worker_memory_limit": "1GiB", "runner": "sequential"}, "Fix:"),
    ]:
        with pytest.raises(ConfigError) as raised:
            distetl.run(pipeline, str(tmp_path / "out"), **kwargs)
        assert expected in str(raised.value), (kwargs, str(raised.value))
    assert not (tmp_path / "out").exists()
