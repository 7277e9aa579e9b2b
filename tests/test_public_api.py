"""The public names are pinned: a change to them is a deliberate API change."""

from __future__ import annotations

import subprocess
import sys

import distetl


def test_exported_names():
    assert sorted(distetl.__all__) == sorted([
        "AllChunks", "AllToOne", "Along", "CalendarWindow", "Chunk", "ChunkContext",
        "ChunkError", "ChunkList", "ChunkResult", "ClusterError", "Collapse", "ConfigError",
        "DataCheck", "DateRange", "DistetlError", "FileList", "FromFunction", "IdRange", "Identity",
        "Input", "Mapping", "Pipeline", "Plan", "PlanError", "PlannedRun",
        "Previous", "Product", "RowCountCheck", "RunInterrupted", "RunReport", "RunnerSpec", "Source",
        "Stage", "StorageError", "TrailingDays", "WindowDays", "plan", "run",
        "status", "warn", "__version__",
    ])
    for name in distetl.__all__:
        assert hasattr(distetl, name), name


def test_importing_distetl_does_not_import_prefect_or_dask():
    code = "import sys, distetl; print(sorted(m for m in ('prefect', 'distributed', 'prefect_dask') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_pipeline_without_checks_does_not_import_pandera():
    """Checks cost nothing where none are declared: pandera is imported by the worker
    code of a stage that has a pandera schema, never by distetl itself."""
    code = ("import sys, tempfile, pandas as pd, distetl\n"
            "p = distetl.Pipeline(name='p', plan=distetl.IdRange(0, 4, 2), extract=lambda c: pd.DataFrame({'a': [1]}),"
            " target='{output}/p/{start}.parquet')\n"
            "report = distetl.run(p, tempfile.mkdtemp(), runner='sequential')\n"
            "print(report.written, 'pandera' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "2 False"
