"""What one chunk's work came to: its status and the small result sent to the driver."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

__all__ = ["ChunkResult", "WRITTEN", "SKIPPED", "FAILED", "NOT_RUN", "BLOCKED"]

WRITTEN = "written"
SKIPPED = "skipped"
FAILED = "failed"
#: Not run because the run was stopped (SIGINT/SIGTERM): missing, for the rerun.
NOT_RUN = "not_run"
#: Not run because an input (an upstream chunk) failed.
BLOCKED = "blocked"


@dataclass
class ChunkResult:
    """The small result a chunk sends back to the driver (never the data)."""

    key: str
    path: str
    status: str
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    attempts: int = 0
    error: Optional[str] = None
    worker: str = ""
    task_run_id: Optional[str] = None
    traceback: Optional[str] = None
    timed_out: bool = False
    stage: str = ""
    #: Wall-clock start and end of the chunk's work (seconds since the epoch).
    started: float = 0.0
    ended: float = 0.0
    #: The record committed with the file (JSON), for the stage's index; not in manifests.
    record: Optional[str] = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("record", None)
        return data
