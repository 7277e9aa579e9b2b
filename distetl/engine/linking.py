"""Plan-time links of a stage: which upstream chunks each chunk reads (per input), the
chunks of a stage without a plan, its declared sources' stamps, and the stage named in a
plan error. Used by :mod:`distetl.engine.backfill` when it plans a run.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Iterator, Mapping, Optional

from distetl.errors import ConfigError, PlanError
from distetl.model.graph import StagePlan
from distetl.model.mappings import UpstreamKeys, resolve_inputs
from distetl.storage import Storage, _hide_userinfo as _hide

__all__ = ["check_chain_start", "derived_chunks", "in_stage", "resolve_links", "source_stamps"]


def check_chain_start(stage: Any, full: Any, narrowed: Any, params: Mapping[str, Any]) -> None:
    """A stage that reads its own past may not start after its plan's first chunk: the
    chunk at the new start would read nothing where its predecessor belongs.

    Raises:
        PlanError: Naming the stage, the option and the fix.
    """
    if not len(narrowed) or not len(full) or narrowed[0].key == full[0].key:
        return
    keys = UpstreamKeys.from_chunks(full)
    for item in stage.all_inputs:
        if item.upstream != stage.name:
            continue
        reads = item.mapping.upstream_keys(narrowed[0], keys)
        if reads:
            options = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in params.items())
            raise PlanError(
                f"the chain of stage {stage.name!r} (input {item.name}, {item.mapping.describe()}) to start at its "
                f"plan's first chunk {full[0].key!r}",
                f"{options}, whose first chunk {narrowed[0].key!r} reads {reads[0]!r} outside the narrowed plan",
                f"run stage {stage.name!r} without {options.split(' ')[0]} (committed chunks are skipped), or select "
                "other stages with --stage",
                where=f"stage {stage.name}",
            )


def derived_chunks(stage: Any, plans: Mapping[str, StagePlan]) -> Any:
    """The chunks of a stage without a plan: from its first input that gives chunks."""
    last: Optional[ConfigError] = None
    for item in stage.all_inputs:
        if item.upstream == stage.name:
            continue  # its own past cannot give it chunks
        try:
            return item.mapping.downstream_chunks(plans[item.upstream].chunks)
        except ConfigError as exc:
            last = exc
    raise last or ConfigError("a plan for a stage that reads only its own past", "none",
                              "give the stage plan=...", where=f"stage {stage.name}")


def resolve_links(stage: Any, chunks: Any, plans: Mapping[str, StagePlan],
                   keys_of: dict[str, UpstreamKeys]) -> Optional[dict[str, list[list[int]]]]:
    """Every chunk's upstream indexes, per input (None for a root stage)."""
    if not stage.all_inputs:
        return None
    out: dict[str, list[list[int]]] = {}
    for item in stage.all_inputs:
        if item.upstream == stage.name:
            upstream_chunks: Any = chunks
            keys = UpstreamKeys.from_chunks(chunks)
        else:
            upstream_chunks = plans[item.upstream].chunks
            keys = keys_of.get(item.upstream)
            if keys is None:
                keys = keys_of[item.upstream] = UpstreamKeys.from_chunks(upstream_chunks)
        out[item.name] = resolve_inputs(item.mapping, chunks, keys, stage.name, item.upstream,
                                        input_name=item.name if len(stage.all_inputs) > 1 else None)
    return out


def source_stamps(stage: Any, storage_options: Optional[Mapping[str, Any]]) -> dict[str, tuple[str, list[str]]]:
    """Each declared source's fingerprint (its listing stamp: no content read) and files.

    Raises:
        PlanError: For a source that does not exist (or a glob that matches nothing).
    """
    out: dict[str, tuple[str, list[str]]] = {}
    for source in stage.all_sources:
        storage = Storage.for_url(source.url, storage_options)
        stamps = storage.glob_stamps(source.url)
        if not stamps:
            raise PlanError(
                f"declared source {source.name!r} of stage {stage.name!r} to exist",
                f"nothing at {_hide(source.url)}" + (" (the glob matched no file)" if source.is_glob else ""),
                "fix the path in sources=..., or create the file before the run",
                where=f"stage {stage.name}",
            )
        files = sorted(stamps)
        if len(files) == 1 and not source.is_glob:
            fingerprint = stamps[files[0]]
        else:
            digest = hashlib.sha256("\n".join(f"{f}={stamps[f]}" for f in files).encode()).hexdigest()[:16]
            fingerprint = f"{len(files)} files:{digest}"
        out[source.name] = (fingerprint, [storage.unstrip(f) for f in files])
    return out
@contextlib.contextmanager
def in_stage(name: str) -> Iterator[None]:
    """Name the stage in a plan-time error from its plan or mapping (they do not know it)."""
    try:
        yield
    except PlanError as exc:
        if exc.where and exc.where.startswith(f"stage {name}"):
            raise
        where = f"stage {name}" + (f", {exc.where}" if exc.where else "")
        raise PlanError(exc.expected, exc.got, exc.fix, where=where).with_traceback(exc.__traceback__) from None
