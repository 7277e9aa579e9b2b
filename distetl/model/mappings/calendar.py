"""Mappings between day chunks and calendar windows: CalendarWindow, WindowDays, TrailingDays."""

from __future__ import annotations

import calendar
import datetime as dt
import functools
from dataclasses import dataclass
from typing import Any, Sequence

from distetl.model.chunks import Chunk
from distetl.errors import ConfigError, PlanError
from distetl.model.mappings.base import UpstreamKeys, Mapping, _Lookup, _gc_paused, _reindexed, _UNITS, _DAY_KEY

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
