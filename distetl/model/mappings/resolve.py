"""Mappings applied to a whole stage at plan time: :func:`resolve_inputs`."""

from __future__ import annotations

from typing import Sequence

from distetl.model.chunks import Chunk
from distetl.errors import PlanError
from distetl.model.mappings.base import UpstreamKeys, Mapping, _lookup_for, _gc_paused

def resolve_inputs(
    mapping: Mapping,
    chunks: Sequence[Chunk],
    upstream: UpstreamKeys,
    stage: str,
    upstream_stage: str,
    input_name: str | None = None,
) -> list[list[int]]:
    """For each downstream chunk, the indexes of the upstream chunks it reads.

    Runs at plan time over every chunk of a stage, in one pass.

    Args:
        mapping: The downstream stage's mapping.
        chunks: The downstream stage's chunks.
        upstream: The upstream stage's keys.
        stage: The downstream stage's name, for messages.
        upstream_stage: The upstream stage's name, for messages.
        input_name: The input's name, for messages (stages with several inputs).

    Returns:
        One ascending list of upstream indexes per downstream chunk, in chunk order.

    Raises:
        PlanError: If the mapping names upstream keys the upstream stage does not have
            (the message names both stages, the first chunk and key, and how many), a
            chunk reads nothing and the mapping does not allow that, or the mapping
            refuses a chunk (its message then starts with ``stage NAME``).
    """
    with _gc_paused():
        try:
            return _resolve(mapping, chunks, upstream, stage, upstream_stage, input_name)
        except PlanError as error:
            if error.where and error.where.startswith(f"stage {stage}"):
                raise
            # A mapping's own refusal (a window that does not nest, …): say which stage.
            inner = f", {error.where}" if error.where else ""
            named = PlanError(error.expected, error.got, error.fix,
                              where=f"stage {stage}" + (f", input {input_name}" if input_name else "")
                              + f" (upstream {upstream_stage}){inner}")
            raise named.with_traceback(error.__traceback__) from None


def _resolve(
    mapping: Mapping,
    chunks: Sequence[Chunk],
    upstream: UpstreamKeys,
    stage: str,
    upstream_stage: str,
    input_name: str | None = None,
) -> list[list[int]]:
    where = f"stage {stage}" + (f", input {input_name}" if input_name else "")
    out: list[list[int]] = []
    missing: list[tuple[str, str]] = []
    missing_chunks = 0
    empty: list[str] = []
    allow_empty = mapping.allows_empty_inputs

    lookup = _lookup_for(upstream)
    indexes_of = mapping._indexes
    append = out.append
    for chunk in chunks:
        indexes, lacking = indexes_of(chunk, upstream, lookup)
        append(indexes)
        if lacking:
            missing_chunks += 1
            missing.extend((chunk.key, key) for key in lacking)
        elif not indexes:
            empty.append(chunk.key)

    if missing:
        chunk_key, key = missing[0]
        keys = upstream.keys()
        has = f"{len(keys)} chunks, {keys[0]!r} … {keys[-1]!r}" if len(keys) else "no chunks"
        more = ""
        if len(missing) > 1:
            more = f" ({len(missing)} missing keys over {missing_chunks} chunks in all)"
        raise PlanError(
            f"upstream keys that stage {upstream_stage!r} has ({has})",
            f"{key!r} read by chunk {chunk_key!r} of stage {stage!r} through "
            f"{mapping.describe()}{more}",
            f"widen the plan of stage {upstream_stage!r} to cover {key!r}, narrow the plan "
            f"of stage {stage!r}, or change the mapping so it names only keys of "
            f"stage {upstream_stage!r}",
            where=where,
        )
    if empty and not allow_empty:
        more = f" ({len(empty)} chunks in all)" if len(empty) > 1 else ""
        raise PlanError(
            f"at least one upstream chunk of stage {upstream_stage!r} for every chunk of "
            f"stage {stage!r}",
            f"none for chunk {empty[0]!r} through {mapping.describe()}{more}",
            f"narrow the plan of stage {stage!r} to what stage {upstream_stage!r} covers, "
            "widen the upstream plan, or change the mapping",
            where=where,
        )
    return out
