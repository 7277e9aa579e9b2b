"""What one chunk's work came to: its status and the small result sent to the driver."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

__all__ = ["describe_warnings", "ChunkResult", "PHASES", "WRITTEN", "SKIPPED", "FAILED", "NOT_RUN", "BLOCKED"]

WRITTEN = "written"
SKIPPED = "skipped"
FAILED = "failed"
#: Not run because the run was stopped (SIGINT/SIGTERM): missing, for the rerun.
NOT_RUN = "not_run"
#: Not run because an input (an upstream chunk) failed.
BLOCKED = "blocked"

#: Where a chunk's time goes, in the order it happens: each a ``<phase>_s`` field of
#: :class:`ChunkResult` and a column of the run's per-chunk file (seconds; a streamed
#: chunk's phases are summed over its pieces). ``write`` is the cast to the schema and
#: the Parquet serialisation (for a streamed chunk, the writes to the temp file or
#: multipart upload); ``commit`` the atomic commit.
PHASES = ("extract", "transform", "check", "write", "commit")


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
    #: Storage requests of the chunk (its skip check, input reads, commit) that failed
    #: transiently (5xx, throttled, connection reset, timeout) and were tried again by
    #: the storage client (S3; see :attr:`distetl.storage.Storage.retries`).
    storage_retries: int = 0
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
    #: The warning-level data checks the chunk failed, as JSON (``[{"check", "column",
    #: "rows"}, ...]``), or None.
    warnings: Optional[str] = None
    #: The chunk failed an error-level data check (``error`` says which).
    check_failed: bool = False
    #: Seconds of the last try in each of :data:`PHASES` (``seconds`` also counts
    #: retries, the record and the time between phases).
    extract_s: float = 0.0
    transform_s: float = 0.0
    check_s: float = 0.0
    write_s: float = 0.0
    commit_s: float = 0.0
    #: The chunk's own log lines on the worker (``logging`` records and warnings of its
    #: user code, the last 50 lines / 20 KB; see distetl.engine.chunklog), or None.
    log: Optional[str] = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("record", None)
        return data


def describe_warnings(warnings: Any) -> str:
    """A chunk's data check warnings (a record's ``checks`` or a result's JSON) on one
    line: ``check on column c: n failing row(s); ...``."""
    if isinstance(warnings, (str, bytes)):
        try:
            warnings = json.loads(warnings)
        except ValueError:
            return str(warnings)
    parts = []
    for w in warnings or ():
        where = f" on column {w['column']}" if w.get("column") else ""
        text = f"{w.get('check')}{where}: {w.get('rows')} failing row(s)"
        if w.get("message"):
            text += f" ({w['message']})"
        parts.append(text)
    return "; ".join(parts)
