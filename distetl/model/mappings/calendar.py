"""Mappings between calendar chunks: CalendarWindow (any finer unit to a coarser window),
WindowDays, TrailingDays."""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Any, Sequence

from distetl.model.chunks import Chunk
from distetl.errors import ConfigError, PlanError
from distetl.model import periods
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


def _unit_of_key(key: str) -> str | None:
    name = key.split("=", 1)[0]
    return name if name in _UNITS and "=" in key else None


# ---------------------------------------------------------------------------
# Mappings



# ---------------------------------------------------------------------------
# Windows between any calendar units

#: The units CalendarWindow took before it took every unit: their description is kept.
_DAY_WINDOWS = ("month", "week", "year")
#: (id, length, first key, last key) of the upstream view last measured, and its span.
_SPAN_CACHE: list[Any] = [None, None]


def _upstream_unit(upstream: UpstreamKeys) -> str:
    """The unit of the upstream chunks, from the first upstream key (``day`` for day keys
    and for keys that name no unit, as before windows took other units)."""
    keys = upstream.keys()
    unit = periods.unit_of_key(keys[0]) if len(keys) else None
    return unit or "day"


def _upstream_span(upstream: UpstreamKeys, unit: str) -> tuple[int, int] | None:
    """First and last hour the upstream chunks of ``unit`` cover (keys of other units
    ignored), measured once per upstream view."""
    keys = upstream.keys()
    stamp = (id(keys), len(keys), keys[0] if len(keys) else None, keys[-1] if len(keys) else None)
    if _SPAN_CACHE[0] == stamp:
        return _SPAN_CACHE[1]
    lo = hi = None
    name = periods.KEY_NAMES[unit] + "="
    for key in keys:
        if key.startswith(name):
            window = periods.window(unit, key[len(name):])
            if window is not None:
                lo = window[0] if lo is None else min(lo, window[0])
                hi = window[1] if hi is None else max(hi, window[1])
    span = None if lo is None else (lo, hi)
    _SPAN_CACHE[:] = [stamp, span]
    return span


def _when(unit: str, hour: int) -> str:
    """An hour ordinal as text: the hour for hour units, else the day."""
    if unit == "hour":
        return periods.hour_label(hour)
    return dt.date.fromordinal(hour // 24).isoformat()


def _periods(unit: str, count: int) -> str:
    return f"{count} {unit}" + ("" if count == 1 else "s")


@dataclass(frozen=True)
class CalendarWindow(Mapping):
    """Finer chunks to the calendar windows that hold them: hour → day, day → week,
    month, quarter or year, month → quarter or year, quarter → year (and any unit to
    itself), optionally widened by offsets.

    The upstream unit comes from the first upstream key: ``hour=2024-01-03T05``,
    ``date=2024-01-03``, ``week=2024-W01``, ``month=2024-01``, ``quarter=2024-Q1`` or
    ``year=2024`` (keys naming no unit count as days, as before).

    Downstream chunks (a stage without a plan of its own), one per window of ``unit``
    meeting an upstream chunk, in calendar order; ``start`` and ``end`` are always the
    full calendar window, even where the upstream covers only part of it:

    * ``hour``: key ``hour=2024-01-03T05``; fields ``hour``, ``date``, ``month``, ``year``.
    * ``day``: key ``date=2024-01-03``; fields ``date``, ``year``, ``month``, ``day``.
    * ``week``: key ``week=2013-W01`` (ISO 8601 week); fields ``week``, ``year`` (the ISO
      year, which differs from the calendar year around New Year), ``start`` (Monday),
      ``end`` (Sunday).
    * ``month``: key ``month=2013-01``; fields ``month``, ``year``, ``start``, ``end``.
    * ``quarter``: key ``quarter=2013-Q1``; fields ``quarter``, ``year``, ``start``, ``end``.
    * ``year``: key ``year=2013``; fields ``year``, ``start``, ``end``.

    These are the fields of ``DateRange(freq=unit)`` chunks, so the same templates work.

    Upstream keys of a window chunk: the upstream chunks inside its window that exist
    upstream. The window is the chunk's ``start``..``end`` fields (week and coarser;
    ``DateRange`` clips them to its range), else its ``hour``/``date``/``week``/``month``/
    ``quarter``/``year`` field or key. Offsets, in windows of ``unit`` (as Dagster's
    ``TimeWindowPartitionMapping``), widen it: ``start_offset=-1`` starts it at the
    window before (the month and the month before), ``end_offset=1`` ends it at the
    window after.

    Refused at plan time (when the stage's inputs are resolved, naming the stage): an
    upstream unit that does not nest in ``unit`` (an ISO week can straddle two months
    or years; a month is coarser than a day), and, unless ``allow_partial``, a window
    whose offset reaches before the first or after the last upstream chunk (the
    upstream plan's start or end).

    Attributes:
        unit: ``"hour"``, ``"day"``, ``"week"``, ``"month"``, ``"quarter"`` or ``"year"``.
        start_offset: Windows to move the start by (negative: earlier).
        end_offset: Windows to move the end by (at least ``start_offset``).
        allow_partial: Let offset windows at the edges of the upstream plan read only
            what exists (and read nothing, where the window excludes its own period).

    Raises:
        ConfigError: If ``unit`` is none of those, an offset is not a whole number, or
            ``start_offset`` is after ``end_offset``.
    """

    unit: str = "month"
    start_offset: int = 0
    end_offset: int = 0
    allow_partial: bool = False

    def __post_init__(self) -> None:
        if self.unit not in periods.UNITS:
            raise ConfigError(
                'CalendarWindow unit "hour", "day", "week", "month", "quarter" or "year"',
                repr(self.unit),
                'pass e.g. CalendarWindow(unit="month")',
            )
        for name in ("start_offset", "end_offset"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"CalendarWindow {name}: a whole number of windows", repr(value),
                                  f"pass e.g. CalendarWindow({self.unit!r}, start_offset=-1)")
        if self.start_offset > self.end_offset:
            raise ConfigError(
                "CalendarWindow start_offset at most end_offset",
                f"start_offset={self.start_offset}, end_offset={self.end_offset}",
                "pass e.g. start_offset=-1, end_offset=0 (the window and the one before), or "
                "start_offset=-1, end_offset=-1 (the window before only)",
            )
        if not isinstance(self.allow_partial, bool):
            raise ConfigError("CalendarWindow allow_partial: True or False", repr(self.allow_partial),
                              "pass allow_partial=True or leave it out")

    # -- downstream chunks

    def downstream_chunks(self, upstream: Sequence[Chunk]) -> list[Chunk]:
        user = self._name()
        if not len(upstream):
            return []
        unit = periods.unit_of_key(upstream[0].key) or "day"
        windows: dict[str, tuple[int, int]] = {}
        lo = hi = None  # the window last added: consecutive chunks mostly share it
        for chunk in upstream:
            if unit == "day":
                ordinal = _day_of(chunk, user, check_key=True)[1].toordinal()
                first, last = ordinal * 24, ordinal * 24 + 23
            else:
                first, last = _period_of_key(chunk, unit, user)
            if lo is not None and lo <= first and last <= hi:
                continue
            hour = first
            while hour <= last:  # one window when the units nest; those met otherwise
                label, lo, hi = periods.window_at(self.unit, hour)
                windows.setdefault(label, (lo, hi))
                hour = hi + 1
        ordered = sorted(windows.items(), key=lambda item: item[1][0])
        return [periods.period_chunk(self.unit, label, lo, hi, i) for i, (label, (lo, hi)) in enumerate(ordered)]

    # -- upstream keys

    def upstream_keys(self, chunk: Chunk, upstream: UpstreamKeys) -> list[str]:
        unit = _upstream_unit(upstream)
        first, last = self._reach(chunk, upstream, unit)
        if unit == "day":
            return _day_keys_in(upstream, first // 24, last // 24)
        found = [key for key in (periods.key_of(unit, label) for label in periods.labels_between(unit, first, last))
                 if key in upstream]
        return _in_upstream_order(found, upstream)

    def _indexes(self, chunk: Chunk, upstream: UpstreamKeys, lookup: _Lookup) -> tuple[list[int], list[str]]:
        unit = _upstream_unit(upstream)
        first, last = self._reach(chunk, upstream, unit)
        if unit == "day":
            return _day_indexes(lookup, first // 24, last // 24), []
        keys = (periods.key_of(unit, label) for label in periods.labels_between(unit, first, last))
        found = [i for i in map(lookup, keys) if i is not None]
        found.sort()
        return found, []

    @property
    def allows_empty_inputs(self) -> bool:
        return self.allow_partial and (self.start_offset > 0 or self.end_offset < 0)

    def _reach(self, chunk: Chunk, upstream: UpstreamKeys, unit: str) -> tuple[int, int]:
        """The hours a chunk reads: its window widened by the offsets, checked."""
        if not periods.nests(unit, self.unit):
            self._refuse(unit, upstream)
        own_first, own_last = self._window(chunk)
        first, last = own_first, own_last
        if self.start_offset:
            first = periods.shift(self.unit, own_first, self.start_offset)[0]
        if self.end_offset:
            last = periods.shift(self.unit, own_last, self.end_offset)[1]
        if (self.start_offset or self.end_offset) and not self.allow_partial:
            span = _upstream_span(upstream, unit)
            if span is not None:
                before = first < own_first and first < span[0]
                after = last > own_last and last > span[1]
                if before or after:
                    self._outside(chunk, first, last, span, unit, before)
        return first, last

    def _window(self, chunk: Chunk) -> tuple[int, int]:
        """First and last hour of a downstream chunk's own window."""
        fields = chunk.fields
        if self.unit not in ("hour", "day") and "start" in fields and "end" in fields:
            first = _parse_iso(_iso_text(fields["start"]))
            last = _parse_iso(_iso_text(fields["end"]))
            if first is not None and last is not None:
                return first.toordinal() * 24, last.toordinal() * 24 + 23
        else:
            name = periods.KEY_NAMES[self.unit]
            label = fields.get(name)
            if label is None and chunk.key.startswith(name + "="):
                label = chunk.key[len(name) + 1:]
            if label is not None:
                text = _iso_text(label) if self.unit == "day" else str(label)
                window = periods.window(self.unit, text) if text is not None else None
                if window is not None:
                    return window
        name = periods.KEY_NAMES[self.unit]
        example = periods.EXAMPLES[self.unit]
        if self.unit in ("hour", "day"):
            expected = f"a {self.unit} chunk with a {name!r} field like {example!r}"
        else:
            expected = (f"a {self.unit} chunk with ISO 'start' and 'end' fields, or a {name!r} field "
                        f"like {example!r}")
        raise PlanError(
            f"{expected}, for CalendarWindow(unit={self.unit!r})",
            f"chunk {chunk.key!r} with fields {sorted(fields)}",
            f"give this stage {self.unit} chunks (drop its own plan to derive them, or use "
            f"DateRange(freq={self.unit!r})), or use FromFunction(...)",
            where=f"chunk {chunk.key}",
        )

    def _refuse(self, unit: str, upstream: UpstreamKeys) -> None:
        """Raise the refusal of upstream ``unit`` chunks that do not nest in ``self.unit``."""
        first_key = upstream.keys()[0]
        if periods.UNITS.index(unit) > periods.UNITS.index(self.unit):
            got = f"{unit} chunks ({first_key!r}), each longer than a {self.unit}"
            fix = ("split the upstream windows into days with WindowDays(), window a finer upstream "
                   "stage instead, or give this stage its own plan and use FromFunction(...)")
        else:
            coarser = [u for u in periods.UNITS[periods.UNITS.index(unit):] if periods.nests(unit, u)]
            got = f"{unit} chunks ({first_key!r}); a {unit} can straddle two {self.unit}s"
            fix = (f"make this stage read the day (or hour) stage the {unit}s come from, whose "
                   f"chunks nest in every window, or window by {' or '.join(map(repr, coarser))} "
                   f"(CalendarWindow({coarser[-1]!r}))")
        raise PlanError(
            f"upstream chunks that nest in the {self.unit} windows of {self._name()} (hours and "
            "days nest in every window, months in quarters and years, quarters in years, each "
            "unit in itself)",
            got, fix,
        )

    def _outside(self, chunk: Chunk, first: int, last: int, span: tuple[int, int], unit: str,
                 before: bool) -> None:
        """Raise the refusal of an offset window reaching outside the upstream chunks."""
        if before:
            edge, need = "before the first", f"start by {_when(unit, first)}"
            _, lo, _ = periods.window_at(self.unit, span[0])
            hour = span[0] if lo == span[0] else periods.shift(self.unit, span[0], 1)[0]
            label, lo, _ = periods.window_at(self.unit, periods.shift(self.unit, hour, -self.start_offset)[0])
            own = f"starting at {periods.key_of(self.unit, label)}"
        else:
            edge, need = "after the last", f"end on or after {_when(unit, last)}"
            _, _, hi = periods.window_at(self.unit, span[1])
            hour = span[1] if hi == span[1] else periods.shift(self.unit, span[1], -1)[1]
            label, _, _ = periods.window_at(self.unit, periods.shift(self.unit, hour, -self.end_offset)[1])
            own = f"ending at {periods.key_of(self.unit, label)}"
        raise PlanError(
            f"the windows of {self._name()} within the upstream chunks "
            f"({_when(unit, span[0])} to {_when(unit, span[1])})",
            f"chunk {chunk.key!r} reading {_when(unit, first)} to {_when(unit, last)}, "
            f"{edge} upstream chunk",
            f"widen the upstream plan to {need}, give this stage its own plan {own} "
            f"(e.g. DateRange(freq={self.unit!r})), or pass allow_partial=True to let the "
            "edge windows read only what exists",
            where=f"chunk {chunk.key}",
        )

    def _name(self) -> str:
        extra = ""
        if self.start_offset:
            extra += f", start_offset={self.start_offset}"
        if self.end_offset:
            extra += f", end_offset={self.end_offset}"
        if self.allow_partial:
            extra += ", allow_partial=True"
        return f"CalendarWindow(unit={self.unit!r}{extra})"

    def describe(self) -> str:
        unit = self.unit
        if not (self.start_offset or self.end_offset):
            if unit in _DAY_WINDOWS:
                return f"{self._name()}: each {unit} reads its upstream days"
            return f"{self._name()}: each {unit} reads the upstream chunks of its window"

        def where(n: int) -> str:
            if n == 0:
                return "its own"
            return f"{_periods(unit, abs(n))} {'before' if n < 0 else 'after'}"

        reach = where(self.start_offset) if self.start_offset == self.end_offset else (
            f"from {where(self.start_offset)} through {where(self.end_offset)}")
        return f"{self._name()}: each {unit} reads the upstream chunks of the {unit}s {reach}"


def _period_of_key(chunk: Chunk, unit: str, user: str) -> tuple[int, int]:
    """First and last hour of an upstream chunk keyed ``{unit}=label``."""
    name = periods.KEY_NAMES[unit]
    window = None
    if chunk.key.startswith(name + "="):
        window = periods.window(unit, chunk.key[len(name) + 1:])
    if window is None:
        raise PlanError(
            f"upstream chunks all keyed {name}=… like {periods.key_of(unit, periods.EXAMPLES[unit])!r} "
            f"for {user} (the first upstream key names the unit)",
            f"chunk {chunk.key!r}",
            "give the upstream stage chunks of one unit (a DateRange plan or a CalendarWindow), "
            "or use FromFunction(...)",
            where=f"chunk {chunk.key}",
        )
    return window

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
