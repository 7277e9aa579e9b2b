"""Plans: how a backfill splits into chunks.

A plan is a small frozen dataclass whose fields are its parameters (``start``, ``end``, …).
The command line can override them (``--start 2013-02-01``); :meth:`Plan.with_params`
converts and validates the strings. :meth:`Plan.chunks` lists the chunks; it runs on the
driver at plan time, before any compute.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

from distetl.model.chunks import Chunk
from distetl.model import periods
from distetl.model.chunkseq import DayChunks, HourChunks, IdChunks
from distetl.errors import ConfigError, PlanError

__all__ = ["Plan", "DateRange", "FileList", "IdRange", "ChunkList"]


@dataclass(frozen=True)
class Plan:
    """Base class of plans. Subclasses are frozen dataclasses and implement ``chunks``."""

    kind: ClassVar[str] = "plan"

    def chunks(self, storage_options: Mapping[str, Any] | None = None) -> Sequence[Chunk]:
        """List the chunks of this plan (a list, or a :class:`~distetl.model.chunkseq.ChunkSeq`
        that builds each chunk on demand for regular plans).

        Args:
            storage_options: fsspec options for plans that list files.

        Returns:
            The chunks, in plan order, with unique keys.
        """
        raise NotImplementedError

    def param_names(self) -> list[str]:
        """Names of the parameters the command line may override."""
        return [f.name for f in dataclasses.fields(self) if f.init]

    def with_params(self, **params: str | Any) -> "Plan":
        """Return a copy with parameters replaced, strings converted to the field's type.

        Raises:
            ConfigError: If a name is not a parameter of this plan or a value cannot be
                converted.
        """
        known = {f.name: f for f in dataclasses.fields(self) if f.init}
        updates: dict[str, Any] = {}
        for name, value in params.items():
            if name not in known:
                raise ConfigError(
                    f"a parameter of {type(self).__name__} "
                    f"({', '.join('--' + n.replace('_', '-') for n in known)})",
                    f"--{name.replace('_', '-')}",
                    "drop the option or use one of the listed ones",
                )
            updates[name] = _convert(type(self).__name__, name, known[name], value)
        return dataclasses.replace(self, **updates)

    def resolve_dates(self, today: Any) -> "Plan":
        """This plan with relative dates (``today-3d``) resolved against ``today`` (a
        :class:`distetl.model.dates.Today`), so every stage of a run plans with one day. Plans
        without dates return themselves."""
        return self

    def describe(self) -> dict[str, Any]:
        """Plain-JSON description of the plan for manifests and logs."""
        out: dict[str, Any] = {"plan": type(self).__name__}
        for name in self.param_names():
            value = getattr(self, name)
            out[name] = value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
        return out


def _convert(plan: str, name: str, fld: dataclasses.Field, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    kind = fld.type if isinstance(fld.type, str) else getattr(fld.type, "__name__", "")
    try:
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
    except ValueError:
        raise ConfigError(
            f"an integer for --{name.replace('_', '-')} of {plan}",
            repr(value),
            f"pass a whole number, e.g. --{name.replace('_', '-')} 1000",
        ) from None
    return value


def _parse_date(plan: str, name: str, value: str | dt.date) -> dt.date:
    """An ISO date, or a relative one (``today-3d``, see :mod:`distetl.model.dates`) resolved
    against the day fixed for the run (today in UTC when none is)."""
    from distetl.model import dates
    today = dates.current() if dates.is_relative(value) else dt.date.min
    return dates.resolve_date(value, today, name, plan)


@dataclass(frozen=True)
class DateRange(Plan):
    """One chunk per hour, day, ISO week, month, quarter or year from ``start`` to ``end``,
    both inclusive.

    ==========  ==============================================  =========================
    ``freq``    fields                                          key
    ==========  ==============================================  =========================
    ``hour``    ``hour`` (``2024-01-03T05``), ``date``,         ``hour=2024-01-03T05``
                ``month``, ``year``
    ``day``     ``date`` (``2013-01-03``), ``year``, ``month``  ``date=2013-01-03``
                (``2013-01``), ``day``
    ``week``    ``week`` (ISO, ``2013-W01``), ``year`` (ISO),   ``week=2013-W01``
                ``start``, ``end``
    ``month``   ``month``, ``year``, ``start``, ``end``         ``month=2013-01``
    ``quarter`` ``quarter`` (``2013-Q1``), ``year``, ``start``, ``quarter=2013-Q1``
                ``end``
    ``year``    ``year``, ``start``, ``end``                    ``year=2013``
    ==========  ==============================================  =========================

    ``start`` and ``end`` fields are the first and last day of the period, clipped to the
    range. Hour and day plans build each chunk on demand (a few integers in memory).

    ``start`` and ``end`` may be relative: ``today``, ``yesterday``, ``today-3d``,
    ``yesterday-1w``, ``today-2m``, ``today-1y`` (see :mod:`distetl.model.dates`), resolved
    once per run. With ``freq="hour"`` a day means all its hours, and an hour may be
    given as ``2024-01-03T05``.

    Attributes:
        start: First day (or hour), ISO format or relative.
        end: Last day (or hour), ISO format or relative, inclusive.
        freq: ``"hour"``, ``"day"``, ``"week"``, ``"month"``, ``"quarter"`` or ``"year"``.
    """

    start: str = ""
    end: str = ""
    freq: str = "day"
    #: What relative dates were resolved from (set by :meth:`resolve_dates`).
    relative: Any = field(default=None, init=False, repr=False, compare=False)

    kind: ClassVar[str] = "date"

    def resolve_dates(self, today: Any) -> "DateRange":
        from distetl.model import dates
        given = {n: getattr(self, n) for n in ("start", "end") if dates.is_relative(getattr(self, n))}
        if not given:
            return self
        out = dataclasses.replace(self, **{n: dates.resolve_date(v, today, n).isoformat() for n, v in given.items()})
        object.__setattr__(out, "relative", {**given, "today": today.date.isoformat(), "tz": today.zone})
        return out

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.relative:
            out["relative"] = dict(self.relative)
        return out

    def chunks(self, storage_options: Mapping[str, Any] | None = None) -> Sequence[Chunk]:
        if self.freq not in periods.UNITS:
            raise PlanError(
                'freq "hour", "day", "week", "month", "quarter" or "year"', repr(self.freq),
                "pass e.g. --freq day or --freq month",
            )
        if self.freq == "hour":
            first = _parse_hour("start", self.start, last=False)
            last = _parse_hour("end", self.end, last=True)
        else:
            first = _parse_date("DateRange", "start", self.start).toordinal() * 24
            last = _parse_date("DateRange", "end", self.end).toordinal() * 24 + 23
        if first > last:
            shown = periods.hour_label if self.freq == "hour" else (
                lambda h: dt.date.fromordinal(h // 24).isoformat())
            raise PlanError(
                "--start on or before --end",
                f"start={shown(first)} after end={shown(last)}",
                "swap the two dates, or pass the range you meant",
            )
        if self.freq == "hour":
            return HourChunks(first, last - first + 1)
        if self.freq == "day":
            return DayChunks(dt.date.fromordinal(first // 24), (last - first + 1) // 24)
        return [
            periods.period_chunk(self.freq, label, max(lo, first), min(hi, last), i)
            for i, (label, lo, hi) in enumerate(
                periods.window_at(self.freq, hour)
                for hour in _starts(self.freq, first, last))
        ]


def _starts(unit: str, first: int, last: int) -> list[int]:
    """One hour inside each period of ``unit`` that meets ``first..last``, in order."""
    out = []
    hour = first
    while hour <= last:
        out.append(hour)
        end = periods.window_at(unit, hour)[2]
        if end >= last:
            break
        hour = end + 1
    return out


def _parse_hour(name: str, value: str | dt.date, last: bool) -> int:
    """An hour ordinal from ``YYYY-MM-DDTHH`` or a datetime, or from a day (its first or
    last hour)."""
    if isinstance(value, dt.datetime):
        return value.date().toordinal() * 24 + value.hour
    if isinstance(value, str) and "T" in value:
        hour = periods.parse_hour(value)
        if hour is None:
            raise PlanError(
                f"--{name} as an ISO day or hour (2024-01-03 or 2024-01-03T05) for DateRange(freq='hour')",
                repr(value),
                f"pass e.g. --{name} 2024-01-03T05",
            )
        return hour
    return _parse_date("DateRange", name, value).toordinal() * 24 + (23 if last else 0)


@dataclass(frozen=True)
class IdRange(Plan):
    """Integer id ranges ``[start, stop)`` cut into chunks of ``size`` ids.

    Chunk fields: ``start``, ``stop`` (exclusive), ``first``, ``last``; key
    ``ids=0-999``.
    """

    start: int = 0
    stop: int = 0
    size: int = 1000

    kind: ClassVar[str] = "ids"

    def chunks(self, storage_options: Mapping[str, Any] | None = None) -> Sequence[Chunk]:
        if self.size <= 0:
            raise PlanError("--size greater than 0", str(self.size), "pass e.g. --size 1000")
        if self.start >= self.stop:
            raise PlanError(
                "--start below --stop",
                f"start={self.start}, stop={self.stop}",
                "pass a non-empty range, e.g. --start 0 --stop 100000",
            )
        return IdChunks(self.start, self.stop, self.size)


@dataclass(frozen=True)
class FileList(Plan):
    """One chunk per file matching a glob (or listed explicitly) on any fsspec filesystem.

    Chunk fields: ``path`` (full URL, e.g. ``s3://bucket/raw/a.csv``), ``name``
    (``a.csv``), ``stem`` (``a``), and for a pattern ``fingerprint`` (the file's size
    plus modification time or ETag, from the listing: a replaced file makes its chunk
    stale); key ``file=a.csv``.

    Attributes:
        pattern: A glob such as ``s3://bucket/raw/*.csv`` or ``data/*.csv``.
        paths: Explicit paths, used instead of ``pattern`` when given.
    """

    pattern: str = ""
    paths: Sequence[str] = field(default_factory=tuple)

    kind: ClassVar[str] = "files"

    def chunks(self, storage_options: Mapping[str, Any] | None = None) -> Sequence[Chunk]:
        import pyarrow as pa

        from distetl.model.chunkseq import FileChunks
        from distetl.storage import Storage

        if self.paths:
            files = FileChunks(pa.array(sorted(str(p) for p in self.paths), type=pa.string()))
        elif self.pattern:
            table = Storage.for_url(self.pattern, storage_options).glob_table(self.pattern)
            if not table.num_rows:
                raise PlanError(
                    f"at least one file matching {self.pattern!r}",
                    "no file",
                    "check the pattern and that the files exist (and the credentials "
                    "for object stores)",
                )
            files = FileChunks(table.column("path").combine_chunks(), table.column("stamp").combine_chunks())
        else:
            raise PlanError("--pattern or paths", "neither", "pass --pattern 'data/*.csv'")
        _check_unique_names(files)
        return files


def _check_unique_names(files: Any) -> None:
    """Raise :class:`PlanError` naming the first two paths (in sorted order) that share
    a file name: the name is the chunk key."""
    import pyarrow.compute as pc

    names = files.names()
    if pc.count_distinct(names).as_py() == len(names):
        return
    counts = pc.value_counts(names)
    repeated = {v["values"] for v in counts.to_pylist() if v["counts"] > 1}
    seen: dict[str, str] = {}
    for i, name in enumerate(names.to_pylist()):
        if name not in repeated:
            continue
        path = files.paths[i].as_py()
        if name in seen:
            raise PlanError(
                "file names unique across the plan (the name is the chunk key)",
                f"{name!r} at {seen[name]!r} and {path!r}",
                "narrow the pattern, or use a ChunkList with your own keys",
            )
        seen[name] = path


@dataclass(frozen=True)
class ChunkList(Plan):
    """An explicit list of chunks.

    Each item is a scalar (becomes field ``key_field``) or a mapping of fields that
    contains ``key_field``.

    Attributes:
        items: The items.
        key_field: The field that names each chunk; the key is ``{key_field}={value}``.
    """

    items: Sequence[Any] = field(default_factory=tuple)
    key_field: str = "item"

    kind: ClassVar[str] = "list"

    def chunks(self, storage_options: Mapping[str, Any] | None = None) -> Sequence[Chunk]:
        if not self.items:
            raise PlanError("at least one item", "an empty list", "pass the items to run")
        out = []
        for i, item in enumerate(self.items):
            fields = dict(item) if isinstance(item, Mapping) else {self.key_field: item}
            if self.key_field not in fields:
                raise PlanError(
                    f"field {self.key_field!r} in every item",
                    f"item {i} with fields {sorted(fields)}",
                    f"add {self.key_field!r} to the item or set key_field",
                )
            out.append(Chunk(key=f"{self.key_field}={fields[self.key_field]}", fields=fields, index=i))
        seen: set[str] = set()
        dupes = sorted({c.key for c in out if c.key in seen or seen.add(c.key)})
        if dupes:
            raise PlanError("unique chunk keys", f"duplicates {dupes[:5]}", "make the items unique")
        return out
