"""Provenance and staleness on real files: every commit carries its record; code,
input and upstream changes make exactly the right chunks stale; ``--stale`` redoes
exactly those; ``accept`` makes code-stale chunks fresh without touching their data;
the index is a cache: without it the records come from the files' footers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import cli

FLOW = '''
import pandas as pd
from distetl import CalendarWindow, DateRange, Pipeline, Stage

FACTOR = 2


def scale(values):
    """Scale the values."""
    return values * FACTOR


def extract(chunk):
    day = pd.Timestamp(chunk["date"])
    return pd.DataFrame({"v": [float(day.day)] * 3})


def clean(frame):
    frame["w"] = scale(frame["v"])  # the scaled value
    return frame[["v", "w"]]


def monthly(frame):
    return pd.DataFrame({"v": [frame["v"].sum()], "w": [frame["w"].sum()]})


raw = Stage(name="raw", plan=DateRange(start="2013-01-30", end="2013-02-02"), extract=extract,
            target="{output}/raw/date={date}/part-0.parquet")
cleaned = Stage(name="clean", upstream=raw, transform=clean, target="{output}/clean/date={date}/part-0.parquet")
months = Stage(name="monthly", upstream=cleaned, mapping=CalendarWindow("month"), transform=monthly,
               target="{output}/monthly/month={month}/part-0.parquet")
pipeline = Pipeline(name="stale", stages=[raw, cleaned, months])
'''


def _status(flow, out) -> dict:
    proc = cli("status", str(flow), "--output", str(out), "--json")
    assert proc.returncode in (0, 1), proc.stderr
    return {s["name"]: s for s in json.loads(proc.stdout)["stages"]}


def _stale(flow, out) -> dict[str, tuple[int, dict]]:
    return {name: (s["stale"], {c: n for c, n in s["stale_by_cause"].items() if n})
            for name, s in _status(flow, out).items()}


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*.parquet")
            if "_distetl" not in p.parts}


def _run(flow, out, *extra):
    proc = cli("run", str(flow), "--output", str(out), "--runner", "sequential", "--no-progress", "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def _written(report) -> set[tuple[str, str]]:
    return {(r["stage"], r["key"]) for r in report["results"] if r["status"] == "written"}


def test_every_commit_carries_its_record(tmp_path, flow_file, prefect_api):
    flow = flow_file(FLOW)
    out = tmp_path / "out"
    report, _ = _run(flow, out)
    record = json.loads(pq.read_metadata(out / "monthly" / "month=2013-01" / "part-0.parquet").metadata[b"distetl.record"])
    assert record["pipeline"] == "stale" and record["stage"] == "monthly" and record["key"] == "month=2013-01"
    assert record["run_id"] == report["run_id"] and record["rows"] == 1 and record["distetl"]
    assert set(record["inputs"]) == {"date=2013-01-30", "date=2013-01-31"}
    clean = json.loads(pq.read_metadata(out / "clean" / "date=2013-01-30" / "part-0.parquet").metadata[b"distetl.record"])
    assert record["inputs"]["date=2013-01-30"] == clean["data_version"]
    assert (out / "_distetl" / "stale" / "index" / "clean.parquet").exists()


def test_code_changes_make_exactly_their_stage_and_downstream_stale(tmp_path, flow_file, prefect_api):
    flow = flow_file(FLOW)
    out = tmp_path / "out"
    _run(flow, out)
    fresh = {"raw": (0, {}), "clean": (0, {}), "monthly": (0, {})}

    # A comment, a docstring and formatting change nothing.
    flow.write_text(FLOW.replace("# the scaled value", "# scaled").replace('"""Scale the values."""', "")
                    .replace("frame[\"w\"] = scale", "frame[\"w\"]  =  scale"))
    assert _stale(flow, out) == fresh

    # A constant in a helper the transform calls: clean is stale (code), monthly (upstream).
    flow.write_text(FLOW.replace("FACTOR = 2", "FACTOR = 3"))
    assert _stale(flow, out) == {"raw": (0, {}), "clean": (4, {"code": 4}), "monthly": (2, {"upstream": 2})}
    before = _mtimes(out)
    report, _ = _run(flow, out)
    assert _written(report) == set() and _mtimes(out) == before, "a plain run never recomputes silently"
    assert report["stale_left"] == {"clean": {"code": 4}, "monthly": {"upstream": 2}}
    plain = cli("run", str(flow), "--output", str(out), "--runner", "sequential", "--no-progress")
    said = " ".join(plain.stderr.split())
    assert plain.returncode == 0 and "4 chunk(s) are stale in stage clean (4 code)" in said, said
    assert "rerun with --stale" in said

    explain = cli("status", str(flow), "--output", str(out), "--explain", "date=2013-01-31")
    text = " ".join(explain.stdout.split() + explain.stderr.split())
    assert "clean:date=2013-01-31: stale (code)" in text and "raw:date=2013-01-31: fresh" in text
    # The STAGE:KEY form --explain prints, and --stage, explain that stage only.
    for args in (("--explain", "clean:date=2013-01-31"), ("--stage", "clean", "--explain", "date=2013-01-31")):
        one = cli("status", str(flow), "--output", str(out), *args)
        text = " ".join(one.stdout.split() + one.stderr.split())
        assert one.returncode == 0 and "clean:date=2013-01-31: stale (code)" in text, (args, text)
        assert "raw:date=2013-01-31" not in text, (args, text)
    wrong = cli("status", str(flow), "--output", str(out), "--explain", "monthly:date=2013-01-31")
    assert wrong.returncode == 2 and "a chunk key of stage monthly (e.g. monthly:month=2013-01" in \
        " ".join(wrong.stderr.split()), wrong.stderr

    report, _ = _run(flow, out, "--stale")
    assert _written(report) == {("clean", d) for d in ("date=2013-01-30", "date=2013-01-31", "date=2013-02-01",
                                                      "date=2013-02-02")} | {("monthly", "month=2013-01"),
                                                                             ("monthly", "month=2013-02")}
    assert {k: v for k, v in _mtimes(out).items() if k.startswith("raw")} == \
        {k: v for k, v in before.items() if k.startswith("raw")}, "raw was not recomputed"
    assert pq.read_table(out / "monthly" / "month=2013-01" / "part-0.parquet").column("w").to_pylist() == [
        (30 + 31) * 3 * 3.0]
    assert _stale(flow, out) == fresh


def test_accept_makes_code_stale_chunks_fresh_without_touching_their_data(tmp_path, flow_file, prefect_api):
    flow = flow_file(FLOW)
    out = tmp_path / "out"
    _run(flow, out)
    flow.write_text(FLOW.replace("return frame[[\"v\", \"w\"]]", "out = frame[[\"v\", \"w\"]]\n    return out"))
    assert _stale(flow, out)["clean"] == (4, {"code": 4})
    before = _mtimes(out)
    one = cli("accept", str(flow), "--output", str(out), "--stage", "clean", "--key", "date=2013-01-30")
    assert one.returncode == 0, one.stderr
    assert _stale(flow, out)["clean"] == (3, {"code": 3})
    rest = cli("accept", str(flow), "--output", str(out), "--stage", "clean")
    assert rest.returncode == 0, rest.stderr
    assert "accepted the current code for 3 chunk(s)" in " ".join(rest.stderr.split())
    assert _stale(flow, out) == {"raw": (0, {}), "clean": (0, {}), "monthly": (0, {})}
    assert _mtimes(out) == before, "accept rewrites no data file"
    bad = cli("accept", str(flow), "--output", str(out), "--key", "date=2013-01-30")
    assert bad.returncode == 2 and "only code changes can be accepted" in " ".join(bad.stderr.split())


FILES_FLOW = '''
import pandas as pd
from distetl import AllToOne, FileList, Pipeline, Stage

def extract(chunk, ctx):
    with ctx.open(chunk["path"], "rb") as handle:
        return pd.read_csv(handle)

raw = Stage(name="raw", plan=FileList(pattern=SRC), extract=extract, target="{output}/raw/{stem}.parquet")
total = Stage(name="total", upstream=raw, mapping=AllToOne(), transform=lambda f: f.sum().to_frame().T,
              target="{output}/total/part-0.parquet")
pipeline = Pipeline(name="files", stages=[raw, total])
'''


def test_a_replaced_source_file_makes_its_chunk_and_downstream_stale(tmp_path, flow_file, prefect_api):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b", "c"):
        (src / f"{name}.csv").write_text("x,y\n1,2\n3,4\n")
    flow = flow_file(FILES_FLOW.replace("SRC", repr(str(src / "*.csv"))))
    out = tmp_path / "out"
    _run(flow, out)
    (src / "b.csv").write_text("x,y\n10,20\n30,40\n50,60\n")
    assert _stale(flow, out) == {"raw": (1, {"input": 1}), "total": (1, {"upstream": 1})}
    explain = cli("status", str(flow), "--output", str(out), "--explain", "file=b.csv")
    text = " ".join(explain.stderr.split())
    assert "raw:file=b.csv: stale (input)" in text and "b.csv changed" in text
    report, _ = _run(flow, out, "--stale")
    assert _written(report) == {("raw", "file=b.csv"), ("total", "all")}
    assert pq.read_table(out / "total" / "part-0.parquet").column("x").to_pylist() == [1 + 3 + 1 + 3 + 90]


def test_without_the_index_the_footers_say_the_same(tmp_path, flow_file, prefect_api):
    """A run whose driver died before writing the index: status reads the footers."""
    flow = flow_file(FLOW)
    out = tmp_path / "out"
    _run(flow, out)
    flow.write_text(FLOW.replace("FACTOR = 2", "FACTOR = 5"))
    with_index = _stale(flow, out)
    for index in (out / "_distetl" / "stale" / "index").glob("*.parquet"):
        index.unlink()
    assert _stale(flow, out) == with_index == {"raw": (0, {}), "clean": (4, {"code": 4}),
                                               "monthly": (2, {"upstream": 2})}
    # A file rewritten behind the index's back (another stamp) is read again, not trusted.
    _run(flow, out, "--stale")
    target = out / "clean" / "date=2013-02-01" / "part-0.parquet"
    table = pq.read_table(target)
    pq.write_table(table.replace_schema_metadata({}), target)
    os.utime(target, ns=(1, 1))
    assert _stale(flow, out)["clean"] == (1, {"record": 1})


def test_staleness_on_s3_with_and_without_the_index(tmp_path, flow_file, prefect_api, monkeypatch):
    import uuid

    from s3_server import S3Server, isolate_aws_env

    isolate_aws_env(monkeypatch, tmp_path)
    server = S3Server().start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
        bucket = f"stale-{uuid.uuid4().hex[:10]}"
        server.create_bucket(bucket)
        flow = flow_file(FLOW)
        out = f"s3://{bucket}/out"
        _run(flow, out)
        keys = set(server.keys(bucket, "out/_distetl/stale/index/"))
        assert keys == {f"out/_distetl/stale/index/{s}.parquet" for s in ("raw", "clean", "monthly")}
        flow.write_text(FLOW.replace("FACTOR = 2", "FACTOR = 7"))
        want = {"raw": (0, {}), "clean": (4, {"code": 4}), "monthly": (2, {"upstream": 2})}
        assert _stale(flow, out) == want
        client = server.client()
        for key in keys:
            client.delete_object(Bucket=bucket, Key=key)
        assert _stale(flow, out) == want, "without the index the footers say the same"
        report, _ = _run(flow, out, "--stale")
        assert len(_written(report)) == 6
        assert _stale(flow, out) == {"raw": (0, {}), "clean": (0, {}), "monthly": (0, {})}
    finally:
        server.stop()


ROOT_FLOW = '''
import pandas as pd
from distetl import IdRange, Pipeline

OFFSET = 1


def extract(chunk):
    return pd.DataFrame({"id": list(range(chunk["start"], chunk["stop"])),
                         "v": [i + OFFSET for i in range(chunk["start"], chunk["stop"])]})


pipeline = Pipeline(name="ids", plan=IdRange(start=0, stop=60, size=10), extract=extract,
                    target="{output}/ids/part-{first}.parquet")
'''


def test_a_root_stages_code_change_is_found_over_the_index_columns(tmp_path, prefect_api):
    """A stage that reads nothing (ids) is compared on the index's version column; the
    same chunks go stale (and are accepted) as the record-by-record path finds."""
    from distetl.engine.loader import load_pipeline
    import distetl

    flow = tmp_path / "ids_flow.py"
    flow.write_text(ROOT_FLOW)
    out = tmp_path / "out"
    first = cli("run", str(flow), "--output", str(out), "--runner", "sequential", "--no-progress")
    assert first.returncode == 0, first.stderr
    planned = distetl.plan(load_pipeline(str(flow)), str(out))
    assert planned.records["ids"].covered_versions() is not None  # the columnar path applies
    assert planned.stale["ids"] == {}
    flow.write_text(ROOT_FLOW.replace("OFFSET = 1", "OFFSET = 2"))
    assert _stale(flow, out) == {"ids": (6, {"code": 6})}
    planned = distetl.plan(load_pipeline(str(flow)), str(out))
    assert sorted(planned.stale["ids"]) == list(range(6))
    assert "recorded version" in planned.stale["ids"][0].detail
    accepted = cli("accept", str(flow), "--output", str(out), "--key", "ids=20-29")
    assert accepted.returncode == 0, accepted.stderr
    assert _stale(flow, out) == {"ids": (5, {"code": 5})}
    rerun = cli("run", str(flow), "--output", str(out), "--runner", "sequential", "--no-progress", "--stale")
    assert rerun.returncode == 0, rerun.stderr
    assert _stale(flow, out) == {"ids": (0, {})}


FILE_ROOT_FLOW = '''
import pandas as pd
from distetl import FileList, Pipeline

SCALE = 1


def extract(chunk, ctx):
    with ctx.open(chunk["path"], "rb") as handle:
        frame = pd.read_csv(handle)
    return frame * SCALE


pipeline = Pipeline(name="files", plan=FileList(pattern=SRC), extract=extract, target="{output}/raw/{stem}.parquet")
'''


def _planned_counting(flow, out, monkeypatch) -> tuple[object, list[int]]:
    """Plan in this process, counting the records built one by one."""
    from distetl.engine.loader import load_pipeline
    from distetl.state.records import StageRecords
    import distetl

    built: list[int] = []
    original = StageRecords._build

    def counting(self, rows):
        built.append(len(rows))
        return original(self, rows)

    monkeypatch.setattr(StageRecords, "_build", counting)
    planned = distetl.plan(load_pipeline(str(flow)), str(out))
    monkeypatch.setattr(StageRecords, "_build", original)
    return planned, built


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_file_plans_staleness_is_found_over_the_index_columns(where, tmp_path, flow_file, prefect_api, monkeypatch):
    """A file plan's fresh chunks are found without building a record each (versions and
    inputs compared as columns); only the suspects are built and checked: a replaced
    source (input), a code change (code), and one accepted."""
    names = [f"f{i}" for i in range(8)]
    server = None
    if where == "s3":
        import uuid

        from s3_server import S3Server, isolate_aws_env

        isolate_aws_env(monkeypatch, tmp_path)
        server = S3Server().start()
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
        bucket = f"files-{uuid.uuid4().hex[:10]}"
        server.create_bucket(bucket)
        client = server.client()

        def write(name: str, text: str) -> None:
            client.put_object(Bucket=bucket, Key=f"src/{name}.csv", Body=text.encode())

        src, out = f"s3://{bucket}/src/*.csv", f"s3://{bucket}/out"
    else:
        (tmp_path / "src").mkdir()

        def write(name: str, text: str) -> None:
            (tmp_path / "src" / f"{name}.csv").write_text(text)

        src, out = str(tmp_path / "src" / "*.csv"), str(tmp_path / "out")
    try:
        for name in names:
            write(name, "x,y\n1,2\n")
        flow = flow_file(FILE_ROOT_FLOW.replace("SRC", repr(src)))
        _run(flow, out)
        planned, built = _planned_counting(flow, out, monkeypatch)
        assert planned.records["files"].covered_inputs() is not None  # the columnar path applies
        assert planned.stale["files"] == {} and sum(built) == 0, built
        if where == "s3":  # S3 stamps hold the ETag in quotes: JSON escapes them
            assert '"' in planned.stages[0].chunks[0]["fingerprint"]

        write("f3", "x,y\n10,20\n30,40\n")
        planned, built = _planned_counting(flow, out, monkeypatch)
        assert {i: s.cause for i, s in planned.stale["files"].items()} == {3: "input"} and sum(built) == 1, built
        assert _stale(flow, out) == {"files": (1, {"input": 1})}

        flow.write_text(flow.read_text().replace("SCALE = 1", "SCALE = 3"))
        planned, built = _planned_counting(flow, out, monkeypatch)
        assert sum(built) == 0, built  # code-stale from the version column alone (f3 included: code comes first)
        assert sorted(planned.stale["files"]) == list(range(8))
        assert {s.cause for s in planned.stale["files"].values()} == {"code"}
        accepted = cli("accept", str(flow), "--output", str(out))
        assert accepted.returncode == 0, accepted.stderr
        assert _stale(flow, out) == {"files": (1, {"input": 1})}  # accepted code; f3's source still changed
        planned, built = _planned_counting(flow, out, monkeypatch)
        assert {i: s.cause for i, s in planned.stale["files"].items()} == {3: "input"} and sum(built) == 1, built
        assert "f3.csv changed" in planned.stale["files"][3].detail
        report, _ = _run(flow, out, "--stale")
        assert _written(report) == {("files", "file=f3.csv")}
        planned, built = _planned_counting(flow, out, monkeypatch)
        assert planned.stale["files"] == {}
        assert _stale(flow, out) == {"files": (0, {})}
    finally:
        if server is not None:
            server.stop()
