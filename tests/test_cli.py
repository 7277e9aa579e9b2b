"""The distetl command: dry run, status, force, runners giving the same files, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from conftest import REPO, cli

NYC = str(REPO / "flows" / "nycflights.py")
JAN = ["--start", "2013-01-01", "--end", "2013-01-10"]


def test_dry_run_prints_counts_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    proc = cli("run", NYC, "--output", str(out), "--dry-run", *JAN)
    assert proc.returncode == 0, proc.stderr
    assert "total 10, to run 10, to skip 0" in proc.stderr
    assert not out.exists()


def test_status_force_and_same_files_on_every_runner(tmp_path, prefect_api):
    seq, loc = tmp_path / "seq", tmp_path / "loc"
    first = cli("run", NYC, "--output", str(seq), "--runner", "sequential", "--no-progress", *JAN)
    assert first.returncode == 0, first.stderr
    assert "output:" in first.stderr and "manifest:" in first.stderr

    status = cli("status", NYC, "--output", str(seq), "--json", "--start", "2013-01-01", "--end", "2013-01-12")
    assert status.returncode == 1  # two chunks missing
    listing = json.loads(status.stdout)
    assert listing["missing"] == ["date=2013-01-11", "date=2013-01-12"] and len(listing["committed"]) == 10

    dry = cli("run", NYC, "--output", str(seq), "--dry-run", "--start", "2013-01-01", "--end", "2013-01-12")
    assert "total 12, to run 2, to skip 10" in dry.stderr

    second = cli("run", NYC, "--output", str(loc), "--workers", "2", "--no-progress", *JAN)
    assert second.returncode == 0, second.stderr
    # Data files only: distetl's own record indexes under _distetl/ name their run.
    names = sorted(p.relative_to(seq).as_posix() for p in seq.rglob("*.parquet") if "_distetl" not in p.parts)
    assert names == sorted(p.relative_to(loc).as_posix() for p in loc.rglob("*.parquet") if "_distetl" not in p.parts)
    for name in names:
        assert pq.read_table(seq / name).equals(pq.read_table(loc / name)), name

    before = (seq / names[0]).stat().st_mtime_ns
    forced = cli("run", NYC, "--output", str(seq), "--runner", "sequential", "--force", "--json", *JAN)
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["summary"]["written"] == 10
    assert (seq / names[0]).stat().st_mtime_ns != before


def test_configuration_errors_exit_2(tmp_path):
    out = str(tmp_path / "out")
    missing = cli("run", str(tmp_path / "nope.py"), "--output", out)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    conflict = cli("run", NYC, "--output", out, "--runner", "sequential", "--workers", "3", *JAN)
    assert conflict.returncode == 2 and "--workers" in conflict.stderr
    assert not Path(out).exists()


def test_read_only_commands_exit_with_their_code_and_their_whole_output(tmp_path):
    """``status`` and ``accept`` end with ``os._exit`` after flushing (no interpreter
    teardown): the exit code and every line of output still arrive, through a pipe too."""
    import subprocess
    import sys

    out = tmp_path / "out"
    status = cli("status", NYC, "--output", str(out), "--json", "--start", "2013-01-01", "--end", "2013-03-31")
    assert status.returncode == 1, status.stderr  # chunks are missing
    report = json.loads(status.stdout)  # the whole JSON document arrived
    assert len(report["missing"]) == 90 and report["missing_not_listed"] == 0
    missing = cli("status", str(tmp_path / "nope.py"), "--output", str(out))
    assert missing.returncode == 2 and "nope.py" in missing.stderr
    bad = cli("accept", NYC, "--output", str(out), "--stage", "nosuchstage")
    assert bad.returncode == 2 and "nosuchstage" in bad.stderr
    piped = subprocess.run(
        f"{sys.executable} -m distetl.cli status {NYC} --output {out} --json --start 2013-01-01 --end 2013-03-31 | head -c 20",
        shell=True, capture_output=True, text=True, cwd=str(REPO))
    assert piped.stdout == status.stdout[:20] and "Traceback" not in piped.stderr, piped.stderr


def test_a_flow_file_that_raises_while_it_loads_exits_2_naming_its_line(tmp_path):
    """Exit 2 with the flow file's line and its own frames, not a traceback through distetl."""
    import os
    import subprocess
    import sys

    flow = tmp_path / "raises.py"
    flow.write_text("import os\nfrom distetl import Pipeline\n\n\nX = os.environ['DISTETL_TEST_UNSET_X']\n")
    env = {k: v for k, v in os.environ.items() if k != "DISTETL_TEST_UNSET_X"}
    failed = subprocess.run([sys.executable, "-m", "distetl.cli", "run", str(flow), "--output", str(tmp_path / "out")],
                            capture_output=True, text=True, env=env, cwd=str(REPO), timeout=120)
    assert failed.returncode == 2, failed.stderr
    message = " ".join(failed.stderr.split())
    assert f"loading {flow} raised KeyError: 'DISTETL_TEST_UNSET_X' ({flow}:5)" in message
    assert "Traceback" not in failed.stderr and "distetl/engine" not in failed.stderr
    assert not (tmp_path / "out").exists()


def test_an_unknown_target_field_exits_2_naming_the_stage_and_the_nearest_field(tmp_path, flow_file):
    flow = flow_file("""
import pandas as pd
from distetl import DateRange, Pipeline, Stage

pipeline = Pipeline(name="typo", stages=[
    Stage("raw", plan=DateRange(start="2024-01-01", end="2024-01-03"),
          extract=lambda c: pd.DataFrame({"x": [1]}), target="{output}/raw/date={date}/part-0.parquet"),
    Stage("daily", upstream="raw", transform=lambda df: df,
          target="{output}/daily/date={dat}/part-0.parquet"),
])
""")
    out = tmp_path / "out"
    failed = cli("run", str(flow), "--output", str(out), "--runner", "sequential")
    message = " ".join(failed.stderr.split())
    assert failed.returncode == 2, failed.stderr
    assert "stage daily, chunk date=2024-01-01: Expected template fields" in message, message
    assert "Fix: write {date} (the nearest of those fields) in place of {dat}" in message, message
    assert not (out / "raw").exists(), "nothing ran"
