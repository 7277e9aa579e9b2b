"""The mapping interface and the upstream keys it sees (see :mod:`distetl.model.mappings`)."""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

from distetl.model.chunks import Chunk
from distetl.errors import PlanError


_UNITS = ("month", "week", "year")
_DAY_KEY = "date="
_MAX_REPORTED = 5


class UpstreamKeys:
    """Read-only view of an upstream stage's chunk keys: key to index, and the key list.

    Built once per stage; it holds one dict and one tuple, nothing per chunk beyond
    that, so it is fine for millions of chunks.

    Args:
        keys: The upstream chunk keys in upstream order. A key's index is its position.

    Raises:
        PlanError: If a key is not a string or appears twice.
    """

    __slots__ = ("_keys", "_index")

    def __init__(self, keys: Iterable[str]):
        ordered = tuple(keys)
        index = {key: i for i, key in enumerate(ordered)}
        if len(index) != len(ordered):
            seen: set[str] = set()
            dupes = []
            for key in ordered:
                if key in seen and key not in dupes:
                    dupes.append(key)
                seen.add(key)
            raise PlanError(
                "unique upstream chunk keys",
                f"duplicates {dupes[:_MAX_REPORTED]}",
                "make the upstream stage's plan produce unique keys",
            )
        bad = next((k for k in ordered if not isinstance(k, str)), None)
        if bad is not None:
            raise PlanError("string chunk keys", repr(bad), "key chunks with strings")
        self._keys = ordered
        self._index = index

    @classmethod
    def from_chunks(cls, chunks: Iterable[Chunk]) -> "UpstreamKeys":
        """Build the view from the upstream stage's chunks, in their order.

        Args:
            chunks: The upstream chunks. Index ``i`` is the ``i``-th chunk's position,
                which is its :attr:`Chunk.index` for chunks straight from a plan.

        Returns:
            The view.
        """
        return cls(chunk.key for chunk in chunks)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __repr__(self) -> str:
        if not self._keys:
            return "UpstreamKeys([])"
        return f"UpstreamKeys({len(self._keys)} keys, {self._keys[0]!r} … {self._keys[-1]!r})"

    def keys(self) -> Sequence[str]:
        """The keys in upstream order (an immutable sequence; not a copy)."""
        return self._keys

    def index_of(self, key: str) -> int:
        """The upstream index of ``key``.

        Raises:
            KeyError: If the upstream stage has no chunk with that key.
        """
        return self._index[key]

    def get(self, key: str, default: int | None = None) -> int | None:
        """The upstream index of ``key``, or ``default`` when the upstream lacks it."""
        return self._index.get(key, default)


_Lookup = Callable[[str], "int | None"]


def _lookup_for(upstream: UpstreamKeys) -> _Lookup:
    """A fast ``key -> index or None`` for the view (any object with ``index_of`` works)."""
    if isinstance(upstream, UpstreamKeys):
        return upstream._index.get
    index_of = upstream.index_of

    def lookup(key: str) -> int | None:
        try:
            return index_of(key)
        except KeyError:
            return None

    return lookup


@dataclass(frozen=True)
class Mapping:
    """Base class of mappings. Subclasses are small frozen dataclasses."""

    def downstream_chunks(self, upstream: Sequence[Chunk]) -> list[Chunk]:
        """The downstream stage's chunks derived from the upstream stage's.

        Used when the downstream stage has no plan of its own. An empty upstream gives
        no downstream chunks.

        Args:
            upstream: The upstream stage's chunks, in upstream order.

        Returns:
            New chunks with unique keys and indexes ``0..n-1`` in order.

        Raises:
            PlanError: If this mapping cannot derive chunks from these upstream chunks.
        """
        raise NotImplementedError

    def upstream_keys(self, chunk: Chunk, upstream: UpstreamKeys) -> list[str]:
        """Keys of the upstream chunks ``chunk`` reads, in upstream order.

        Args:
            chunk: One downstream chunk.
            upstream: The upstream stage's keys.

        Returns:
            The keys. Mappings that read exactly named chunks (:class:`Identity`,
            :class:`WindowDays`, :class:`FromFunction`, the chunk's own day in
            :class:`TrailingDays`) return them even when the upstream lacks them, so
            :func:`resolve_inputs` can report them; window mappings return only the days
            that exist upstream.
        """
        raise NotImplementedError

    def describe(self) -> str:
        """One line for logs and manifests: the mapping and what it reads."""
        raise NotImplementedError

    @property
    def allows_empty_inputs(self) -> bool:
        """Whether a downstream chunk may read no upstream chunk at all (default no)."""
        return False

    def _indexes(self, chunk: Chunk, upstream: UpstreamKeys, lookup: _Lookup) -> tuple[list[int], list[str]]:
        """What :func:`resolve_inputs` needs for one chunk: ascending upstream indexes, and
        the keys named that the upstream lacks. Subclasses may override it for speed; it
        must agree with :meth:`upstream_keys`."""
        indexes: list[int] = []
        lacking: list[str] = []
        for key in self.upstream_keys(chunk, upstream):
            index = lookup(key)
            if index is None:
                lacking.append(key)
            else:
                indexes.append(index)
        if len(indexes) > 1:
            indexes.sort()
        return indexes, lacking


# ---------------------------------------------------------------------------
# Helpers


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building up to millions of small lists and chunks.

    Each allocation burst makes the collector rescan the growing heap (about 3-4x slower
    over a million chunks); what is built here holds no cycles. The previous state is
    restored on exit.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _reindexed(chunks: Iterable[Chunk]) -> list[Chunk]:
    """The same chunks with indexes 0..n-1 (reusing those already right), keys checked unique."""
    out: list[Chunk] = []
    for i, chunk in enumerate(chunks):
        out.append(chunk if chunk.index == i else Chunk(key=chunk.key, fields=chunk.fields, index=i))
    _check_unique(out)
    return out


def _check_unique(chunks: Sequence[Chunk]) -> None:
    keys = {chunk.key for chunk in chunks}
    if len(keys) == len(chunks):
        return
    seen: set[str] = set()
    dupes: list[str] = []
    for chunk in chunks:
        if chunk.key in seen and chunk.key not in dupes:
            dupes.append(chunk.key)
        seen.add(chunk.key)
    raise PlanError(
        "unique chunk keys",
        f"duplicates {dupes[:_MAX_REPORTED]}",
        "make the upstream stage's chunks unique, or give this stage its own plan",
    )
