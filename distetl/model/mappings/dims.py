"""Mappings over product keys (``date=2024-01-03/origin=EWR``, see
:class:`distetl.model.plans.Product`): work along one dimension, keep the others.

* :class:`Along` applies a one-dimensional mapping to one dimension, per combination of
  the others: ``Along("date", CalendarWindow("month"))`` maps date × origin days to
  month × origin chunks, each month of an origin reading that origin's days.
* :class:`Collapse` drops a dimension: ``Collapse("origin")`` maps date × origin to
  dates, each day reading every origin of that day.

:class:`~distetl.model.mappings.basic.Identity` needs nothing new: a product key is a key.

A key's dimensions are its ``/``-separated ``name=value`` parts, in order; which fields
belong to which dimension comes from the chunk's
:class:`~distetl.model.chunkseq.DimFields` (chunks of a Product and of these mappings),
else from the key (a dimension's field is its name). Plain Python, no pyarrow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from distetl.errors import ConfigError, PlanError
from distetl.model.chunks import Chunk
from distetl.model.chunkseq import DIM_SEP, DimFields
from distetl.model.mappings.base import Mapping, UpstreamKeys, _gc_paused

__all__ = ["Along", "Collapse"]


def _names(key: str) -> list[str]:
    return [part.partition("=")[0] for part in key.split(DIM_SEP)]


def _check_dim(user: str, dim: Any) -> None:
    if not isinstance(dim, str) or not dim or any(c in dim for c in "/=\\"):
        raise ConfigError(f"a dimension name for {user} (a plan's key field, e.g. 'date')", repr(dim),
                          f"pass e.g. {user}('date', ...)" if user == "Along" else f"pass e.g. {user}('origin')")


def _position(user: str, dim: str, key: str) -> tuple[list[str], int]:
    """The dimensions of an upstream key and the position of ``dim`` among them.

    Raises:
        PlanError: If the upstream keys have no dimension ``dim``.
    """
    names = _names(key)
    if dim not in names:
        raise PlanError(
            f"upstream chunks with a dimension {dim!r} for {user}",
            f"dimensions {names} (key {key!r})",
            f"name one of {names} in {user}, or give the upstream stage a plan with a "
            f"{dim!r} dimension (e.g. Product(DateRange(...), ChunkList(...)))",
        )
    return names, names.index(dim)


def _split(chunk: Chunk, pos: int, ndims: int) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """A chunk's key parts, the fields of its dimension at ``pos`` and the other fields."""
    parts = chunk.key.split(DIM_SEP)
    fields = chunk.fields
    if isinstance(fields, DimFields) and len(fields.dims) == len(parts):
        own = fields.of(pos)
        rest = {name: value for name, value in fields.items() if name not in own}
        return parts, own, rest
    others = {part.partition("=")[0] for i, part in enumerate(parts) if i != pos}
    own = {name: value for name, value in fields.items() if name not in others}
    rest = {name: value for name, value in fields.items() if name in others}
    for i, part in enumerate(parts):  # a dimension's field is at least its key value
        if i != pos:
            name, _, value = part.partition("=")
            rest.setdefault(name, value)
    return parts, own, rest


def _dims_of(chunk: Chunk) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    fields = chunk.fields
    return fields.dims if isinstance(fields, DimFields) else None


def _LOOKUP_ONLY() -> tuple[Any, ...]:
    """``_indexes`` methods that find upstream chunks through ``lookup`` alone (not by
    position), so :class:`Along` may hand them a lookup of full keys."""
    from distetl.model.mappings.calendar import CalendarWindow, TrailingDays

    return (Mapping._indexes, CalendarWindow._indexes, TrailingDays._indexes)


class _Memo:
    """Per-upstream facts a mapping computes once (distinct values of one dimension),
    kept for the last upstream only and never pickled."""

    __slots__ = ("upstream", "pos", "values")

    def __init__(self, upstream: Any, pos: int, values: list[str]):
        self.upstream, self.pos, self.values = upstream, pos, values


def _distinct_parts(owner: Any, upstream: UpstreamKeys, pos: int) -> list[str]:
    """The distinct key parts at ``pos`` of the upstream keys, in first-seen order (cached
    on ``owner`` for this upstream)."""
    memo = owner.__dict__.get("_memo")
    if memo is not None and memo.upstream is upstream and memo.pos == pos:
        return memo.values
    seen: dict[str, None] = {}
    for key in upstream.keys():
        seen.setdefault(key.split(DIM_SEP)[pos], None)
    values = list(seen)
    object.__setattr__(owner, "_memo", _Memo(upstream, pos, values))
    return values


class _MemoFree:
    """Mixin: drop the per-upstream cache when pickled (a stage ships to workers)."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_memo"}


class _SubView:
    """The upstream keys of one combination of the kept dimensions, seen as keys of the
    one dimension :class:`Along` works on (``date=2024-01-03`` for
    ``date=2024-01-03/origin=EWR``). Indexes are the full upstream's."""

    __slots__ = ("_up", "_pre", "_suf", "_values", "_keys")

    def __init__(self, upstream: UpstreamKeys, pre: str, suf: str, values: Any):
        self._up, self._pre, self._suf, self._values = upstream, pre, suf, values
        self._keys: list[str] | None = None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (self._pre + key + self._suf) in self._up

    def index_of(self, key: str) -> int:
        return self._up.index_of(self._pre + key + self._suf)

    def get(self, key: str, default: int | None = None) -> int | None:
        full = self._pre + key + self._suf
        return self._up.index_of(full) if full in self._up else default

    def keys(self) -> Sequence[str]:
        if self._keys is None:
            found = [(self._up.index_of(self._pre + v + self._suf), v) for v in self._values()
                     if (self._pre + v + self._suf) in self._up]
            found.sort()
            self._keys = [v for _, v in found]
        return self._keys

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


@dataclass(frozen=True)
class Along(_MemoFree, Mapping):
    """Apply a mapping to one dimension of product keys, per combination of the others.

    ``Along("date", CalendarWindow("month"))`` over upstream chunks
    ``date=…/origin=…``: downstream chunks (without a plan of their own) are
    ``month=2024-01/origin=EWR`` for every month and origin that has an upstream day,
    ordered as the upstream's dimensions; their fields are the window's (``month``,
    ``year``, ``start``, ``end``) plus the kept dimensions' (``origin``). Each reads the
    upstream chunks of its own origin that ``CalendarWindow("month")`` names for its
    month. A stage with its own plan (e.g. ``Product(DateRange(freq="month"),
    ChunkList(...))``) must order its dimensions as the upstream's.

    The inner mapping sees one-dimensional chunks (key ``date=2024-01-03``, the fields of
    that dimension) and the upstream keys of one combination of the other dimensions.

    Attributes:
        dim: The upstream dimension to map (its key's ``name=``, e.g. ``"date"``).
        mapping: The mapping applied along it.

    Raises:
        ConfigError: If ``dim`` is not a dimension name or ``mapping`` not a mapping.
    """

    dim: str
    mapping: Mapping

    def __post_init__(self) -> None:
        _check_dim("Along", self.dim)
        if not isinstance(self.mapping, Mapping):
            raise ConfigError(f"a distetl mapping for Along({self.dim!r}, ...)", repr(self.mapping),
                              f"pass e.g. Along({self.dim!r}, CalendarWindow('month'))")

    def _name(self) -> str:
        return f"Along({self.dim!r}, {type(self.mapping).__name__})"

    def downstream_chunks(self, upstream: Sequence[Chunk]) -> list[Chunk]:
        if not len(upstream):
            return []
        with _gc_paused():
            return self._derive(upstream)

    def _derive(self, upstream: Sequence[Chunk]) -> list[Chunk]:
        first = upstream[0]
        names, pos = _position(self._name(), self.dim, first.key)
        ndims = len(names)
        subs: dict[str, Chunk] = {}                       # along-dimension chunks, by key
        combos: dict[tuple[str, ...], list[str]] = {}     # kept parts → along keys
        kept_fields: dict[tuple[str, ...], dict[str, Any]] = {}
        kept_dims: dict[tuple[str, ...], Any] = {}
        for chunk in upstream:
            parts = chunk.key.split(DIM_SEP)
            sub_key = parts[pos] if len(parts) == ndims else ""
            kept = tuple(parts[:pos] + parts[pos + 1:])
            keys = combos.get(kept)
            if keys is None or sub_key not in subs:
                if _names(chunk.key) != names:
                    raise PlanError(
                        f"upstream chunks all keyed by the dimensions {names} for {self._name()}",
                        f"chunk {chunk.key!r}", "give the upstream stage one Product plan",
                        where=f"chunk {chunk.key}")
                _, own, rest = _split(chunk, pos, ndims)
                if keys is None:
                    keys = combos[kept] = []
                    kept_fields[kept] = rest
                    kept_dims[kept] = _dims_of(chunk)
                if sub_key not in subs:
                    subs[sub_key] = Chunk(key=sub_key, fields=own, index=len(subs))
            keys.append(subs[sub_key].key)
        ranks: list[dict[str, int]] = [{} for _ in range(ndims)]
        for kept in combos:
            for k, part in enumerate(kept):
                rank = ranks[k if k < pos else k + 1]
                rank.setdefault(part, len(rank))
        derived: dict[tuple[str, ...], list[Chunk]] = {}
        order: dict[str, int] = {}
        rows: list[tuple[tuple[int, ...], Chunk, tuple[str, ...]]] = []
        for kept, keys in combos.items():
            memo = tuple(keys)
            if memo not in derived:
                derived[memo] = self.mapping.downstream_chunks([subs[k] for k in keys])
            for d in derived[memo]:
                order.setdefault(d.key, len(order))
                rows.append((self._rank(kept, d.key, pos, ranks, order), d, kept))
        rows.sort(key=lambda row: row[0])
        out = []
        for i, (_, d, kept) in enumerate(rows):
            out.append(self._combine(d, kept, pos, kept_fields[kept], kept_dims[kept], i))
        seen: set[str] = set()
        for c in out:
            if c.key in seen:
                raise PlanError("unique chunk keys", f"{c.key!r} twice from {self.describe()}",
                                "give this stage its own plan, or use another inner mapping")
            seen.add(c.key)
        return out

    @staticmethod
    def _rank(kept: tuple[str, ...], key: str, pos: int, ranks: list[dict[str, int]],
              order: dict[str, int]) -> tuple[int, ...]:
        parts = list(kept)
        out = [ranks[k if k < pos else k + 1][p] for k, p in enumerate(parts)]
        out.insert(pos, order[key])
        return tuple(out)

    def _combine(self, d: Chunk, kept: tuple[str, ...], pos: int, rest: dict[str, Any],
                 dims: Any, index: int) -> Chunk:
        name, eq, value = d.key.partition("=")
        if not eq or DIM_SEP in d.key or "=" in value:
            raise PlanError(
                f"one name=value key per chunk from the mapping inside {self._name()}",
                repr(d.key), "use a mapping whose chunks are keyed name=value, e.g. CalendarWindow",
                where=f"chunk {d.key}")
        clash = sorted(set(d.fields) & set(rest))
        if clash:
            raise PlanError(
                f"fields of the mapped dimension distinct from the kept ones in {self._name()}",
                f"{clash} in chunk {d.key!r} and in the kept dimensions",
                "rename those fields in the upstream plan")
        parts = list(kept)
        parts.insert(pos, d.key)
        values = dict(rest)
        values.update(d.fields)
        new_dims: Any = ()
        if dims is not None and len(dims) == len(parts):
            new_dims = list(dims)
            new_dims[pos] = (name, tuple(d.fields))
            new_dims = tuple(new_dims)
        return Chunk(key=DIM_SEP.join(parts), fields=DimFields(values, new_dims) if new_dims else values,
                     index=index)

    def _check_parts(self, chunk: Chunk, names: list[str], pos: int) -> tuple[list[str], dict, dict]:
        """A downstream chunk's key parts and fields, checked against the upstream's dimensions."""
        parts, own, rest = _split(chunk, pos, len(names))
        mine = _names(chunk.key)
        if len(parts) != len(names) or [n for k, n in enumerate(mine) if k != pos] != \
                [n for k, n in enumerate(names) if k != pos]:
            raise PlanError(
                f"chunks keyed by the upstream's dimensions {names}, with {self.dim!r} at position "
                f"{pos + 1} replaced, for {self._name()}",
                f"chunk {chunk.key!r} (dimensions {mine})",
                "order the plans of this stage's Product as the upstream's, or drop the stage's "
                "plan to derive its chunks",
                where=f"chunk {chunk.key}")
        return parts, own, rest

    def upstream_keys(self, chunk: Chunk, upstream: UpstreamKeys) -> list[str]:
        keys = upstream.keys()
        if not len(keys):
            return []
        names, pos = _position(self._name(), self.dim, keys[0])
        parts, own, _ = self._check_parts(chunk, names, pos)
        pre = DIM_SEP.join(parts[:pos]) + DIM_SEP if pos else ""
        suf = DIM_SEP + DIM_SEP.join(parts[pos + 1:]) if pos + 1 < len(parts) else ""
        view = _SubView(upstream, pre, suf, lambda: _distinct_parts(self, upstream, pos))
        sub = Chunk(key=parts[pos], fields=own, index=chunk.index)
        return [pre + key + suf for key in self.mapping.upstream_keys(sub, view)]  # type: ignore[arg-type]

    def _indexes(self, chunk: Chunk, upstream: UpstreamKeys, lookup: Any) -> tuple[list[int], list[str]]:
        inner = type(self.mapping)._indexes
        if inner not in _LOOKUP_ONLY():
            return super()._indexes(chunk, upstream, lookup)
        keys = upstream.keys()
        if not len(keys):
            return [], []
        names, pos = _position(self._name(), self.dim, keys[0])
        parts, own, _ = self._check_parts(chunk, names, pos)
        pre = DIM_SEP.join(parts[:pos]) + DIM_SEP if pos else ""
        suf = DIM_SEP + DIM_SEP.join(parts[pos + 1:]) if pos + 1 < len(parts) else ""
        view = _SubView(upstream, pre, suf, lambda: _distinct_parts(self, upstream, pos))
        sub = Chunk(key=parts[pos], fields=own, index=chunk.index)
        indexes, lacking = self.mapping._indexes(
            sub, view, lambda key: lookup(pre + key + suf))  # type: ignore[arg-type]
        return indexes, [pre + key + suf for key in lacking]

    @property
    def allows_empty_inputs(self) -> bool:
        return self.mapping.allows_empty_inputs

    def describe(self) -> str:
        return f"Along({self.dim!r}, {self.mapping.describe()}) per combination of the other dimensions"


@dataclass(frozen=True)
class Collapse(_MemoFree, Mapping):
    """Drop one dimension of product keys: each chunk reads every upstream chunk that
    differs from it only in that dimension.

    ``Collapse("origin")`` over ``date=…/origin=…``: downstream chunks (without a plan of
    their own) are ``date=2024-01-03``, with the other dimensions' fields (``date``,
    ``year``, ``month``, ``day``), in upstream order; each reads every origin of its day.
    With one dimension left the keys are plain (``date=…``), so calendar mappings apply
    downstream.

    Attributes:
        dim: The upstream dimension to drop.

    Raises:
        ConfigError: If ``dim`` is not a dimension name.
    """

    dim: str

    def __post_init__(self) -> None:
        _check_dim("Collapse", self.dim)

    def _name(self) -> str:
        return f"Collapse({self.dim!r})"

    def _where(self, key: str) -> tuple[list[str], int]:
        names, pos = _position(self._name(), self.dim, key)
        if len(names) < 2:
            raise PlanError(
                f"upstream keys with another dimension besides {self.dim!r} for {self._name()}",
                f"key {key!r}", "use AllToOne() to read every upstream chunk into one")
        return names, pos

    def downstream_chunks(self, upstream: Sequence[Chunk]) -> list[Chunk]:
        if not len(upstream):
            return []
        names, pos = self._where(upstream[0].key)
        out: dict[str, Chunk] = {}
        with _gc_paused():
            for chunk in upstream:
                parts = chunk.key.split(DIM_SEP)
                if len(parts) != len(names):
                    raise PlanError(f"upstream chunks all keyed by the dimensions {names} for {self._name()}",
                                    f"chunk {chunk.key!r}", "give the upstream stage one Product plan",
                                    where=f"chunk {chunk.key}")
                key = DIM_SEP.join(parts[:pos] + parts[pos + 1:])
                if key in out:
                    continue
                _, _, rest = _split(chunk, pos, len(names))
                dims = _dims_of(chunk)
                if dims is not None and len(dims) == len(parts):
                    fields: Any = DimFields(rest, dims[:pos] + dims[pos + 1:])
                else:
                    fields = rest
                out[key] = Chunk(key=key, fields=fields, index=len(out))
        return list(out.values())

    def upstream_keys(self, chunk: Chunk, upstream: UpstreamKeys) -> list[str]:
        keys = upstream.keys()
        if not len(keys):
            return []
        names, pos = self._where(keys[0])
        parts = chunk.key.split(DIM_SEP)
        if _names(chunk.key) != names[:pos] + names[pos + 1:]:
            raise PlanError(
                f"chunks keyed by the upstream's dimensions without {self.dim!r} "
                f"({names[:pos] + names[pos + 1:]}) for {self._name()}",
                f"chunk {chunk.key!r}",
                "give this stage a plan with those dimensions in that order, or drop its plan",
                where=f"chunk {chunk.key}")
        pre = DIM_SEP.join(parts[:pos]) + DIM_SEP if pos else ""
        suf = DIM_SEP + DIM_SEP.join(parts[pos:]) if pos < len(parts) else ""
        found = []
        for value in _distinct_parts(self, upstream, pos):
            key = pre + value + suf
            if key in upstream:
                found.append((upstream.index_of(key), key))
        found.sort()
        return [key for _, key in found]

    def describe(self) -> str:
        return f"Collapse({self.dim!r}): each chunk reads every {self.dim} of the upstream"
