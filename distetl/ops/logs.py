"""``distetl logs FLOW KEY``: one chunk's error and its own log lines, from the run records.

The run's per-chunk file (``{output}/_distetl/{pipeline}/runs/<time>-<id>.chunks.parquet``)
keeps each chunk's status, error and the log lines its user code emitted on the worker
(see :mod:`distetl.engine.chunklog`). This reads the newest run that ran the chunk: the
last run, else the ones before it (newest first).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Optional, Sequence

from distetl.errors import ConfigError

__all__ = ["add_logs_parser", "logs_command", "chunk_log"]

#: Earlier runs looked through when the last run did not run the chunk.
RUNS_LOOKED_AT = 50


def add_logs_parser(sub: Any) -> None:
    """The ``logs`` subcommand's options."""
    text = "print one chunk's error and log lines from the newest run that ran it"
    p = sub.add_parser("logs", help=text, description=text)
    p.add_argument("flow", help="flow file (e.g. flows/nycflights.py) or module:attribute")
    p.add_argument("key", help="the chunk's key, e.g. date=2013-01-05 (as in the run's table and status)")
    p.add_argument("--output", default=os.environ.get("DISTETL_OUTPUT", "./output"),
                   help="root the pipeline writes under (default ./output)")
    p.add_argument("--stage", default=None, metavar="NAME", help="the chunk's stage (when several have the key)")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec storage option, repeatable")
    p.add_argument("--json", action="store_true", help="print the chunk's row as JSON")


def chunk_log(storage: Any, output: str, pipeline: str, key: str,
              stage: Optional[str] = None) -> Optional[tuple[str, dict[str, Any]]]:
    """The chunk's row (and its per-chunk file) in the newest run that ran it, or None.

    Raises:
        ConfigError: No run of the pipeline has records under the output.
    """
    from distetl.state.manifest import manifest_dir, read_chunks

    folder = manifest_dir(output, pipeline)
    latest = storage.read_bytes(f"{folder}/latest.json")
    files = sorted(storage.glob(f"{folder}/runs/*.chunks.parquet"), reverse=True)
    if latest:
        first = json.loads(latest).get("chunks")
        if first:
            files = [first] + [f for f in files if storage.strip(f) != storage.strip(first)]
    if not files:
        raise ConfigError(f"run records of pipeline {pipeline!r} under {output}", "none",
                          "run it first (distetl run), or pass the --output it ran with")
    for path in files[:RUNS_LOOKED_AT]:
        for row in read_chunks(storage, path):
            if row.get("key") == key and (stage is None or row.get("stage") == stage):
                return path, row
    return None


def logs_command(args: argparse.Namespace, extra: Sequence[str], console: Any) -> int:
    """Run ``distetl logs``; returns the exit code."""
    from distetl.engine.loader import load_pipeline
    from distetl.storage import Storage, parse_storage_options

    pipeline = load_pipeline(args.flow)
    storage = Storage.for_url(args.output, parse_storage_options(args.storage_option))
    output = storage.normalize(args.output)
    names = [s.name for s in pipeline.stages] if pipeline.stages else [pipeline.name]
    if args.stage is not None and args.stage not in names:
        raise ConfigError(f"a stage of {pipeline.name} ({', '.join(names)})", repr(args.stage),
                          "pass one of them to --stage, or leave it out")
    found = chunk_log(storage, output, pipeline.name, args.key, args.stage)
    if found is None:
        raise ConfigError(
            f"chunk {args.key!r}" + (f" of stage {args.stage}" if args.stage else "")
            + f" in the last {RUNS_LOOKED_AT} runs of {pipeline.name} under {args.output}",
            "no run ran it", "check the key (distetl status lists missing chunks; keys look like date=2024-01-05), "
            "or run the chunk first")
    path, row = found
    if args.json:
        print(json.dumps({**row, "chunks_file": path}, default=str, indent=1))
        return 0
    where = f"stage {row.get('stage')}, " if row.get("stage") else ""
    console.print(f"chunk {row['key']} ({where}{row.get('status')}, {row.get('attempts') or 0} attempt(s), "
                  f"worker {row.get('worker') or '?'}; run records {path})", highlight=False, soft_wrap=True)
    if row.get("error"):
        console.print(f"error: {row['error']}", highlight=False, markup=False, soft_wrap=True)
    text = row.get("log")
    if text:
        console.print("log:", highlight=False)
        for line in text.splitlines():
            console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    else:
        console.print("log: (no log lines from the chunk's code)", highlight=False)
    return 0
