"""Workers on hosts that do not share the driver's disk, emulated: each worker runs in
its own mount namespace (``unshare -m``) with an empty tmpfs over the driver's output
and source folders. A remote run whose local output or local sources the workers cannot
see is refused before any compute (exit 2), instead of "succeeding" into a disk the
driver never sees."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import distetl
from distetl import ClusterError
from distetl.engine.loader import load_pipeline

from cluster_helpers import DaskProcesses, clean_env
from conftest import cli
from s3_server import ACCESS_KEY, SECRET_KEY, S3Server, isolate_aws_env

FLOW = '''
import os
import pandas as pd
from distetl import ChunkList, Pipeline, Stage

pipeline = Pipeline(name="hosts", stages=[
    Stage("numbers", plan=ChunkList([1, 2, 3], key_field="n"),
          extract=lambda chunk: pd.DataFrame({"n": [chunk["n"]], "double": [2 * chunk["n"]]}),
          target="{output}/numbers/n={n}/part-0.parquet"),
])
'''

FLOW_SOURCE = '''
import os
import pandas as pd
from distetl import ChunkList, Pipeline, Stage

def rates(chunk, ctx):
    with ctx.open(ctx.sources["rates"][0]) as f:
        return pd.read_csv(f)

pipeline = Pipeline(name="hosts_src", stages=[
    Stage("rates", plan=ChunkList(["all"]), extract=rates, target="{output}/rates/part-0.parquet",
          sources={"rates": os.environ["HOSTS_RATES"]}),
])
'''


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs x /mnt"], capture_output=True)
    return done.returncode == 0


pytestmark = pytest.mark.skipif(not _can_unshare(), reason=(
    "emulating a host without the driver's disk needs `unshare -m` and mount (root, or a user namespace); "
    "they are not available here"))


def test_a_remote_run_refuses_a_local_output_or_source_its_workers_cannot_see(tmp_path, flow_file, monkeypatch,
                                                                                 prefect_api):
    hidden, sources, visible = tmp_path / "hidden-out", tmp_path / "src", tmp_path / "visible-out"
    for folder in (hidden, sources, visible):
        folder.mkdir()
    rates = sources / "rates.csv"
    rates.write_text("currency,rate\nEUR,1.1\n")
    monkeypatch.setenv("HOSTS_RATES", str(rates))
    path = flow_file(FLOW, "hostsflow.py")
    with DaskProcesses(tmp_path / "dask", env={**clean_env(), "HOSTS_RATES": str(rates)},
                       hide=[hidden, sources]) as procs:
        procs.start(n_workers=2)
        # The control: the workers see neither folder (their tmpfs is empty).
        # The command line: exit 2, the folder and the fix named, nothing computed.
        refused = cli("run", str(path), "--output", str(hidden), "--scheduler", procs.address)
        assert refused.returncode == 2, refused.stderr
        message = " ".join(refused.stderr.split())
        assert f"the output folder {hidden}" in message and "2 of 2 worker(s) do not see it" in message
        assert "s3://" in message and "mounted at the same path on every worker host" in message
        assert sorted(p.name for p in hidden.rglob("*")) == []  # no data, no probe, no folder left behind
        # A declared local source the workers cannot see, from Python.
        pipeline = load_pipeline(str(flow_file(FLOW_SOURCE, "hostssource.py")))
        with pytest.raises(ClusterError) as err:
            distetl.run(pipeline, str(visible), scheduler=procs.address)
        assert f"declared source 'rates' of stage 'rates' {rates}" in str(err.value)
        assert sorted(p.name for p in visible.rglob("*")) == []
        # A folder the workers do see: the probe passes, leaves nothing, and the run commits.
        report = distetl.run(load_pipeline(str(path)), str(visible), scheduler=procs.address)
        assert report.ok and report.written == 3
        assert [p.name for p in (visible / "_distetl").iterdir() if p.name.startswith(".probe")] == []
        assert len(list((visible / "numbers").rglob("*.parquet"))) == 3


FLOW_HELPERS = '''
import pandas as pd
from distetl import ChunkList, Pipeline
from helpers import double
from flowlib.scale import TEN

pipeline = Pipeline(name="beside", plan=ChunkList([1, 2, 3], key_field="n"),
                    extract=lambda chunk: pd.DataFrame({"n": [chunk["n"]], "value": [double(chunk["n"]) * TEN]}),
                    target="{output}/beside/n={n}/part-0.parquet")
'''


def test_modules_beside_the_flow_reach_workers_that_do_not_see_its_folder(tmp_path, flow_file, monkeypatch,
                                                                           prefect_api):
    """The flow's folder is hidden from the workers; its helper module and package travel
    with the flow file, and the output goes to S3 (moto on loopback)."""
    path = flow_file(FLOW_HELPERS, "besideflow.py")
    (path.parent / "helpers.py").write_text("def double(x):\n    return 2 * x\n")
    (path.parent / "flowlib").mkdir()
    (path.parent / "flowlib" / "__init__.py").write_text("")
    (path.parent / "flowlib" / "scale.py").write_text("from flowlib import __name__ as _pkg\nTEN = 10\n")
    isolate_aws_env(monkeypatch, tmp_path)
    server = S3Server().start()
    try:
        bucket = server.create_bucket("distetl-hosts")
        options = {"endpoint_url": server.endpoint, "key": ACCESS_KEY, "secret": SECRET_KEY}
        with DaskProcesses(tmp_path / "dask", env=clean_env(), hide=[path.parent]) as procs:
            procs.start(n_workers=2)
            report = distetl.run(load_pipeline(str(path)), f"{bucket}/out", scheduler=procs.address,
                                 storage_options=options)
        assert report.ok and report.written == 3, report.failed[:1]
        import pyarrow.dataset as ds
        import s3fs

        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": server.endpoint}, key=ACCESS_KEY, secret=SECRET_KEY)
        table = ds.dataset("distetl-hosts/out/beside", filesystem=fs, partitioning="hive").to_table()
        assert sorted(table.column("value").to_pylist()) == [20, 40, 60]
    finally:
        server.stop()
