"""distetl: resumable chunked Parquet backfills on Dask, orchestrated by Prefect 3.

Declare a :class:`Pipeline` (a plan, an extract, an optional transform, a target
template) and :func:`run` it, or use the ``distetl`` command.
"""

from typing import TYPE_CHECKING, Any

from distetl import compat

compat.install()

#: Where each public name lives. They load on first use (PEP 562), so that the
#: ``distetl`` command starts without importing pandas, Prefect or Dask when it does not
#: need them (a run handed to the home's warm run process).
_EXPORTS: dict[str, str] = {
    "PlannedRun": "distetl.engine.backfill", "plan": "distetl.engine.backfill", "run": "distetl.engine.backfill",
    "status": "distetl.engine.backfill",
    "DataCheck": "distetl.model.checks", "RowCountCheck": "distetl.model.checks", "warn": "distetl.model.checks",
    "Chunk": "distetl.model.chunks",
    "ChunkError": "distetl.errors", "ClusterError": "distetl.errors", "ConfigError": "distetl.errors",
    "DistetlError": "distetl.errors", "PlanError": "distetl.errors", "StorageError": "distetl.errors",
    "ChunkContext": "distetl.engine.execute",
    "ChunkResult": "distetl.state.results",
    "RunReport": "distetl.state.manifest",
    "Input": "distetl.model.inputs", "Source": "distetl.model.inputs",
    **{name: "distetl.model.mappings" for name in (
        "AllChunks", "AllToOne", "Along", "CalendarWindow", "Collapse", "FromFunction", "Identity", "Mapping",
        "Previous", "TrailingDays", "WindowDays")},
    "Pipeline": "distetl.model.pipeline",
    **{name: "distetl.model.plans" for name in ("ChunkList", "DateRange", "FileList", "IdRange", "Plan", "Product")},
    "RunnerSpec": "distetl.engine.runners",
    "Stage": "distetl.model.stages",
    "RunInterrupted": "distetl.engine.stopping",
}

if TYPE_CHECKING:  # what static tools (and the API docs) read
    from distetl.engine.backfill import PlannedRun, plan, run, status
    from distetl.model.checks import DataCheck, RowCountCheck, warn
    from distetl.model.chunks import Chunk
    from distetl.errors import ChunkError, ClusterError, ConfigError, DistetlError, PlanError, StorageError
    from distetl.engine.execute import ChunkContext
    from distetl.state.results import ChunkResult
    from distetl.state.manifest import RunReport
    from distetl.model.inputs import Input, Source
    from distetl.model.mappings import (AllChunks, AllToOne, Along, CalendarWindow, Collapse, FromFunction, Identity,
                                        Mapping, Previous, TrailingDays, WindowDays)
    from distetl.model.pipeline import Pipeline
    from distetl.model.plans import ChunkList, DateRange, FileList, IdRange, Plan, Product
    from distetl.engine.runners import RunnerSpec
    from distetl.model.stages import Stage
    from distetl.engine.stopping import RunInterrupted

from distetl.version import __version__  # noqa: E402

__all__ = [
    "AllChunks", "AllToOne", "Along", "CalendarWindow", "Chunk", "ChunkContext",
    "ChunkError", "ChunkList", "ChunkResult", "ClusterError", "Collapse", "ConfigError",
    "DataCheck", "DateRange", "DistetlError", "FileList", "FromFunction", "IdRange", "Identity",
    "Input", "Mapping", "Pipeline", "Plan", "PlanError", "PlannedRun",
    "Previous", "Product", "RowCountCheck", "RunInterrupted", "RunReport", "RunnerSpec", "Source",
    "Stage", "StorageError", "TrailingDays", "WindowDays", "plan", "run",
    "status", "warn",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distetl' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
