"""Which committed chunks are stale, and why: plain data over the plan and the records.

A committed chunk is **stale** when what would produce it now differs from what did:

* ``code``: its stage's code version differs from the one recorded (and that change was
  not accepted with ``distetl accept``);
* ``input``: its source file (a file plan's chunk) has another size, modification time
  or ETag than recorded;
* ``upstream``: an upstream chunk it reads is stale (it will be redone, so this one
  will be too), or now has another data version than recorded, or the set of chunks it
  reads changed;
* ``record``: the file carries no distetl record (another tool or an older distetl
  wrote it).

There is no limit on the number of inputs a chunk may have. A missing upstream chunk
(raw data deleted to save space) does not make its readers stale: their records say
what they were built from.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from distetl.model.inputs import fingerprint_key, source_key
from distetl.state.records import ChunkRecord

__all__ = ["Acceptance", "StaleChunk", "classify", "CAUSES"]

CAUSES = ("code", "input", "upstream", "record")


@dataclass(frozen=True)
class StaleChunk:
    """Why one committed chunk is stale.

    Attributes:
        cause: ``code``, ``input``, ``upstream`` or ``record``.
        detail: A sentence saying what changed, with the recorded and current values.
    """

    cause: str
    detail: str


@dataclass
class Acceptance:
    """Code versions accepted as equivalent without recomputing (``distetl accept``):
    per stage, a list of ``{"from": old, "to": new, "keys": [...] or None}``."""

    entries: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def accepts(self, stage: str, key: str, recorded: Optional[str], current: Optional[str]) -> bool:
        """Whether ``recorded`` was accepted as ``current`` for this chunk."""
        for entry in self.entries.get(stage, ()):
            if entry["from"] == recorded and entry["to"] == current and (entry["keys"] is None or key in entry["keys"]):
                return True
        return False

    def add(self, stage: str, recorded: str, current: str, keys: Optional[Sequence[str]]) -> None:
        self.entries.setdefault(stage, []).append(
            {"from": recorded, "to": current, "keys": sorted(keys) if keys is not None else None})

    def to_json(self) -> str:
        return json.dumps(self.entries, sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: Optional[bytes | str]) -> "Acceptance":
        return cls(json.loads(text) if text else {})


def classify(
    plans: Sequence[Any],
    records: Mapping[str, Any],
    versions: Mapping[str, Optional[str]],
    accepted: Optional[Acceptance] = None,
) -> dict[str, dict[int, StaleChunk]]:
    """The stale committed chunks of every stage, upstream first.

    Args:
        plans: The stages' plans (:class:`distetl.model.graph.StagePlan`), upstream first.
        records: Stage → its committed chunks' records (:class:`distetl.state.records.StageRecords`).
        versions: Stage → its current code version.
        accepted: Accepted code-version changes.

    Returns:
        Stage → chunk index → why it is stale (fresh chunks are absent).
    """
    accepted = accepted or Acceptance()
    by_name = {p.name: p for p in plans}
    stale: dict[str, dict[int, StaleChunk]] = {}
    for plan in plans:
        name = plan.name
        current = versions.get(name)
        mine = None
        if not plan.links and not plan.sources and current is not None:
            mine = _root_stale(plan, records[name], current, accepted)
        if mine is None:
            mine = {}
            for i, record in records[name].items():
                why = _why(plan, i, plan.chunks[i], record, current, accepted, by_name, records, stale, mine)
                if why is not None:
                    mine[i] = why
        stale[name] = mine
    return stale


def _differs(column: Any, current: str) -> Any:
    """Per row of an Arrow string column (plain or dictionary-encoded, maybe chunked):
    whether it is not ``current`` (null counts as different), as a NumPy mask."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    masks = []
    for part in parts:
        if pa.types.is_dictionary(part.type):
            same = [j for j, value in enumerate(part.dictionary.to_pylist()) if value == current]
            indices = part.indices.fill_null(-1).to_numpy(zero_copy_only=False)
            masks.append(~np.isin(indices, same))
        else:
            masks.append(pc.fill_null(pc.not_equal(part, current), True).to_numpy(zero_copy_only=False))
    return np.concatenate(masks) if masks else np.zeros(0, dtype=bool)


def _fingerprinted(chunks: Sequence[Any]) -> bool:
    """Whether any chunk carries its source's fingerprint (file plans)."""
    from distetl.model.chunkseq import FileChunks

    if isinstance(chunks, FileChunks):
        return chunks.fingerprinted
    if not isinstance(chunks, list):
        return False  # generated plans (ids, days) have none
    return any("fingerprint" in c.fields for c in chunks)


def _root_stale(plan: Any, records: Any, current: str, accepted: Acceptance) -> Optional[dict[int, StaleChunk]]:
    """The stale chunks of a stage without an upstream stage, when the index covers
    every committed chunk; None when that does not apply (then every record is checked).

    Over the index's columns, in Arrow and NumPy: a chunk whose recorded code version
    is not the current one (nor accepted) is stale (``code``), as :func:`_why` finds it,
    without building its record. For a file plan, a chunk whose recorded inputs are not
    exactly ``{"source": <the file's stamp now>}`` (compared as hashes of the JSON the
    index holds) is a suspect: only the suspects' records are built and checked one by
    one (:func:`_why`), which names the replaced source.
    """
    import numpy as np
    import pyarrow as pa

    from distetl.model.chunkseq import FileChunks

    chunks = plan.chunks
    files = isinstance(chunks, FileChunks) and chunks.fingerprinted
    if not files and _fingerprinted(chunks):
        return None  # a list of chunks carrying fingerprints: checked one by one
    column = records.covered_versions()
    if column is None:
        return None
    out: dict[int, StaleChunk] = {}
    positions = np.flatnonzero(_differs(column, current))
    if len(positions):
        recorded = column.take(pa.array(positions)).to_pylist()
        for position, version in zip(positions.tolist(), recorded):
            i = int(records.committed[position])
            if not accepted.accepts(plan.name, chunks[i].key, version, current):
                out[i] = StaleChunk("code", f"stage {plan.name!r} code changed: recorded version {version}, "
                                            f"current {current}")
    if files:
        suspect = records.covered_inputs() != _source_input_hashes(chunks, records.committed)
        suspects = [p for p in np.flatnonzero(suspect).tolist() if int(records.committed[p]) not in out]
        for i, record in records.records_at(suspects):
            why = _why(plan, i, chunks[i], record, current, accepted, {}, {}, {}, out)
            if why is not None:
                out[i] = why
    return out


def _source_input_hashes(chunks: Any, committed: Any) -> Any:
    """Per committed chunk of a file plan: the hash of the inputs JSON its record holds
    when its source is unchanged (``json.dumps({"source": stamp}, sort_keys=True)``),
    as a NumPy int64 array."""
    import numpy as np
    import pyarrow as pa

    out = np.empty(len(committed), dtype=np.int64)
    step = 65_536
    dumps = json.dumps
    for start in range(0, len(committed), step):
        stamps = chunks.stamps.take(pa.array(committed[start:start + step])).to_pylist()
        out[start:start + len(stamps)] = [
            hash(f'{{"source": "{stamp}"}}' if _PLAIN.fullmatch(stamp) else dumps({"source": stamp}, sort_keys=True))
            for stamp in stamps]
    return out


#: A stamp that ``json.dumps`` writes as it is (printable ASCII without '"' and '\').
_PLAIN = re.compile(r"[ !#-\[\]-~]*")


def _why(plan: Any, i: int, chunk: Any, record: Optional[ChunkRecord], current: Optional[str],
         accepted: Acceptance, by_name: Mapping[str, Any], records: Mapping[str, Mapping[int, Optional[ChunkRecord]]],
         stale: Mapping[str, Mapping[int, StaleChunk]], mine: Mapping[int, StaleChunk]) -> Optional[StaleChunk]:
    """Why chunk ``i`` of ``plan`` is stale, or None. ``mine`` holds this stage's stale
    chunks found so far (in chunk order): a chunk reading its own stage's past sees them."""
    name = plan.name
    if record is None:
        return StaleChunk("record", f"{plan.paths[i]} has no distetl record (written by another tool or an "
                                    "older distetl): its provenance is unknown")
    if record.version != current and not accepted.accepts(name, chunk.key, record.version, current):
        return StaleChunk("code", f"stage {name!r} code changed: recorded version {record.version}, "
                                  f"current {current}")
    now = chunk.fields.get("fingerprint")
    if now is not None and record.inputs.get("source") != now:
        return StaleChunk("input", f"source {chunk.fields.get('path', chunk.key)} changed: recorded "
                                   f"{_stamp(record.inputs.get('source'))}, now {_stamp(now)}")
    for source, (fingerprint, files) in plan.sources.items():
        was = record.inputs.get(source_key(source))
        if was != fingerprint:
            where = files[0] if len(files) == 1 else f"{len(files)} files"
            return StaleChunk("input", f"declared source {source!r} ({where}) changed: recorded "
                                       f"{_stamp(was)}, now {_stamp(fingerprint)}")
    links = plan.links
    if not links:
        return None
    recorded = {k: v for k, v in record.inputs.items() if k != "source" and not k.startswith("@")}
    expected: dict[str, Any] = {}
    for item, indexes in links:
        own = item.upstream == name
        upstream = plan if own else by_name.get(item.upstream)
        if upstream is None:
            continue
        for u in indexes[i]:
            ukey = upstream.chunks[u].key
            fkey = fingerprint_key(plan.stage, item.name, ukey)
            seen = mine if own else stale.get(upstream.name, {})
            if u in seen:
                label = f"{upstream.name}:{ukey}" if len(links) == 1 else f"{item.name} ({upstream.name}:{ukey})"
                return StaleChunk("upstream", f"input {label} is stale "
                                              f"({seen[u].cause}), so this chunk will be redone after it")
            if u in upstream.committed:
                up = records.get(upstream.name, {}).get(u)
                expected[fkey] = up.data_version if up is not None else None
            else:
                expected[fkey] = recorded.get(fkey)  # deleted raw data: the record says what it was
    if set(expected) != set(recorded):
        added = sorted(set(expected) - set(recorded))
        removed = sorted(set(recorded) - set(expected))
        return StaleChunk("upstream", "its inputs changed: " + "; ".join(
            part for part in (f"added {', '.join(added[:5])}" if added else "",
                              f"removed {', '.join(removed[:5])}" if removed else "") if part))
    for fkey, version in expected.items():
        if recorded.get(fkey) != version:
            label = f"{links[0][0].upstream}:{fkey}"
            if len(links) > 1:
                input_name, _, ukey = fkey.partition(":")
                label = f"{input_name} ({plan.stage.input(input_name).upstream}:{ukey})"
            return StaleChunk("upstream", f"input {label} was redone: data version "
                                          f"{recorded.get(fkey)} recorded, {version} now")
    return None


def _stamp(stamp: Optional[str]) -> str:
    """A stamp (``size:mtime-or-ETag``) for people."""
    if not stamp:
        return "nothing"
    size, _, tag = str(stamp).partition(":")
    return f"{size} bytes, {'ETag ' + tag if not tag.replace('.', '').isdigit() else 'modified ' + tag}"
