"""distetl: resumable chunked Parquet backfills on Dask, orchestrated by Prefect 3.

Declare a :class:`Pipeline` (a plan, an extract, an optional transform, a target
template) and :func:`run` it, or use the ``distetl`` command.
"""

from distetl import compat

compat.install()

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
