"""The public names are pinned: a change to them is a deliberate API change."""

from __future__ import annotations

import subprocess
import sys

import distetl


def test_exported_names():
    assert sorted(distetl.__all__) == sorted([
        "AllChunks", "AllToOne", "Along", "CalendarWindow", "Chunk", "ChunkContext",
        "ChunkError", "ChunkList", "ChunkResult", "ClusterError", "Collapse", "ConfigError",
        "DateRange", "DistetlError", "FileList", "FromFunction", "IdRange", "Identity",
        "Input", "Mapping", "Pipeline", "Plan", "PlanError", "PlannedRun",
        "Previous", "Product", "RunInterrupted", "RunReport", "RunnerSpec", "Source",
        "Stage", "StorageError", "TrailingDays", "WindowDays", "plan", "run",
        "status", "__version__",
    ])
    for name in distetl.__all__:
        assert hasattr(distetl, name), name


def test_importing_distetl_does_not_import_prefect_or_dask():
    code = "import sys, distetl; print(sorted(m for m in ('prefect', 'distributed', 'prefect_dask') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
