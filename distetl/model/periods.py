"""Calendar periods: hours, days, ISO weeks, months, quarters and years as labels, keys
and windows of hours.

One arithmetic for plans (:class:`distetl.model.plans.DateRange`) and window mappings
(:class:`distetl.model.mappings.CalendarWindow`). A point in time is an *hour ordinal*:
``date.toordinal() * 24 + hour``. A period is a closed range of hour ordinals
``(first, last)``; each unit names its periods with an ISO-style label:

=========  ======================  ====================
unit       label                   chunk key
=========  ======================  ====================
hour       ``2024-01-03T05``       ``hour=2024-01-03T05``
day        ``2024-01-03``          ``date=2024-01-03``
week       ``2024-W01`` (ISO)      ``week=2024-W01``
month      ``2024-01``             ``month=2024-01``
quarter    ``2024-Q1``             ``quarter=2024-Q1``
year       ``2024``                ``year=2024``
=========  ======================  ====================

Labels of one unit sort in calendar order as text. Plain Python: no pandas, no Arrow.
"""

from __future__ import annotations

import calendar
import datetime as dt
from typing import Any, Iterator, Optional

from distetl.model.chunks import Chunk

__all__ = [
    "UNITS", "KEY_NAMES", "unit_of_key", "key_of", "window", "window_at", "shift",
    "labels_between", "nests", "period_chunk", "hour_label", "parse_hour",
]

#: Every unit, finest first.
UNITS = ("hour", "day", "week", "month", "quarter", "year")
#: The key (and label field) name of each unit: day chunks are ``date=…``.
KEY_NAMES = {"hour": "hour", "day": "date", "week": "week", "month": "month", "quarter": "quarter", "year": "year"}
_UNIT_OF_NAME = {name: unit for unit, name in KEY_NAMES.items()}
#: An example label per unit, for messages.
EXAMPLES = {"hour": "2013-01-03T05", "day": "2013-01-03", "week": "2013-W01", "month": "2013-01",
            "quarter": "2013-Q1", "year": "2013"}

_MIN_HOUR = dt.date.min.toordinal() * 24
_MAX_HOUR = dt.date.max.toordinal() * 24 + 23


def unit_of_key(key: str) -> Optional[str]:
    """The unit a chunk key names (``month=2013-01`` → ``month``), or None."""
    name, sep, _ = key.partition("=")
    return _UNIT_OF_NAME.get(name) if sep else None


def key_of(unit: str, label: str) -> str:
    """The chunk key of a period: ``date=2013-01-03``, ``month=2013-01``, …"""
    return f"{KEY_NAMES[unit]}={label}"


def hour_label(hour: int) -> str:
    """``2024-01-03T05`` for an hour ordinal."""
    return f"{dt.date.fromordinal(hour // 24).isoformat()}T{hour % 24:02d}"


def parse_hour(text: str) -> Optional[int]:
    """The hour ordinal of ``YYYY-MM-DDTHH`` (canonical form only), else None."""
    if len(text) != 13 or text[10] != "T" or not text[11:].isdigit():
        return None
    day = _parse_day(text[:10])
    value = int(text[11:])
    return None if day is None or value > 23 else day * 24 + value


def _parse_day(text: str) -> Optional[int]:
    if len(text) != 10 or text[4] != "-" or text[7] != "-":
        return None
    try:
        return dt.date.fromisoformat(text).toordinal()
    except ValueError:
        return None


def _days(first: dt.date, last: dt.date) -> tuple[int, int]:
    return first.toordinal() * 24, last.toordinal() * 24 + 23


def _month_window(year: int, month: int, months: int = 1) -> tuple[int, int]:
    end_year, end_month = divmod(year * 12 + month - 1 + months - 1, 12)
    last = calendar.monthrange(end_year, end_month + 1)[1]
    return _days(dt.date(year, month, 1), dt.date(end_year, end_month + 1, last))


def window(unit: str, label: str) -> Optional[tuple[int, int]]:
    """The first and last hour of the period ``label`` of ``unit``; None if the label is
    not that unit's canonical form (``2013-1`` is not a month)."""
    try:
        if unit == "hour":
            hour = parse_hour(label)
            return None if hour is None else (hour, hour)
        if unit == "day":
            day = _parse_day(label)
            return None if day is None else (day * 24, day * 24 + 23)
        if unit == "week":
            if len(label) != 8 or label[4:6] != "-W" or not (label[:4] + label[6:]).isdigit():
                return None
            monday = dt.date.fromisocalendar(int(label[:4]), int(label[6:]), 1)
            return _days(monday, monday + dt.timedelta(days=6))
        if unit == "month":
            if len(label) != 7 or label[4] != "-" or not (label[:4] + label[5:]).isdigit():
                return None
            return _month_window(int(label[:4]), int(label[5:]))
        if unit == "quarter":
            if len(label) != 7 or label[4:6] != "-Q" or label[6] not in "1234" or not label[:4].isdigit():
                return None
            return _month_window(int(label[:4]), 3 * int(label[6]) - 2, 3)
        if unit == "year":
            if len(label) != 4 or not label.isdigit():
                return None
            return _days(dt.date(int(label), 1, 1), dt.date(int(label), 12, 31))
    except ValueError:
        return None
    raise ValueError(f"unknown unit {unit!r}")


def window_at(unit: str, hour: int) -> tuple[str, int, int]:
    """The period of ``unit`` holding the hour ordinal ``hour``: (label, first, last)."""
    if unit == "hour":
        return hour_label(hour), hour, hour
    day = dt.date.fromordinal(hour // 24)
    if unit == "day":
        return day.isoformat(), hour - hour % 24, hour - hour % 24 + 23
    if unit == "week":
        year, week, weekday = day.isocalendar()
        monday = day - dt.timedelta(days=weekday - 1)
        return f"{year:04d}-W{week:02d}", *_days(monday, monday + dt.timedelta(days=6))
    if unit == "month":
        return f"{day.year:04d}-{day.month:02d}", *_month_window(day.year, day.month)
    if unit == "quarter":
        quarter = (day.month - 1) // 3 + 1
        return f"{day.year:04d}-Q{quarter}", *_month_window(day.year, 3 * quarter - 2, 3)
    if unit == "year":
        return f"{day.year:04d}", *_days(dt.date(day.year, 1, 1), dt.date(day.year, 12, 31))
    raise ValueError(f"unknown unit {unit!r}")


def shift(unit: str, hour: int, periods: int) -> tuple[int, int]:
    """The period ``periods`` periods of ``unit`` after (before, if negative) the one
    holding ``hour``: (first, last), clamped to the calendar's range (years 1 to 9999)."""
    first = window_at(unit, hour)[1]
    if unit in ("hour", "day", "week"):
        step = {"hour": 1, "day": 24, "week": 168}[unit]
        moved = min(max(first + periods * step, _MIN_HOUR), _MAX_HOUR)
        return window_at(unit, moved)[1:]
    months = {"month": 1, "quarter": 3, "year": 12}[unit]
    day = dt.date.fromordinal(first // 24)
    index = day.year * 12 + day.month - 1 + periods * months
    index = min(max(index, 12), 9999 * 12 + 11)
    return window_at(unit, dt.date(index // 12, index % 12 + 1, 1).toordinal() * 24)[1:]


def labels_between(unit: str, first: int, last: int) -> Iterator[str]:
    """Labels of every period of ``unit`` that meets the hours ``first..last``, in order."""
    first, last = max(first, _MIN_HOUR), min(last, _MAX_HOUR)
    if unit == "hour":
        for day in range(first // 24, last // 24 + 1):
            iso = dt.date.fromordinal(day).isoformat()
            for h in range(max(first - day * 24, 0), min(last - day * 24, 23) + 1):
                yield f"{iso}T{h:02d}"
        return
    if unit == "day":
        for day in range(first // 24, last // 24 + 1):
            yield dt.date.fromordinal(day).isoformat()
        return
    hour = first
    while hour <= last:
        label, _, end = window_at(unit, hour)
        yield label
        if end >= _MAX_HOUR:
            return
        hour = end + 1


def nests(fine: str, coarse: str) -> bool:
    """Whether every period of ``fine`` lies inside one period of ``coarse``.

    Hours nest in everything, days in everything but hours, months in quarters and
    years, quarters in years, every unit in itself; an ISO week only in weeks (it can
    straddle two months or years).
    """
    if fine == coarse or fine == "hour":
        return True
    if fine == "day":
        return coarse != "hour"
    return (fine, coarse) in {("month", "quarter"), ("month", "year"), ("quarter", "year")}


def period_chunk(unit: str, label: str, first: int, last: int, index: int) -> Chunk:
    """The chunk of a period, with the fields its :class:`DateRange` plan would give.

    * hour: ``hour``, ``date``, ``month``, ``year``;
    * day: ``date``, ``year``, ``month``, ``day``;
    * week, month, quarter: the label under the unit's name, ``year``, ``start``, ``end``;
    * year: ``year``, ``start``, ``end``.

    ``start`` and ``end`` are the ISO first and last day of ``first..last``.
    """
    fields: dict[str, Any]
    if unit == "hour":
        fields = {"hour": label, "date": label[:10], "month": label[:7], "year": label[:4]}
    elif unit == "day":
        fields = {"date": label, "year": label[:4], "month": label[:7], "day": label[8:10]}
    else:
        start = dt.date.fromordinal(first // 24).isoformat()
        end = dt.date.fromordinal(last // 24).isoformat()
        if unit == "year":
            fields = {"year": label, "start": start, "end": end}
        else:
            fields = {unit: label, "year": label[:4], "start": start, "end": end}
    return Chunk(key=key_of(unit, label), fields=fields, index=index)
