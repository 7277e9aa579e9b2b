"""Mappings between the chunks of two stages: which upstream chunks each chunk reads.

A downstream stage declares one upstream stage and a :class:`Mapping`. The mapping
answers two questions, one method each (after Dagster's partition mappings):

* :meth:`Mapping.upstream_keys`: which upstream chunks does this downstream chunk read?
* :meth:`Mapping.downstream_chunks`: when the downstream stage has no plan of its own,
  which chunks does it have, given the upstream stage's chunks?

:func:`resolve_inputs` turns the first answer into upstream chunk indexes for a whole
stage at plan time, and reports keys the upstream stage does not have.

The upstream stage is seen through :class:`UpstreamKeys`, a read-only view of its keys
(key to index, plus the ordered key list), built once per stage. Mappings only use its
``in``, ``len``, :meth:`~UpstreamKeys.keys` and :meth:`~UpstreamKeys.index_of`, so a
caller may pass any object with those four.

Day chunks are keyed ``date=YYYY-MM-DD`` with fields ``date``, ``year``, ``month``
(``YYYY-MM``) and ``day``, as :class:`distetl.model.plans.DateRange` makes them. Mappings
that read upstream *days* from a window (:class:`CalendarWindow`,
:class:`TrailingDays`) look them up by that key.

This module is plain Python: it imports no Prefect, Dask, pandas or pyarrow.
"""

from __future__ import annotations

import calendar
import collections.abc as cabc
import contextlib
import datetime as dt
import functools
import gc
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from distetl.model.chunks import Chunk
from distetl.errors import ConfigError, PlanError

__all__ = [
    "AllToOne",
    "CalendarWindow",
    "FromFunction",
    "Identity",
    "Mapping",
    "TrailingDays",
    "UpstreamKeys",
    "WindowDays",
    "resolve_inputs",
]

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


def _iso_text(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        return value
    return None


def _parse_iso(text: str | None) -> dt.date | None:
    """A date from canonical ``YYYY-MM-DD`` text, else None."""
    # Ten characters with dashes at 4 and 7 rule out the other forms fromisoformat takes.
    if text is None or len(text) != 10 or text[4] != "-" or text[7] != "-":
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _day_key(ordinal: int) -> str:
    """The key ``date=YYYY-MM-DD`` of a day ordinal (cached: trailing windows overlap)."""
    return _DAY_KEY + dt.date.fromordinal(ordinal).isoformat()


def _day_of(chunk: Chunk, user: str, *, check_key: bool) -> tuple[str, dt.date]:
    """The date of a day chunk (its ``date`` field) as ISO text and parsed, parsed once.

    Args:
        chunk: The day chunk.
        user: The mapping, for messages.
        check_key: Also require the key ``date=YYYY-MM-DD`` (needed where other chunks
            look this one up by its date).

    Raises:
        PlanError: If the chunk has no valid ``date`` field, or its key does not match.
    """
    fields = chunk.fields
    if "date" not in fields:
        raise PlanError(
            f"day chunks with a 'date' field (YYYY-MM-DD) for {user}",
            f"chunk {chunk.key!r} with fields {sorted(fields)}",
            "use Identity() or FromFunction(...) for this stage, or give the upstream "
            "stage day chunks, e.g. DateRange(freq='day')",
            where=f"chunk {chunk.key}",
        )
    text = fields["date"]
    if type(text) is not str:
        text = _iso_text(text)
    day = _parse_iso(text)
    if day is None:
        raise PlanError(
            f"a 'date' field in ISO format (YYYY-MM-DD) for {user}",
            f"{fields['date']!r} in chunk {chunk.key!r}",
            "make the plan's date field an ISO date such as '2013-01-03'",
            where=f"chunk {chunk.key}",
        )
    if check_key and chunk.key != _DAY_KEY + text:
        raise PlanError(
            f"day chunks keyed date=YYYY-MM-DD for {user} (days are looked up by key)",
            f"chunk {chunk.key!r} with date {text!r}",
            "key the day chunks date=YYYY-MM-DD (DateRange(freq='day') and "
            "ChunkList(key_field='date') do), or use FromFunction(...)",
            where=f"chunk {chunk.key}",
        )
    return text, day


def _day_chunk(day: dt.date, index: int) -> Chunk:
    iso = day.isoformat()
    return Chunk(
        key=_DAY_KEY + iso,
        fields={"date": iso, "year": iso[:4], "month": iso[:7], "day": iso[8:10]},
        index=index,
    )


def _day_keys_in(upstream: UpstreamKeys, first: int, last: int) -> list[str]:
    """Keys ``date=…`` of the days with ordinals ``first..last`` that exist upstream, in upstream order."""
    first = max(first, 1)
    last = min(last, dt.date.max.toordinal())
    found = []
    for ordinal in range(first, last + 1):
        key = _day_key(ordinal)
        if key in upstream:
            found.append(key)
    return _in_upstream_order(found, upstream)


def _day_indexes(lookup: _Lookup, first: int, last: int) -> list[int]:
    """Ascending upstream indexes of the days with ordinals ``first..last`` that exist upstream."""
    first = max(first, 1)
    last = min(last, dt.date.max.toordinal())
    found = [i for i in map(lookup, map(_day_key, range(first, last + 1))) if i is not None]
    found.sort()
    return found


def _in_upstream_order(keys: list[str], upstream: UpstreamKeys) -> list[str]:
    """Sort keys (all upstream) by upstream index; already-sorted lists stay as they are."""
    if len(keys) > 1:
        indexes = [upstream.index_of(key) for key in keys]
        if any(a > b for a, b in zip(indexes, indexes[1:])):
            keys = [key for _, key in sorted(zip(indexes, keys))]
    return keys


def _label_of(unit: str, text: str, day: dt.date) -> str:
    """The label of the ``unit`` window holding ``day`` (ISO ``text``): ``2013-01``,
    ``2013-W01`` or ``2013``."""
    if unit == "month":
        return text[:7]
    if unit == "week":
        year, week, _ = day.isocalendar()
        return f"{year:04d}-W{week:02d}"
    return text[:4]


def _window_of(unit: str, day: dt.date) -> tuple[str, dt.date, dt.date]:
    """The calendar window (label, first day, last day) of ``unit`` containing ``day``."""
    if unit == "month":
        last = calendar.monthrange(day.year, day.month)[1]
        return (f"{day.year:04d}-{day.month:02d}", day.replace(day=1), day.replace(day=last))
    if unit == "week":
        year, week, weekday = day.isocalendar()
        monday = day - dt.timedelta(days=weekday - 1)
        sunday = monday + dt.timedelta(days=6)
        return (f"{year:04d}-W{week:02d}", monday, sunday)
    return (f"{day.year:04d}", day.replace(month=1, day=1), day.replace(month=12, day=31))


def _window_from_label(unit: str, label: str) -> tuple[dt.date, dt.date] | None:
    """First and last day of the window named ``label`` (``2013-01``, ``2013-W01``, ``2013``)."""
    try:
        if unit == "month":
            if len(label) != 7 or label[4] != "-":
                return None
            year, month = int(label[:4]), int(label[5:])
            return (dt.date(year, month, 1), dt.date(year, month, calendar.monthrange(year, month)[1]))
        if unit == "week":
            if len(label) != 8 or label[4:6] != "-W":
                return None
            monday = dt.date.fromisocalendar(int(label[:4]), int(label[6:]), 1)
            return (monday, monday + dt.timedelta(days=6))
        if len(label) != 4:
            return None
        year = int(label)
        return (dt.date(year, 1, 1), dt.date(year, 12, 31))
    except ValueError:
        return None


def _window_chunk(unit: str, label: str, first: dt.date, last: dt.date, index: int) -> Chunk:
    start, end = first.isoformat(), last.isoformat()
    if unit == "month":
        fields = {"month": label, "year": label[:4], "start": start, "end": end}
    elif unit == "week":
        fields = {"week": label, "year": label[:4], "start": start, "end": end}
    else:
        fields = {"year": label, "start": start, "end": end}
    return Chunk(key=f"{unit}={label}", fields=fields, index=index)


def _unit_of_key(key: str) -> str | None:
    name = key.split("=", 1)[0]
    return name if name in _UNITS and "=" in key else None


# ---------------------------------------------------------------------------
# Mappings


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
class CalendarWindow(Mapping):
    """Day chunks to the calendar month, ISO week or year they fall in.

    Downstream chunks, one per window holding at least one upstream day, in calendar
    order; ``start`` and ``end`` are always the full calendar window, even where the
    upstream days cover only part of it:

    * ``month``: key ``month=2013-01``; fields ``month`` (``2013-01``), ``year``,
      ``start``, ``end`` (as ``DateRange(freq="month")`` chunks, so ``month={month}``
      templates work).
    * ``week``: key ``week=2013-W01`` (ISO 8601 week); fields ``week``, ``year`` (the
      ISO year, which differs from the calendar year around New Year), ``start``
      (Monday), ``end`` (Sunday).
    * ``year``: key ``year=2013``; fields ``year``, ``start``, ``end``.

    Upstream keys of a window chunk: the days ``date=YYYY-MM-DD`` from its ``start`` to
    its ``end`` field that exist upstream. A window chunk of the stage's own plan without
    ``start``/``end`` is read from its ``month``/``week``/``year`` field or key instead.
    ``DateRange(freq="month")`` chunks clip ``start``/``end`` to their plan, so they read
    only the days of the plan's range.

    Attributes:
        unit: ``"month"``, ``"week"`` or ``"year"``.

    Raises:
        ConfigError: If ``unit`` is none of those.
    """

    unit: str = "month"

    def __post_init__(self) -> None:
        if self.unit not in _UNITS:
            raise ConfigError(
                'CalendarWindow unit "month", "week" or "year"',
                repr(self.unit),
                'pass e.g. CalendarWindow(unit="month")',
            )

    def downstream_chunks(self, upstream: Sequence[Chunk]) -> list[Chunk]:
        user = f"CalendarWindow(unit={self.unit!r})"
        windows: dict[str, tuple[dt.date, dt.date]] = {}
        for chunk in upstream:
            text, day = _day_of(chunk, user, check_key=True)
            label = _label_of(self.unit, text, day)
            if label not in windows:
                windows[label] = _window_of(self.unit, day)[1:]
        # ISO labels (zero-padded years) sort in calendar order.
        return [
            _window_chunk(self.unit, label, *windows[label], index=i)
            for i, label in enumerate(sorted(windows))
        ]

    def upstream_keys(self, chunk: Chunk, upstream: UpstreamKeys) -> list[str]:
        first, last = self._window(chunk)
        return _day_keys_in(upstream, first.toordinal(), last.toordinal())

    def _indexes(self, chunk: Chunk, upstream: UpstreamKeys, lookup: _Lookup) -> tuple[list[int], list[str]]:
        first, last = self._window(chunk)
        return _day_indexes(lookup, first.toordinal(), last.toordinal()), []

    def _window(self, chunk: Chunk) -> tuple[dt.date, dt.date]:
        fields = chunk.fields
        if "start" in fields and "end" in fields:
            first = _parse_iso(_iso_text(fields["start"]))
            last = _parse_iso(_iso_text(fields["end"]))
            if first is not None and last is not None:
                return first, last
        else:
            label = fields.get(self.unit)
            if label is None and chunk.key.startswith(self.unit + "="):
                label = chunk.key[len(self.unit) + 1:]
            window = _window_from_label(self.unit, str(label)) if label is not None else None
            if window is not None:
                return window
        example = {"month": "2013-01", "week": "2013-W01", "year": "2013"}[self.unit]
        raise PlanError(
            f"a {self.unit} chunk with ISO 'start' and 'end' fields, or a {self.unit!r} field "
            f"like {example!r}, for CalendarWindow(unit={self.unit!r})",
            f"chunk {chunk.key!r} with fields {sorted(fields)}",
            f"give this stage {self.unit} chunks (drop its own plan to derive them, or use "
            f"DateRange(freq='month')), or use FromFunction(...)",
            where=f"chunk {chunk.key}",
        )

    def describe(self) -> str:
        return f"CalendarWindow(unit={self.unit!r}): each {self.unit} reads its upstream days"


@dataclass(frozen=True)
class WindowDays(Mapping):
    """The reverse of :class:`CalendarWindow`: window chunks to the days they hold.

    Downstream chunks: one day chunk per day from each upstream chunk's ``start`` to its
    ``end`` field (both inclusive), keyed ``date=YYYY-MM-DD`` with fields ``date``,
    ``year``, ``month``, ``day`` as ``DateRange(freq="day")`` chunks, in date order.
    Clipped windows (``DateRange(freq="month")`` chunks) give only their days.

    Upstream key of a day: its window, ``month=YYYY-MM``, ``week=YYYY-Www`` (ISO) or
    ``year=YYYY``.

    Attributes:
        unit: ``"month"``, ``"week"`` or ``"year"``; None (default) takes it from the
            upstream keys (``month=…``, ``week=…`` or ``year=…``).

    Raises:
        ConfigError: If ``unit`` is given and none of those.
    """

    unit: str | None = None

    def __post_init__(self) -> None:
        if self.unit is not None and self.unit not in _UNITS:
            raise ConfigError(
                'WindowDays unit "month", "week", "year" or None',
                repr(self.unit),
                'pass e.g. WindowDays(unit="month"), or leave it out',
            )

    def downstream_chunks(self, upstream: Sequence[Chunk]) -> list[Chunk]:
        with _gc_paused():
            return self._days(upstream)

    def _days(self, upstream: Sequence[Chunk]) -> list[Chunk]:
        days: list[dt.date] = []
        for chunk in upstream:
            fields = chunk.fields
            first = _parse_iso(_iso_text(fields.get("start")))
            last = _parse_iso(_iso_text(fields.get("end")))
            if first is None or last is None or first > last:
                raise PlanError(
                    "window chunks with ISO 'start' and 'end' fields (start <= end) for "
                    "WindowDays()",
                    f"chunk {chunk.key!r} with start={fields.get('start')!r}, "
                    f"end={fields.get('end')!r} (fields {sorted(fields)})",
                    "give the upstream stage month/week/year chunks (CalendarWindow or "
                    "DateRange(freq='month')), or give this stage its own plan and use "
                    "FromFunction(...)",
                    where=f"chunk {chunk.key}",
                )
            days.extend(dt.date.fromordinal(o) for o in range(first.toordinal(), last.toordinal() + 1))
        if any(a >= b for a, b in zip(days, days[1:])):
            days.sort()
            twice = next((a for a, b in zip(days, days[1:]) if a == b), None)
            if twice is not None:
                raise PlanError(
                    "upstream windows that do not overlap (each day in one window)",
                    f"{twice.isoformat()} in two upstream chunks",
                    "make the upstream windows disjoint, or give this stage its own plan",
                )
        return [_day_chunk(day, i) for i, day in enumerate(days)]

    def upstream_keys(self, chunk: Chunk, upstream: UpstreamKeys) -> list[str]:
        unit = self.unit
        if unit is None:
            keys = upstream.keys()
            unit = _unit_of_key(keys[0]) if len(keys) else None
            if unit is None:
                raise PlanError(
                    "upstream keys month=…, week=… or year=… for WindowDays()",
                    f"{keys[0]!r}" if len(keys) else "no upstream chunk",
                    'name the unit, e.g. WindowDays(unit="month"), or use FromFunction(...)',
                )
        text, day = _day_of(chunk, "WindowDays()", check_key=False)
        return [f"{unit}={_label_of(unit, text, day)}"]

    def describe(self) -> str:
        unit = "window" if self.unit is None else self.unit
        return f"WindowDays(unit={self.unit!r}): each day reads its upstream {unit}"


@dataclass(frozen=True)
class TrailingDays(Mapping):
    """Each day reads the ``days`` days before it, and itself unless told not to.

    Downstream chunks (without a plan of their own) are the upstream days. Upstream keys
    of a day ``d``: the days of ``[d - days, d]`` (``[d - days, d - 1]`` without
    ``include_self``) that exist upstream, so days before the upstream plan's first day
    are simply absent. The chunk's own day is always named when ``include_self`` is set,
    so a downstream day the upstream stage lacks is reported by :func:`resolve_inputs`.

    With ``include_self=False`` the first upstream day reads nothing; such chunks are
    allowed (:attr:`allows_empty_inputs`), and the stage must handle empty inputs.

    Attributes:
        days: How many days back, at least 1.
        include_self: Whether a day also reads its own upstream day.

    Raises:
        ConfigError: If ``days`` is not an integer of at least 1.
    """

    days: int = 1
    include_self: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.days, bool) or not isinstance(self.days, int) or self.days < 1:
            raise ConfigError(
                "TrailingDays days: a whole number of at least 1",
                repr(self.days),
                "pass e.g. TrailingDays(days=7)",
            )

    def downstream_chunks(self, upstream: Sequence[Chunk]) -> list[Chunk]:
        for chunk in upstream:
            _day_of(chunk, self._name(), check_key=True)
        return _reindexed(upstream)

    def upstream_keys(self, chunk: Chunk, upstream: UpstreamKeys) -> list[str]:
        ordinal = _day_of(chunk, self._name(), check_key=False)[1].toordinal()
        if not self.include_self:
            return _day_keys_in(upstream, ordinal - self.days, ordinal - 1)
        keys = _day_keys_in(upstream, ordinal - self.days, ordinal)
        own = _day_key(ordinal)
        if own not in upstream:
            keys.append(own)  # named although missing: resolve_inputs reports it
        return keys

    def _indexes(self, chunk: Chunk, upstream: UpstreamKeys, lookup: _Lookup) -> tuple[list[int], list[str]]:
        ordinal = _day_of(chunk, self._name(), check_key=False)[1].toordinal()
        indexes = _day_indexes(lookup, ordinal - self.days, ordinal - 1)
        if not self.include_self:
            return indexes, []
        own = _day_key(ordinal)
        index = lookup(own)
        if index is None:
            return indexes, [own]
        indexes.append(index)
        if len(indexes) > 1 and indexes[-2] > index:
            indexes.sort()
        return indexes, []

    @property
    def allows_empty_inputs(self) -> bool:
        return not self.include_self

    def _name(self) -> str:
        return f"TrailingDays(days={self.days}, include_self={self.include_self})"

    def describe(self) -> str:
        also = " and itself" if self.include_self else ""
        return f"{self._name()}: each day reads the {self.days} days before it{also}"


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


def resolve_inputs(
    mapping: Mapping,
    chunks: Sequence[Chunk],
    upstream: UpstreamKeys,
    stage: str,
    upstream_stage: str,
) -> list[list[int]]:
    """For each downstream chunk, the indexes of the upstream chunks it reads.

    Runs at plan time over every chunk of a stage, in one pass.

    Args:
        mapping: The downstream stage's mapping.
        chunks: The downstream stage's chunks.
        upstream: The upstream stage's keys.
        stage: The downstream stage's name, for messages.
        upstream_stage: The upstream stage's name, for messages.

    Returns:
        One ascending list of upstream indexes per downstream chunk, in chunk order.

    Raises:
        PlanError: If the mapping names upstream keys the upstream stage does not have
            (the message names both stages, the first chunk and key, and how many), or a
            chunk reads nothing and the mapping does not allow that.
    """
    with _gc_paused():
        return _resolve(mapping, chunks, upstream, stage, upstream_stage)


def _resolve(
    mapping: Mapping,
    chunks: Sequence[Chunk],
    upstream: UpstreamKeys,
    stage: str,
    upstream_stage: str,
) -> list[list[int]]:
    where = f"stage {stage}"
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
