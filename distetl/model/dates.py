"""Relative dates for date plans: ``today``, ``yesterday`` and offsets such as
``today-3d``, ``yesterday-1w``, ``today-2m``, ``today+1y``.

A run fixes "today" once, when it starts planning, in one time zone (UTC unless
``--tz ZONE``), and every stage's plan resolves its dates against that same day, so a
run that crosses midnight, or a pipeline with several stages, never mixes two days.
``distetl run FLOW --start today-7d --end yesterday`` from cron or a systemd timer then
backfills a rolling window.

How "today" is fixed, from the outside in:

* :func:`fixed_today` fixes it for a block (the command line wraps the whole command in
  it, with ``--tz``); from Python: ``with distetl.model.dates.fixed_today(tz="Europe/Paris"):
  distetl.run(...)``.
* Without a fixed day, :func:`current` computes it when asked, in UTC: ``distetl.plan``
  asks once per plan (so once per run) and resolves every stage's plan with that one
  value (:meth:`distetl.model.plans.Plan.resolve_dates`).
* ``DISTETL_NOW`` (an ISO instant such as ``2024-03-01T23:30:00Z``, or a date meaning
  its midnight in UTC) replaces the clock. It exists for tests only.

Offsets: ``d`` days, ``w`` weeks, ``m`` calendar months, ``y`` calendar years. Months and
years keep the day of the month, clamped to the month's last day (``today-1m`` on
2024-03-31 is 2024-02-29).
"""

from __future__ import annotations

import calendar
import contextlib
import contextvars
import datetime as dt
import os
import re
from dataclasses import dataclass
from typing import Iterator, Optional

from distetl.errors import ConfigError, PlanError

__all__ = ["Today", "current", "fixed_today", "is_relative", "resolve_date", "shift", "today_in", "zone"]

#: Replaces the clock (an ISO instant, or a date: its midnight UTC). For tests only.
NOW_ENV = "DISTETL_NOW"

_RELATIVE = re.compile(r"^\s*(today|yesterday)\s*(?:([+-])\s*(\d{1,6})\s*([dwmy]))?\s*$", re.IGNORECASE)

EXPECTED = "an ISO date or today/yesterday with an offset like today-3d"


@dataclass(frozen=True)
class Today:
    """The day a run resolves relative dates against, and the zone it was taken in."""

    date: dt.date
    zone: str = "UTC"

    def __str__(self) -> str:
        return f"{self.date.isoformat()} ({self.zone})"


_FIXED: contextvars.ContextVar[Optional[Today]] = contextvars.ContextVar("distetl_today", default=None)


def zone(name: Optional[str]) -> dt.tzinfo:
    """The time zone called ``name`` (IANA, e.g. ``Europe/Paris``); UTC for None.

    Raises:
        ConfigError: For a zone this machine does not know (exit code 2).
    """
    if not name or name.upper() == "UTC":
        return dt.timezone.utc
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(
            "an IANA time zone for --tz (e.g. UTC, Europe/Paris, America/New_York)", repr(name),
            "pass a zone name as in the tz database (`python -c \"import zoneinfo; "
            "print(sorted(zoneinfo.available_timezones()))\"` lists them); install the `tzdata` "
            "package if the list is empty",
        ) from None


def _now() -> dt.datetime:
    text = os.environ.get(NOW_ENV)
    if not text:
        return dt.datetime.now(dt.timezone.utc)
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{NOW_ENV} as an ISO instant (e.g. 2024-03-01T23:30:00Z)", repr(text),
                          f"fix or unset {NOW_ENV} (it is meant for tests only)") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def today_in(tz: Optional[str] = None) -> Today:
    """Today's date in zone ``tz`` (UTC when None), from the clock (or ``DISTETL_NOW``).

    Raises:
        ConfigError: For an unknown zone.
    """
    where = zone(tz)
    return Today(_now().astimezone(where).date(), "UTC" if where is dt.timezone.utc else str(tz))


def current() -> Today:
    """The day fixed by :func:`fixed_today` for this block, or today in UTC."""
    return _FIXED.get() or today_in(None)


@contextlib.contextmanager
def fixed_today(tz: Optional[str] = None, today: "Optional[dt.date | str]" = None) -> Iterator[Today]:
    """Fix "today" for everything planned in the block.

    Args:
        tz: Zone the day is taken in (UTC when None).
        today: The day itself (a date or ISO string) instead of the clock's.

    Yields:
        The fixed day.

    Raises:
        ConfigError: For an unknown zone (before the block runs).
    """
    if today is None:
        fixed = today_in(tz)
    else:
        day = today if isinstance(today, dt.date) else dt.date.fromisoformat(str(today))
        fixed = Today(day, "UTC" if zone(tz) is dt.timezone.utc else str(tz))
    token = _FIXED.set(fixed)
    try:
        yield fixed
    finally:
        _FIXED.reset(token)


def is_relative(text: object) -> bool:
    """Whether ``text`` is a relative date (``today``, ``yesterday-2d``, …)."""
    return isinstance(text, str) and _RELATIVE.match(text) is not None


def shift(day: dt.date, amount: int, unit: str) -> dt.date:
    """``day`` moved by ``amount`` days (``d``), weeks (``w``), calendar months (``m``) or
    years (``y``); months and years clamp the day to the month's last day.

    Raises:
        OverflowError: Past year 1 or 9999.
    """
    unit = unit.lower()
    if unit == "d":
        return day + dt.timedelta(days=amount)
    if unit == "w":
        return day + dt.timedelta(weeks=amount)
    months = amount * (12 if unit == "y" else 1)
    if unit not in ("m", "y"):
        raise ValueError(f"unknown unit {unit!r}")
    index = day.year * 12 + (day.month - 1) + months
    year, month = divmod(index, 12)
    if not 1 <= year <= 9999:
        raise OverflowError("date out of range")
    last = calendar.monthrange(year, month + 1)[1]
    return dt.date(year, month + 1, min(day.day, last))


def resolve_date(text: "str | dt.date", today: "dt.date | Today", name: str = "date",
                 where: str = "DateRange") -> dt.date:
    """An ISO date, or a relative one resolved against ``today``.

    Args:
        text: ``2024-01-31``, ``today``, ``yesterday``, ``today-3d``, ``yesterday-1w``,
            ``today-2m``, ``today+1y`` (case and spaces around the sign do not matter), or
            a date.
        today: The run's day.
        name: The parameter (``start``, ``end``), for the error message.
        where: The plan, for the error message.

    Raises:
        PlanError: For anything else, naming the parameter and the value.
    """
    if isinstance(text, dt.datetime):
        return text.date()
    if isinstance(text, dt.date):
        return text
    base = today.date if isinstance(today, Today) else today
    match = _RELATIVE.match(str(text))
    if match is None:
        try:
            return dt.date.fromisoformat(str(text).strip())
        except ValueError:
            pass
    else:
        word, sign, amount, unit = match.groups()
        day = base - dt.timedelta(days=1) if word.lower() == "yesterday" else base
        if not sign:
            return day
        try:
            return shift(day, int(amount) * (-1 if sign == "-" else 1), unit)
        except OverflowError:
            pass
    raise PlanError(
        f"{EXPECTED} for {name} of {where}", repr(text),
        f"pass e.g. --{name} 2013-01-31, --{name} today-7d or --{name} yesterday "
        "(d days, w weeks, m months, y years; YYYY-MM-DD within years 1-9999)",
    )
