"""MkDocs hooks: pages that are generated from the code, so they cannot rot.

* ``<!-- distetl:cli -->`` becomes the reference of every ``distetl`` command and option,
  read from the command line parser itself (``distetl.cli``).
* ``<!-- distetl:benchmarks -->`` becomes the latest quick-benchmark table and chart:
  ``benchmarks/results/latest.json`` (and ``latest.png``) when ``pytest benchmarks/`` ran
  in this checkout in quick mode, else the snapshot committed under
  ``docs/assets/benchmarks/`` (copied there from a fresh-clone CI run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SNAPSHOT = ROOT / "docs" / "assets" / "benchmarks"
CHART = "assets/benchmarks/latest.png"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _subcommands(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, argparse.ArgumentParser]]:
    found: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:  # argparse keeps no public list of subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _subcommands(sub, f"{prefix} {name}")
                found.extend(nested or [(f"{prefix} {name}", sub)])
    return found


def cli_reference() -> str:
    """Markdown for every ``distetl`` command: its usage and a table of its options."""
    from distetl.cli import _base_parser

    out: list[str] = []
    for name, sub in _subcommands(_base_parser(), "distetl"):
        out += [f"### `{name}`", ""]
        if sub.description:
            out += [sub.description[0].upper() + sub.description[1:] + ".", ""]
        usage = sub.format_usage().replace("usage: ", "", 1).strip()
        out += ["```text", usage, "```", "", "| Option | What it does | Default |", "|---|---|---|"]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flags = ", ".join(action.option_strings) or action.dest.upper()
            if action.option_strings and action.nargs != 0:
                flags += " " + (action.metavar or action.dest.upper())
            default = "" if action.default in (None, False, [], argparse.SUPPRESS) else f"`{action.default}`"
            if action.choices and not isinstance(action, argparse._SubParsersAction):
                default = (default + " " if default else "") + "(one of " + ", ".join(f"`{c}`" for c in action.choices) + ")"
            out.append(f"| `{_escape(flags)}` | {_escape(action.help or '')} | {default} |")
        out.append("")
    return "\n".join(out)


def _latest() -> tuple[Optional[dict[str, Any]], Optional[Path], str]:
    """The newest complete quick-mode results: (data, chart, where they came from).

    This checkout's ``benchmarks/results/`` wins when it holds a quick session with at
    least the workloads of the committed snapshot (a run of one benchmark file does not
    replace a whole session's figures)."""
    found = []
    for folder, where in ((RESULTS, "benchmarks/results/ (this checkout)"),
                          (SNAPSHOT, "the snapshot in docs/assets/benchmarks/ (a fresh-clone CI run)")):
        path = folder / "latest.json"
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("mode") == "quick":
                chart = folder / "latest.png"
                workloads = {c.get("workload") for c in data.get("checks") or ()}
                found.append((data, chart if chart.exists() else None, where, workloads))
    if not found:
        return None, None, ""
    if len(found) == 2 and not found[0][3] >= found[1][3]:
        found = found[1:]
    data, chart, where, _ = found[0]
    return data, chart, where


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def benchmark_section() -> str:
    """Markdown: the machine, the checks and the derived figures of the latest quick session."""
    data, chart, where = _latest()
    if data is None:
        return ("No quick-benchmark results yet: run `pytest benchmarks/` (it writes "
                "`benchmarks/results/latest.json` and `latest.png`), then rebuild the docs.")
    m = data.get("machine", {})
    load = data.get("load_average", {})
    start = load.get("start") or [None]
    end = load.get("end") or [None]
    out = [
        f"Session {data.get('started', '?')} to {data.get('finished', '?')} (UTC), mode `{data.get('mode')}`, "
        f"from {where}.",
        "",
        f"Machine: {m.get('cpus')} CPUs ({m.get('cpu_model') or 'unknown model'}), {m.get('memory_gib')} GiB, "
        f"Python {m.get('python')}, {m.get('platform')}; niceness {m.get('niceness')}; load average "
        f"{_fmt(start[0], '.2f')} at the start, {_fmt(end[0], '.2f')} at the end; "
        f"{data.get('workers')} Dask workers × 1 thread. Versions: "
        + ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items() if v) + ".",
        "",
    ]
    checks = data.get("checks") or []
    if checks:
        out += ["| Workload | Check | Value | Needs | Result |", "|---|---|---:|---|---|"]
        for c in checks:
            out.append(f"| {c['workload']} | {_escape(c['name'])} | {_fmt(c['value'])} | {c['op']} {c['threshold']:g} | "
                       f"{'pass' if c['passed'] else '**fail**'} |")
        out.append("")
    rows = data.get("derived") or []
    if rows:
        out += ["| Workload | Variant | Chunks | Phase s | Wall s | Speedup vs sequential | Per chunk vs raw Dask |",
                "|---|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            phase = r.get("est_phase_s") or r.get("phase_s")
            est = " (est.)" if r.get("est_phase_s") else ""
            out.append(f"| {r.get('workload')} | {r.get('variant')} | {_fmt(r.get('chunks'), 'd') if isinstance(r.get('chunks'), int) else _fmt(r.get('chunks'))} | "
                       f"{_fmt(phase, '.2f')}{est} | {_fmt(r.get('wall_s'), '.2f')} | {_fmt(r.get('speedup'), '.2f')} | "
                       f"{_fmt(r.get('per_chunk_vs_raw'), '.2f')} |")
        out.append("")
    if chart is not None:
        out += [f"![The latest quick-benchmark chart]({CHART})", ""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!-- distetl:cli -->" in markdown:
        markdown = markdown.replace("<!-- distetl:cli -->", cli_reference())
    if "<!-- distetl:benchmarks -->" in markdown:
        section = benchmark_section()
        depth = page.file.src_uri.count("/")
        markdown = markdown.replace("<!-- distetl:benchmarks -->", section.replace(f"]({CHART})", f"]({'../' * depth}{CHART})"))
    return markdown


def on_files(files: Any, config: Any) -> Any:
    """Serve the chart the benchmarks page shows at ``assets/benchmarks/latest.png``."""
    from mkdocs.structure.files import File

    _, chart, _ = _latest()
    if chart is None or chart.parent == SNAPSHOT:
        return files  # none, or the committed snapshot (already a docs file)
    existing = files.get_file_from_path(CHART)
    if existing is not None:
        files.remove(existing)
    files.append(File.generated(config, CHART, abs_src_path=str(chart)))
    return files
