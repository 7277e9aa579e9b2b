"""The documentation cannot rot: the site builds with ``mkdocs build --strict``, every
Python code block that defines a pipeline (in ``docs/`` and the README) runs on a small
plan and commits every chunk, and every ``distetl …`` command shown uses options the
command line parser has."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

import distetl
from distetl.cli import _base_parser
from distetl.engine.loader import load_pipeline
from distetl.model import plans as plan_classes

from conftest import REPO

PAGES = sorted((REPO / "docs").rglob("*.md")) + [REPO / "README.md"]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def _blocks(language: str | None = None) -> list[tuple[str, int, str]]:
    """(page, line, code) of every fenced block (of one language)."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            if language is None or m.group(1) == language:
                found.append((str(page.relative_to(REPO)), text[:m.start()].count("\n") + 1, m.group(2)))
    return found


PIPELINE_BLOCKS = [b for b in _blocks("python") if "Pipeline(" in b[2]]


def test_the_docs_have_pipelines_to_run_and_the_readme_is_short():
    pages = {page for page, _, _ in PIPELINE_BLOCKS}
    assert {"README.md", "docs/tutorials/first-backfill.md", "docs/tutorials/stages-and-joins.md",
            "docs/how-to/checks.md"} <= pages, pages
    assert len((REPO / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("page,line,code", PIPELINE_BLOCKS, ids=[f"{p}:{n}" for p, n, _ in PIPELINE_BLOCKS])
def test_every_pipeline_in_the_docs_runs_on_a_small_plan(page, line, code, tmp_path, prefect_api, monkeypatch):
    """The block is saved as a flow file on its own and run on its first 35 days (a
    month boundary included), on a local cluster: every chunk is committed and every
    stage's dataset reads back with pyarrow."""
    monkeypatch.chdir(tmp_path)
    flow = tmp_path / "flow.py"
    flow.write_text(code)
    pipeline = load_pipeline(str(flow))
    params = {}
    starts = [s.plan.start for s in pipeline.stages if isinstance(s.plan, distetl.DateRange)]
    if starts:
        first = dt.date.fromisoformat(str(min(starts))[:10])
        params = {"start": str(first), "end": str(first + dt.timedelta(days=34))}
    report = distetl.run(pipeline, str(tmp_path / "out"), runner="local", workers=2, params=params, progress=False)
    assert report.failed_count == 0, f"{page}:{line}: {[(r.key, r.error) for r in report.failed]}"
    assert report.written == report.to_run > 0
    for stage in pipeline.stages:
        root = tmp_path / "out" / stage.target.split("/")[1]
        table = ds.dataset(str(root), format="parquet", partitioning="hive").to_table()
        assert table.num_rows > 0, f"{page}:{line}: stage {stage.name} wrote no rows under {root}"


def _plan_options() -> set[str]:
    names = set()
    for cls in (plan_classes.DateRange, plan_classes.IdRange, plan_classes.FileList, plan_classes.ChunkList):
        names |= {f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(cls) if f.init}
    return names


def _parsers() -> dict[str, set[str]]:
    import argparse

    found: dict[str, set[str]] = {}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for action in subs:
            for sub_name, sub in action.choices.items():
                walk(sub, f"{name} {sub_name}".strip())
        if not subs:
            found[name] = {s for a in parser._actions for s in a.option_strings}

    walk(_base_parser(), "")
    return found


COMMAND = re.compile(r"(?:^|[\s/`(])distetl ((?:cluster (?:up|down|status))|run|status|accept|serve|ui|logs)\b([^\n`]*)")


def _commands() -> list[tuple[str, int, str, str]]:
    """(page, line, subcommand, the rest of its line) of every distetl command shown,
    in code blocks (continuation lines joined) and in inline code."""
    found = []
    for page in PAGES:
        text = page.read_text().replace("\\\n", " ")
        for n, line in enumerate(text.splitlines(), 1):
            for m in COMMAND.finditer(line):
                found.append((str(page.relative_to(REPO)), n, m.group(1), m.group(2)))
    return found


def test_every_distetl_command_in_the_docs_uses_options_the_parser_has():
    parsers, plan_options = _parsers(), _plan_options()
    commands = _commands()
    assert len(commands) > 40, "too few commands found: the pattern is broken"
    unknown = []
    for page, line, sub, rest in commands:
        known = parsers[sub] | (plan_options if sub in ("run", "status", "accept", "serve") else set())
        rest = rest.split("#")[0]
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest):
            if flag not in known:
                unknown.append(f"{page}:{line}: distetl {sub} {flag}")
    assert unknown == []


def test_the_site_builds_strictly_with_the_cli_reference_and_the_benchmarks(tmp_path):
    mkdocs = shutil.which("mkdocs", path=os.path.dirname(sys.executable)) or shutil.which("mkdocs")
    assert mkdocs, "mkdocs is not installed: pip install -e '.[docs]'"
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=str(REPO),
                          capture_output=True, text=True, timeout=240, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    cli_page = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    for flag in ("--chunks-per-task", "--stale", "--explain", "--cron", "--keep-cluster", "--worker-memory-limit"):
        assert flag in cli_page, flag
    bench_page = (tmp_path / "site" / "benchmarks" / "index.html").read_text()
    assert "Latest quick session" in bench_page
    api_page = (tmp_path / "site" / "api" / "stages" / "index.html").read_text()
    assert "CalendarWindow" in api_page and "upstream_keys" in api_page
