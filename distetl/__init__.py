"""distetl: resumable chunked Parquet backfills on Dask, orchestrated by Prefect 3.

Declare a :class:`Pipeline` (a plan, an extract, an optional transform, a target
template) and :func:`run` it, or use the ``distetl`` command.
"""

from distetl.backfill import PlannedRun, plan, run, status
from distetl.chunks import Chunk
from distetl.errors import ChunkError, ClusterError, ConfigError, DistetlError, PlanError, StorageError
from distetl.execute import ChunkContext, ChunkResult
from distetl.manifest import RunReport
from distetl.mappings import AllToOne, CalendarWindow, FromFunction, Identity, Mapping, TrailingDays, WindowDays
from distetl.pipeline import Pipeline
from distetl.plans import ChunkList, DateRange, FileList, IdRange, Plan
from distetl.runners import RunnerSpec
from distetl.stages import Stage
from distetl.stopping import RunInterrupted

__version__ = "0.1.0"

__all__ = [
    "AllToOne", "CalendarWindow", "Chunk", "ChunkContext", "ChunkError", "ChunkList", "ChunkResult",
    "ClusterError", "ConfigError", "DateRange", "DistetlError", "FileList", "FromFunction", "IdRange",
    "Identity", "Mapping", "Pipeline", "Plan", "PlanError", "PlannedRun", "RunInterrupted", "RunReport",
    "RunnerSpec", "Stage", "StorageError", "TrailingDays", "WindowDays", "plan", "run", "status",
    "__version__",
]
