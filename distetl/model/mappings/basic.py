"""Mappings with no calendar: Identity, AllToOne, AllChunks, FromFunction."""

from __future__ import annotations

import collections.abc as cabc
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from distetl.model.chunks import Chunk
from distetl.errors import ConfigError, PlanError
from distetl.model.mappings.base import UpstreamKeys, Mapping, _Lookup, _reindexed

@dataclass(frozen=True)
class Identity(Mapping):
    """Each chunk reads the upstream chunk with the same key.

    Downstream chunks (without a plan of their own) are the upstream chunks: same keys,
    same fields.
    """

    def downstream_chunks(self, upstream: Sequence[Chunk]) -> list[Chunk]:
        return _reindexed(upstream)

    def upstream_keys(self, chunk: Chunk, upstream: UpstreamKeys) -> list[str]:
        return [chunk.key]

    def describe(self) -> str:
        return "Identity(): each chunk reads the upstream chunk with the same key"



@dataclass(frozen=True)
class AllToOne(Mapping):
    """Every upstream chunk goes to one downstream chunk (a summary over everything).

    Downstream chunks: exactly one, keyed ``key``, index 0 (none when the upstream is
    empty). Its fields are ``fields`` when given; otherwise a key ``name=value`` gives
    the field ``{name: value}`` (``year=2013`` gives ``{"year": "2013"}``) and any other
    key gives no fields. Templates can always use ``{key}``, and a template with no
    field, e.g. ``{output}/summary/part-0.parquet``, works too.

    Upstream keys: every upstream key, in upstream order (for every chunk of a stage's
    own plan as well).

    Attributes:
        key: The downstream chunk's key.
        fields: The downstream chunk's fields, or None for the default above.

    Raises:
        ConfigError: If ``key`` is not a non-empty string.
    """

    key: str = "all"
    fields: cabc.Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ConfigError(
                "AllToOne key: a non-empty string", repr(self.key), 'pass e.g. AllToOne(key="all")'
            )

    def downstream_chunks(self, upstream: Sequence[Chunk]) -> list[Chunk]:
        if not len(upstream):
            return []
        if self.fields is not None:
            fields = dict(self.fields)
        elif "=" in self.key:
            name, value = self.key.split("=", 1)
            fields = {name: value} if name else {}
        else:
            fields = {}
        return [Chunk(key=self.key, fields=fields, index=0)]

    def upstream_keys(self, chunk: Chunk, upstream: UpstreamKeys) -> list[str]:
        return list(upstream.keys())

    def _indexes(self, chunk: Chunk, upstream: UpstreamKeys, lookup: _Lookup) -> tuple[list[int], list[str]]:
        return list(range(len(upstream))), []

    def describe(self) -> str:
        return f"AllToOne(key={self.key!r}): one chunk reads every upstream chunk"


@dataclass(frozen=True)
class FromFunction(Mapping):
    """A function names the upstream keys each chunk reads.

    ``func(chunk)`` returns an iterable of upstream keys (not a single string). Keys are
    de-duplicated and ordered as upstream; keys the upstream stage lacks are kept (after
    the others, in the function's order) so :func:`resolve_inputs` reports them. A chunk
    for which the function names no key is an error there.

    It cannot derive downstream chunks: a stage using it needs its own plan.

    Attributes:
        func: ``Chunk -> Iterable[str]``; it runs on the driver at plan time.

    Raises:
        ConfigError: If ``func`` is not callable.
    """

    func: Callable[[Chunk], Iterable[str]]

    def __post_init__(self) -> None:
        if not callable(self.func):
            raise ConfigError(
                "FromFunction func: a callable chunk -> upstream keys",
                repr(self.func),
                "pass e.g. FromFunction(lambda chunk: [f\"date={chunk.date}\"])",
            )

    def downstream_chunks(self, upstream: Sequence[Chunk]) -> list[Chunk]:
        raise PlanError(
            "a stage with its own plan when it maps its inputs with FromFunction",
            f"a stage without a plan mapped by {self._name()}",
            "give the stage its own plan (FromFunction cannot derive chunks from the "
            "upstream stage's), or use a mapping that can, such as CalendarWindow",
        )

    def upstream_keys(self, chunk: Chunk, upstream: UpstreamKeys) -> list[str]:
        try:
            result = self.func(chunk)
        except Exception as exc:
            exc.add_note(f"distetl: in {self._name()} for chunk {chunk.key!r}")
            raise
        if isinstance(result, (str, bytes)) or not isinstance(result, cabc.Iterable):
            raise PlanError(
                f"an iterable of upstream keys from {self._name()}",
                f"{result!r} for chunk {chunk.key!r}",
                f"return a list, e.g. [{result!r}]" if isinstance(result, str)
                else "return a list of upstream keys",
                where=f"chunk {chunk.key}",
            )
        known: list[tuple[int, str]] = []
        unknown: list[str] = []
        seen: set[str] = set()
        for key in result:
            if not isinstance(key, str):
                raise PlanError(
                    f"string upstream keys from {self._name()}",
                    f"{key!r} for chunk {chunk.key!r}",
                    "return keys such as 'date=2013-01-01'",
                    where=f"chunk {chunk.key}",
                )
            if key in seen:
                continue
            seen.add(key)
            if key in upstream:
                known.append((upstream.index_of(key), key))
            else:
                unknown.append(key)
        known.sort()
        return [key for _, key in known] + unknown

    def _name(self) -> str:
        func = self.func
        name = getattr(func, "__qualname__", None) or type(func).__name__
        module = getattr(func, "__module__", None)
        return f"FromFunction({module}.{name})" if module else f"FromFunction({name})"

    def describe(self) -> str:
        return f"{self._name()}: the function names each chunk's upstream keys"


# ---------------------------------------------------------------------------
# Resolution


@dataclass(frozen=True)
class AllChunks(Mapping):
    """Every chunk reads every upstream chunk: a dimension table, a lookup, a model file.

    The reverse of :class:`AllToOne`: the upstream stage is typically a one-chunk stage
    (``nation``, ``rates``) that every chunk of a partitioned stage joins with. Replacing
    the upstream chunk makes every reader stale (``upstream``), and ``--stale`` redoes
    exactly those readers and what reads them.

    Downstream chunks: none of its own (a stage reading through it has a plan, or
    another input that gives its chunks). Upstream keys: every upstream key, in order.
    """

    def downstream_chunks(self, upstream: Sequence[Chunk]) -> list[Chunk]:
        raise ConfigError(
            "a stage whose chunks come from its plan or from another input", "AllChunks() as the input "
            "that decides the stage's chunks",
            "give the stage a plan=..., or list first an input whose mapping gives chunks (Identity, "
            "CalendarWindow, ...), and AllChunks() inputs after it",
        )

    def upstream_keys(self, chunk: Chunk, upstream: UpstreamKeys) -> list[str]:
        return list(upstream.keys())

    def _indexes(self, chunk: Chunk, upstream: UpstreamKeys, lookup: _Lookup) -> tuple[list[int], list[str]]:
        cached = self.__dict__.get("_shared")
        if cached is None or cached[0] is not upstream:
            # One list shared by every chunk of the stage (nobody mutates it): memory
            # stays one list per stage, not one per chunk.
            cached = (upstream, list(range(len(upstream))))
            object.__setattr__(self, "_shared", cached)
        return cached[1], []

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_shared"}  # never ship the cache

    def describe(self) -> str:
        return "AllChunks(): every chunk reads every upstream chunk"
