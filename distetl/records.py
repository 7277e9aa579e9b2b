"""The chunk record: what produced a committed file, kept in the file itself; and the
per-stage index that caches the records.

Every committed Parquet file carries, in its key-value metadata under
``distetl.record``, a JSON record: pipeline, stage, chunk key, the stage's code version,
the fingerprints of its inputs (a source file's size and modification time or ETag; an
upstream chunk's data version), its own data version (a digest of the code version and
the input fingerprints), distetl's version, the run id, when it was produced and its
rows. It is written with the data, so a file and its record cannot disagree.

The index (``{output}/_distetl/{pipeline}/index/{stage}.parquet``) is a cache: one row
per committed file with the file's listing stamp (size plus modification time or ETag)
and its record. It is trusted for a file only while the listing shows the same stamp;
any other file has its footer read (in parallel). So status costs one listing per
stage and one small read, not a request per chunk.
"""

from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["ChunkRecord", "RECORD_KEY", "StageIndex", "data_version", "index_entries", "read_record", "records_for"]

#: Parquet key-value metadata key of a chunk's record.
RECORD_KEY = b"distetl.record"

#: Footers read at once when the index does not cover a file.
FOOTER_THREADS = 16


def data_version(version: Optional[str], inputs: Mapping[str, Any]) -> str:
    """The data version of a chunk: a digest of its code version and its inputs'
    fingerprints. Recomputing a chunk with the same code from the same inputs gives the
    same data version, so its dependants stay fresh."""
    text = json.dumps({"version": version, "inputs": dict(inputs)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ChunkRecord:
    """What produced one committed file.

    Attributes:
        key: The chunk key.
        stage: The stage.
        version: The stage's code version then.
        inputs: Input → fingerprint (``source`` for a file plan's file; upstream chunk
            key → its data version for a downstream stage).
        data_version: Digest of ``version`` and ``inputs``.
        pipeline: The pipeline.
        run_id: The run that produced it.
        rows: Rows in the file.
        produced_at: When it was produced (UTC, ISO 8601).
        distetl: distetl's version.
    """

    key: str
    stage: str
    version: Optional[str] = None
    inputs: dict[str, Any] = field(default_factory=dict)
    data_version: str = ""
    pipeline: str = ""
    run_id: str = ""
    rows: int = 0
    produced_at: str = ""
    distetl: str = ""

    @classmethod
    def from_json(cls, text: str | bytes) -> "ChunkRecord":
        data = json.loads(text)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)


def read_record(storage: Any, url: str) -> Optional[ChunkRecord]:
    """The record in one file's footer (one small read); None if it has none (written
    by an older distetl or another tool) or cannot be read."""
    try:
        if storage.is_local:
            metadata = pq.read_metadata(storage.normalize(url))
        else:
            with storage.open(url, "rb") as handle:
                metadata = pq.read_metadata(handle)
    except (OSError, pa.ArrowException):
        return None
    raw = (metadata.metadata or {}).get(RECORD_KEY)
    if raw is None:
        return None
    try:
        return ChunkRecord.from_json(raw)
    except (ValueError, TypeError):
        return None


class StageIndex:
    """The cached records of one stage's committed files.

    Args:
        storage: The output's storage.
        output: The output root.
        pipeline: The pipeline's name.
        stage: The stage's name.
    """

    def __init__(self, storage: Any, output: str, pipeline: str, stage: str):
        self.storage = storage
        self.path = f"{output.rstrip('/')}/_distetl/{pipeline}/index/{stage}.parquet"

    def load(self) -> dict[str, tuple[str, ChunkRecord]]:
        """Path → (stamp, record); empty if there is no index (or it is unreadable)."""
        data = self.storage.read_bytes(self.path)
        if not data:
            return {}
        try:
            table = pq.read_table(io.BytesIO(data))
        except (OSError, pa.ArrowException):
            return {}
        paths = table.column("path").to_pylist()
        stamps = table.column("stamp").to_pylist()
        records = table.column("record").to_pylist()
        out = {}
        for path, stamp, record in zip(paths, stamps, records):
            try:
                out[path] = (stamp, ChunkRecord.from_json(record))
            except (ValueError, TypeError):
                continue
        return out

    def save(self, entries: Mapping[str, tuple[str, ChunkRecord]]) -> None:
        """Replace the index with ``entries`` (one atomic commit)."""
        paths = sorted(entries)
        table = pa.table({
            "path": pa.array(paths, pa.string()),
            "stamp": pa.array([entries[p][0] for p in paths], pa.string()),
            "key": pa.array([entries[p][1].key for p in paths], pa.string()),
            "record": pa.array([entries[p][1].to_json() for p in paths], pa.string()),
        })
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self.storage.write_atomic(self.path, buffer.getvalue())


def records_for(
    storage: Any, stamps: Mapping[str, str], index: Mapping[str, tuple[str, ChunkRecord]],
    fresh: Optional[Mapping[str, ChunkRecord]] = None,
) -> tuple[dict[str, Optional[ChunkRecord]], int]:
    """The records of committed files: from ``fresh`` (written by this run), from the
    index where its stamp still matches the listing, else from the file's footer.

    Args:
        storage: The output's storage.
        stamps: Committed path → its listing stamp.
        index: The stage's index (:meth:`StageIndex.load`).
        fresh: Records of files this run wrote (path → record).

    Returns:
        Path → record (None for a file without one), and how many footers were read.
    """
    out: dict[str, Optional[ChunkRecord]] = {}
    unread: list[str] = []
    fresh = fresh or {}
    for path, stamp in stamps.items():
        if path in fresh:
            out[path] = fresh[path]
            continue
        cached = index.get(path)
        if cached is not None and cached[0] == stamp:
            out[path] = cached[1]
        else:
            unread.append(path)
    if unread:
        with ThreadPoolExecutor(max_workers=min(FOOTER_THREADS, len(unread))) as pool:
            for path, record in zip(unread, pool.map(lambda p: read_record(storage, p), unread)):
                out[path] = record
    return out, len(unread)


def index_entries(stamps: Mapping[str, str], records: Mapping[str, Optional[ChunkRecord]]
                  ) -> dict[str, tuple[str, ChunkRecord]]:
    """Index rows for the committed files that have a record."""
    return {p: (stamps[p], r) for p, r in records.items() if r is not None and p in stamps}

