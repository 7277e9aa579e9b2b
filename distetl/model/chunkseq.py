"""Chunk sequences generated on demand: a plan of a million chunks without a million
objects.

A regular plan (id ranges, days) knows chunk ``i`` from ``i`` alone, so it hands out a
:class:`ChunkSeq`: ``len``, indexing, slicing and iteration like a list, but each
:class:`~distetl.model.chunks.Chunk` is built when asked for and dropped after use. The
driver then holds a few integers per plan, not ~500 bytes per chunk, and a batch's
chunks exist only while the batch is in flight. A file plan keeps its sorted paths and
their stamps in two Arrow string arrays (:class:`FileChunks`, ~50 bytes per file);
explicit lists keep their chunks in a list. Every consumer treats all alike
(``Sequence[Chunk]``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Iterator, Optional, overload

from distetl.model.chunks import Chunk

__all__ = ["ChunkSeq", "DimFields", "IdChunks", "DayChunks", "HourChunks", "FileChunks", "IndexSet", "ProductChunks",
           "split_key"]


class ChunkSeq(Sequence):
    """A read-only sequence of chunks computed from their position.

    Subclasses implement :meth:`__len__` and :meth:`chunk`; :meth:`find` (key → index)
    may be overridden with arithmetic, the default scans.
    """

    #: Whether every field value is safe in a path segment by construction (numbers,
    #: ISO dates): a target template then needs no per-chunk check beyond the first.
    safe_values: bool = False

    def chunk(self, i: int) -> Chunk:
        """Chunk number ``i`` (0-based, non-negative, below ``len``)."""
        raise NotImplementedError

    def template_values(self, i: int) -> dict[str, Any]:
        """What a target template can use for chunk ``i``: its fields plus ``key``,
        ``index`` and ``chunk`` (as :meth:`Chunk.template_fields`)."""
        return self.chunk(i).template_fields()

    def __len__(self) -> int:
        raise NotImplementedError

    @overload
    def __getitem__(self, i: int) -> Chunk: ...

    @overload
    def __getitem__(self, i: slice) -> list[Chunk]: ...

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        n = len(self)
        if isinstance(i, slice):
            return [self.chunk(j) for j in range(*i.indices(n))]
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"chunk index {i} out of range (0..{n - 1})")
        return self.chunk(i)

    def __iter__(self) -> Iterator[Chunk]:
        chunk = self.chunk
        for i in range(len(self)):
            yield chunk(i)

    def find(self, key: str) -> Optional[int]:
        """The index of the chunk with ``key``, or None."""
        return next((i for i, c in enumerate(self) if c.key == key), None)

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence of the same chunks (a list of them included)."""
        if not isinstance(other, (ChunkSeq, list, tuple)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    def __hash__(self) -> int:
        n = len(self)
        return hash((n, self.chunk(0).key if n else None, self.chunk(n - 1).key if n else None))


@dataclass(frozen=True, eq=False)
class IdChunks(ChunkSeq):
    """Id ranges ``[start, stop)`` in steps of ``size`` (see :class:`distetl.model.plans.IdRange`)."""

    start: int
    stop: int
    size: int

    safe_values = True

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.size)

    @property
    def width(self) -> int:
        return len(str(self.stop - 1))

    def chunk(self, i: int) -> Chunk:
        lo = self.start + i * self.size
        hi = min(lo + self.size, self.stop)
        w = self.width
        return Chunk(key=f"ids={lo:0{w}d}-{hi - 1:0{w}d}",
                     fields={"start": lo, "stop": hi, "first": lo, "last": hi - 1}, index=i)

    def find(self, key: str) -> Optional[int]:
        head, _, rest = key.partition("=")
        lo, _, _ = rest.partition("-")
        if head != "ids" or not lo.isdigit():
            return None
        i, off = divmod(int(lo) - self.start, self.size)
        return i if off == 0 and 0 <= i < len(self) and self.chunk(i).key == key else None


@dataclass(frozen=True, eq=False)
class DayChunks(ChunkSeq):
    """``days`` consecutive days from ``first`` (see :class:`distetl.model.plans.DateRange`)."""

    first: dt.date
    days: int

    safe_values = True

    def __len__(self) -> int:
        return self.days

    def chunk(self, i: int) -> Chunk:
        day = dt.date.fromordinal(self.first.toordinal() + i)
        iso = day.isoformat()
        return Chunk(key=f"date={iso}",
                     fields={"date": iso, "year": iso[:4], "month": iso[:7], "day": iso[8:]}, index=i)

    def find(self, key: str) -> Optional[int]:
        head, _, rest = key.partition("=")
        try:
            day = dt.date.fromisoformat(rest)
        except ValueError:
            return None
        i = day.toordinal() - self.first.toordinal()
        return i if head == "date" and 0 <= i < self.days and self.chunk(i).key == key else None


@dataclass(frozen=True, eq=False)
class HourChunks(ChunkSeq):
    """``hours`` consecutive hours from the hour ordinal ``first`` (``date.toordinal() * 24
    + hour``; see :class:`distetl.model.plans.DateRange` with ``freq="hour"``).

    Chunk fields: ``hour`` (``2024-01-03T05``), ``date``, ``month``, ``year``; key
    ``hour=2024-01-03T05``.
    """

    first: int
    hours: int

    safe_values = True

    def __len__(self) -> int:
        return self.hours

    def chunk(self, i: int) -> Chunk:
        hour = self.first + i
        label = f"{dt.date.fromordinal(hour // 24).isoformat()}T{hour % 24:02d}"
        return Chunk(key=f"hour={label}",
                     fields={"hour": label, "date": label[:10], "month": label[:7], "year": label[:4]}, index=i)

    def find(self, key: str) -> Optional[int]:
        head, _, rest = key.partition("=")
        if head != "hour" or len(rest) != 13 or rest[10] != "T" or not rest[11:].isdigit():
            return None
        try:
            day = dt.date.fromisoformat(rest[:10])
        except ValueError:
            return None
        i = day.toordinal() * 24 + int(rest[11:]) - self.first
        return i if 0 <= i < self.hours and self.chunk(i).key == key else None


class FileChunks(ChunkSeq):
    """One chunk per file (see :class:`distetl.model.plans.FileList`), from sorted paths.

    Chunk ``i`` has fields ``path``, ``name`` (its last segment), ``stem`` (the name
    without its last suffix) and, where the plan listed them, ``fingerprint`` (the
    file's stamp); key ``file=<name>``.

    Args:
        paths: File URLs, sorted, names unique (an Arrow string array or a list).
        stamps: Each file's stamp, aligned with ``paths``, or None (explicit paths).
    """

    def __init__(self, paths: Any, stamps: Any = None):
        import pyarrow as pa

        self.paths = paths if isinstance(paths, pa.Array) else pa.array(list(paths), type=pa.string())
        self.stamps = None if stamps is None else (
            stamps if isinstance(stamps, pa.Array) else pa.array(list(stamps), type=pa.string()))

    @property
    def fingerprinted(self) -> bool:
        """Whether the chunks carry their file's stamp (a listed pattern)."""
        return self.stamps is not None

    def __len__(self) -> int:
        return len(self.paths)

    def chunk(self, i: int) -> Chunk:
        return _file_chunk(i, self.paths[i].as_py(), None if self.stamps is None else self.stamps[i].as_py())

    def __iter__(self) -> Iterator[Chunk]:
        step = 8192  # Arrow to Python a block at a time: a scalar access costs ~1 µs
        for lo in range(0, len(self), step):
            paths = self.paths.slice(lo, step).to_pylist()
            stamps = self.stamps.slice(lo, step).to_pylist() if self.stamps is not None else [None] * len(paths)
            for j, (path, stamp) in enumerate(zip(paths, stamps)):
                yield _file_chunk(lo + j, path, stamp)

    def names(self) -> Any:
        """Every chunk's file name, as an Arrow string array aligned with the paths."""
        import pyarrow.compute as pc

        trimmed = pc.utf8_rtrim(self.paths, characters="/")
        return pc.replace_substring_regex(trimmed, pattern=r"^.*/", replacement="", max_replacements=1)

    def find(self, key: str) -> Optional[int]:
        import numpy as np
        import pyarrow.compute as pc

        head, _, name = key.partition("=")
        if head != "file" or not name or "/" in name:
            return None
        hits = np.flatnonzero(pc.equal(self.names(), name).to_numpy(zero_copy_only=False))
        return int(hits[0]) if len(hits) else None

    def __repr__(self) -> str:
        return f"FileChunks({len(self)} files)"


def _file_chunk(i: int, path: str, stamp: Optional[str]) -> Chunk:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    fields = {"path": path, "name": name, "stem": name.rsplit(".", 1)[0] if "." in name else name}
    if stamp is not None:
        fields["fingerprint"] = stamp
    return Chunk(key=f"file={name}", fields=fields, index=i)


class IndexSet:
    """A set of chunk indexes ``0 .. size-1`` kept as one byte per chunk.

    Behaves like the ``set[int]`` it replaces for the operations plans use (``in``,
    ``len``, ascending iteration, ``add``, ``discard``), at 1 byte per chunk instead of
    ~60 for a set of Python ints.

    Args:
        size: How many chunks the plan has.
        members: Initial members.
    """

    __slots__ = ("_bits", "_count")

    def __init__(self, size: int, members: Sequence[int] | Iterator[int] = ()):
        self._bits = bytearray(size)
        self._count = 0
        for i in members:
            self.add(i)

    @classmethod
    def from_mask(cls, mask: Any) -> "IndexSet":
        """From a NumPy boolean array (member where True)."""
        import numpy as np

        out = cls(0)
        out._bits = bytearray(np.asarray(mask, dtype=np.uint8).tobytes())
        out._count = int(np.count_nonzero(mask))
        return out

    def add(self, i: int) -> None:
        if not self._bits[i]:
            self._bits[i] = 1
            self._count += 1

    def discard(self, i: int) -> None:
        if 0 <= i < len(self._bits) and self._bits[i]:
            self._bits[i] = 0
            self._count -= 1

    def __contains__(self, i: object) -> bool:
        return isinstance(i, int) and 0 <= i < len(self._bits) and bool(self._bits[i])

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[int]:
        if not self._count:
            return iter(())
        if self._count == len(self._bits):
            return iter(range(len(self._bits)))
        import numpy as np

        return iter(np.flatnonzero(np.frombuffer(bytes(self._bits), dtype=np.uint8)).tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IndexSet):
            return self._bits == other._bits
        if isinstance(other, (set, frozenset)):
            return set(self) == other
        return NotImplemented

    def __repr__(self) -> str:
        return f"IndexSet({len(self)} of {len(self._bits)})"


# ---------------------------------------------------------------------------
# Products of plans: two-dimensional (or more) keys

#: Separator of the dimensions in a product key: ``date=2024-01-03/origin=EWR``.
DIM_SEP = "/"
#: Characters a dimension value may not hold (it would break the key or a path).
_UNSAFE_VALUE = ("/", "\\", "=", "\x00")
_UNSAFE_FIELD = ("/", "\\", "\x00")
#: Up to this many chunks in all, the dimensions after the first are held as lists.
_LIST_INNER = 100_000


def split_key(key: str) -> list[tuple[str, str]]:
    """The ``(dimension, value)`` pairs of a key: ``date=2024-01-03/origin=EWR`` gives
    ``[("date", "2024-01-03"), ("origin", "EWR")]``; a one-dimensional key gives one pair.
    A part without ``=`` gives the dimension ``""``."""
    out = []
    for part in key.split(DIM_SEP):
        name, eq, value = part.partition("=")
        out.append((name, value) if eq else ("", part))
    return out


def unsafe_value(text: str, *, in_key: bool) -> bool:
    """Whether ``text`` cannot be a dimension value (``in_key``) or a path segment: empty,
    ``.``, ``..``, or holding ``/``, ``\\``, NUL (and ``=`` in a key)."""
    bad = _UNSAFE_VALUE if in_key else _UNSAFE_FIELD
    return not text or text in (".", "..") or any(c in text for c in bad)


class DimFields(dict):
    """A product chunk's fields: one dict, as templates and extracts see them, that also
    knows which fields came from which dimension (for :mod:`distetl.model.mappings.dims`).

    Args:
        values: Every field of the chunk.
        dims: ``(dimension, field names)`` per dimension, in key order.
    """

    __slots__ = ("dims",)

    def __init__(self, values: Any = (), dims: tuple[tuple[str, tuple[str, ...]], ...] = ()):
        super().__init__(values)
        self.dims = dims

    def of(self, position: int) -> dict[str, Any]:
        """The fields of the dimension at ``position`` (0-based, in key order)."""
        return {name: self[name] for name in self.dims[position][1] if name in self}

    def __reduce__(self) -> Any:
        return (DimFields, (dict(self), self.dims))


class ProductChunks(ChunkSeq):
    """Every combination of the chunks of several plans (see
    :class:`distetl.model.plans.Product`), the last dimension varying fastest.

    Chunk ``i`` is built from one chunk of each dimension when asked for: its key joins
    theirs with ``/`` (``date=2024-01-03/origin=EWR``), its fields are all of theirs
    (a :class:`DimFields`). The sequence holds the dimensions' own sequences, nothing per
    combination: 3,650 days × 100 origins are 3,750 chunks' worth of memory at most.

    Args:
        parts: Each dimension's chunks.
        names: Each dimension's name (its keys' ``name=``).
        fields: Each dimension's field names.
        safe: Whether every field value of every dimension is safe in a path segment.
    """

    def __init__(self, parts: Sequence[Sequence[Chunk]], names: Sequence[str],
                 fields: Sequence[tuple[str, ...]], safe: bool):
        self.parts = tuple(parts)
        self.names = tuple(names)
        self.dims = tuple(zip(self.names, (tuple(f) for f in fields)))
        self.safe_values = safe
        sizes = [len(p) for p in self.parts]
        strides = [1] * len(sizes)
        for k in range(len(sizes) - 2, -1, -1):
            strides[k] = strides[k + 1] * sizes[k + 1]
        self._strides = tuple(strides)
        self._n = strides[0] * sizes[0] if sizes else 0
        self._outer: tuple[int, Any] = (-1, None)
        self._finders: list[Any] = [None] * len(self.parts)
        self._lists: tuple[Sequence[Chunk], ...] | None = None

    def __len__(self) -> int:
        return self._n

    def _inner(self) -> tuple[Sequence[Chunk], ...]:
        """The dimensions after the first, as lists when they are small (indexing a list
        is cheaper than building a chunk), else as they are."""
        if self._lists is None:
            small = sum(len(p) for p in self.parts[1:]) <= _LIST_INNER
            self._lists = tuple(list(p) if small and not isinstance(p, list) else p for p in self.parts[1:])
        return self._lists

    def _subs(self, i: int) -> list[Chunk]:
        j, rest = divmod(i, self._strides[0])
        last_j, last = self._outer
        if j != last_j:
            last = self.parts[0][j]
            self._outer = (j, last)
        subs = [last]
        for part, stride in zip(self._inner(), self._strides[1:]):
            j, rest = divmod(rest, stride)
            subs.append(part[j])
        return subs

    def chunk(self, i: int) -> Chunk:
        subs = self._subs(i)
        values: dict[str, Any] = {}
        for sub in subs:
            values.update(sub.fields)
        return Chunk(key=DIM_SEP.join([sub.key for sub in subs]), fields=DimFields(values, self.dims), index=i)

    def template_values(self, i: int) -> dict[str, Any]:
        if len(self.parts) != 2:
            subs = self._subs(i)
            values: dict[str, Any] = {"key": DIM_SEP.join([sub.key for sub in subs]), "index": i, "chunk": i}
            for sub in subs:
                values.update(sub.fields)
            return values
        j, k = divmod(i, self._strides[0])
        last_j, last = self._outer
        if j != last_j:
            last = self.parts[0][j]
            self._outer = (j, last)
        sub = self._inner()[0][k]
        values = {"key": last.key + DIM_SEP + sub.key, "index": i, "chunk": i}
        values.update(last.fields)
        values.update(sub.fields)
        return values

    def __iter__(self) -> Iterator[Chunk]:
        if not self._n:
            return
        inner = [list(p) for p in self.parts[1:]]
        dims = self.dims
        i = 0
        for outer in self.parts[0]:
            for combo in _combos(inner):
                subs = (outer, *combo)
                values: dict[str, Any] = {}
                for sub in subs:
                    values.update(sub.fields)
                yield Chunk(key=DIM_SEP.join(sub.key for sub in subs), fields=DimFields(values, dims), index=i)
                i += 1

    def find(self, key: str) -> Optional[int]:
        parts = key.split(DIM_SEP)
        if len(parts) != len(self.parts):
            return None
        i = 0
        for k, (part, stride) in enumerate(zip(parts, self._strides)):
            j = self._find_in(k, part)
            if j is None:
                return None
            i += j * stride
        return i

    def _find_in(self, k: int, key: str) -> Optional[int]:
        seq = self.parts[k]
        if isinstance(seq, ChunkSeq):
            return seq.find(key)
        if self._finders[k] is None:
            self._finders[k] = {c.key: j for j, c in enumerate(seq)}
        return self._finders[k].get(key)

    def __repr__(self) -> str:
        return f"ProductChunks({' × '.join(f'{n} ({len(p)})' for n, p in zip(self.names, self.parts))})"


def _combos(lists: list[list[Chunk]]) -> Iterator[tuple[Chunk, ...]]:
    import itertools

    return itertools.product(*lists) if lists else iter([()])
