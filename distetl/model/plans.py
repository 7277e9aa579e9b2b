"""Plans: how a backfill splits into chunks.

A plan is a small frozen dataclass whose fields are its parameters (``start``, ``end``, …).
The command line can override them (``--start 2013-02-01``); :meth:`Plan.with_params`
converts and validates the strings. :meth:`Plan.chunks` lists the chunks; it runs on the
driver at plan time, before any compute.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

from distetl.model.chunks import Chunk
from distetl.model.chunkseq import DayChunks, IdChunks
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
    """One chunk per day or per month from ``start`` to ``end``, both inclusive.

    Chunk fields for ``freq="day"``: ``date`` (``2013-01-03``), ``year``, ``month``
    (``2013-01``), ``day``; key ``date=2013-01-03``. For ``freq="month"``: ``month``,
    ``year``, ``start`` and ``end`` (first and last day); key ``month=2013-01``.

    ``start`` and ``end`` may be relative: ``today``, ``yesterday``, ``today-3d``,
    ``yesterday-1w``, ``today-2m``, ``today-1y`` (see :mod:`distetl.model.dates`), resolved
    once per run.

    Attributes:
        start: First day, ISO format or relative.
        end: Last day, ISO format or relative, inclusive.
        freq: ``"day"`` or ``"month"``.
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
        first = _parse_date("DateRange", "start", self.start)
        last = _parse_date("DateRange", "end", self.end)
        if first > last:
            raise PlanError(
                "--start on or before --end",
                f"start={first.isoformat()} after end={last.isoformat()}",
                "swap the two dates, or pass the range you meant",
            )
        if self.freq == "day":
            return DayChunks(first, (last - first).days + 1)
        if self.freq == "month":
            out = []
            year, month = first.year, first.month
            i = 0
            while (year, month) <= (last.year, last.month):
                days = calendar.monthrange(year, month)[1]
                lo = max(first, dt.date(year, month, 1))
                hi = min(last, dt.date(year, month, days))
                label = f"{year:04d}-{month:02d}"
                out.append(
                    Chunk(
                        key=f"month={label}",
                        fields={"month": label, "year": f"{year:04d}",
                                "start": lo.isoformat(), "end": hi.isoformat()},
                        index=i,
                    )
                )
                i += 1
                year, month = (year + 1, 1) if month == 12 else (year, month + 1)
            return out
        raise PlanError(
            'freq "day" or "month"', repr(self.freq), 'pass --freq day or --freq month'
        )


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
