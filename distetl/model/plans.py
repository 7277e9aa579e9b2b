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

__all__ = ["Plan", "DateRange", "FileList", "IdRange", "ChunkList", "Product"]


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

    def __mul__(self, other: "Plan") -> "Product":
        """``DateRange(...) * ChunkList(...)``: the :class:`Product` of the two plans."""
        if not isinstance(other, Plan):
            return NotImplemented
        return Product(self, other)

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
            Left at ``"item"`` with items that are each a mapping of the same one field
            (``[{"origin": "EWR"}, {"origin": "JFK"}]``), that field names them.
    """

    items: Sequence[Any] = field(default_factory=tuple)
    key_field: str = "item"

    kind: ClassVar[str] = "list"

    def _key_field(self) -> str:
        """``key_field``, or, left at its default, the one field every item has when each
        is a mapping of one field (``[{"origin": "EWR"}, {"origin": "JFK"}]``)."""
        if self.key_field != "item" or not self.items:
            return self.key_field
        names = {tuple(item) for item in self.items if isinstance(item, Mapping) and len(item) == 1}
        if len(names) == 1 and all(isinstance(item, Mapping) and len(item) == 1 for item in self.items):
            return next(iter(names))[0]
        return self.key_field

    def chunks(self, storage_options: Mapping[str, Any] | None = None) -> Sequence[Chunk]:
        if not self.items:
            raise PlanError("at least one item", "an empty list", "pass the items to run")
        out = []
        key_field = self._key_field()
        for i, item in enumerate(self.items):
            fields = dict(item) if isinstance(item, Mapping) else {key_field: item}
            if key_field not in fields:
                raise PlanError(
                    f"field {key_field!r} in every item",
                    f"item {i} with fields {sorted(fields)}",
                    f"add {key_field!r} to the item or set key_field",
                )
            out.append(Chunk(key=f"{key_field}={fields[key_field]}", fields=fields, index=i))
        seen: set[str] = set()
        dupes = sorted({c.key for c in out if c.key in seen or seen.add(c.key)})
        if dupes:
            raise PlanError("unique chunk keys", f"duplicates {dupes[:5]}", "make the items unique")
        return out


@dataclass(frozen=True, init=False)
class Product(Plan):
    """Every combination of the chunks of two (or more) plans: two-dimensional keys.

    ``Product(DateRange("2024-01-01", "2024-12-31"), ChunkList([{"origin": "EWR"},
    {"origin": "JFK"}]))`` (or ``DateRange(...) * ChunkList(...)``) has one chunk per day
    and origin, keyed ``date=2024-01-03/origin=EWR``: each plan's key is one
    *dimension* (named by its ``name=``), joined with ``/`` in the order of the plans,
    the last varying fastest. Every field of every plan is a field of the chunk, so
    ``{output}/t/date={date}/origin={origin}/part-0.parquet`` gives two partition columns.

    The plans' parameters are the product's (``--start``/``--end`` narrow the
    ``DateRange``); a parameter that two plans share cannot be set from the command
    line. Chunks are built on demand (:class:`~distetl.model.chunkseq.ProductChunks`):
    3,650 days × 100 origins hold 3,750 chunks' worth of memory, not 365,000.

    Mappings that work along one dimension and keep the others are in
    :mod:`distetl.model.mappings.dims` (:class:`Along`, :class:`Collapse`).

    Attributes:
        plans: The plans, one per dimension (a nested Product is flattened).

    Raises:
        ConfigError: If fewer than two plans are given, or one is not a plan.
    """

    plans: tuple[Plan, ...] = ()

    kind: ClassVar[str] = "product"

    def __init__(self, *plans: Plan):
        flat: list[Plan] = []
        for p in plans:
            if not isinstance(p, Plan):
                raise ConfigError("distetl plans in Product(...) (DateRange, ChunkList, IdRange, FileList)",
                                  type(p).__name__, "pass plans, e.g. Product(DateRange(...), ChunkList(...))")
            flat.extend(p.plans if isinstance(p, Product) else [p])
        if len(flat) < 2:
            raise ConfigError("at least two plans in Product(...)", f"{len(flat)}",
                              "pass two plans, e.g. Product(DateRange(...), ChunkList(...)), or use the plan alone")
        object.__setattr__(self, "plans", tuple(flat))

    def __getattr__(self, name: str) -> Any:
        # A parameter of one of the plans reads through (the command line shows defaults).
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            plans = object.__getattribute__(self, "plans")
        except AttributeError:
            raise AttributeError(name) from None
        for p in plans:
            if name in p.param_names():
                return getattr(p, name)
        raise AttributeError(f"Expected a parameter of one of the plans of Product; got {name!r}. "
                             f"Fix: use one of {self.param_names()}.")

    def __reduce__(self) -> Any:
        return (_product, self.plans)

    def param_names(self) -> list[str]:
        return list(dict.fromkeys(n for p in self.plans for n in p.param_names()))

    def with_params(self, **params: str | Any) -> "Product":
        """A copy with each parameter applied to the one plan that has it.

        Raises:
            ConfigError: If no plan or more than one plan has a parameter.
        """
        updates: list[dict[str, Any]] = [{} for _ in self.plans]
        for name, value in params.items():
            owners = [i for i, p in enumerate(self.plans) if name in p.param_names()]
            option = f"--{name.replace('_', '-')}"
            if not owners:
                listed = ", ".join("--" + n.replace("_", "-") for n in self.param_names())
                raise ConfigError(f"a parameter of {self._name()} ({listed})", option,
                                  "drop the option or use one of the listed ones")
            if len(owners) > 1:
                raise ConfigError(
                    f"{option} belonging to one plan of {self._name()}",
                    f"{option} in {' and '.join(type(self.plans[i]).__name__ for i in owners)}",
                    f"set {name} in the flow file for each plan rather than with {option}",
                )
            updates[owners[0]][name] = value
        return Product(*(p.with_params(**u) if u else p for p, u in zip(self.plans, updates)))

    def resolve_dates(self, today: Any) -> "Product":
        return Product(*(p.resolve_dates(today) for p in self.plans))

    def describe(self) -> dict[str, Any]:
        return {"plan": "Product", "plans": [p.describe() for p in self.plans]}

    def _name(self) -> str:
        return f"Product({', '.join(type(p).__name__ for p in self.plans)})"

    def chunks(self, storage_options: Mapping[str, Any] | None = None) -> Sequence[Chunk]:
        """The combinations, built on demand, after checking at plan time that each plan's
        keys are one ``name=value`` dimension with values safe in a key and a path, and
        that no two plans share a dimension or a field name.

        Raises:
            PlanError: Naming the dimension, the value or field, and the fix.
        """
        from distetl.model.chunkseq import ChunkSeq, ProductChunks

        parts = [p.chunks(storage_options) for p in self.plans]
        names: list[str] = []
        fields: list[tuple[str, ...]] = []
        owner: dict[str, str] = {}
        safe = True
        for plan, seq in zip(self.plans, parts):
            what = type(plan).__name__
            if not len(seq):
                raise PlanError(f"chunks in every plan of {self._name()}", f"none from {what}",
                                f"give the {what} at least one chunk")
            if isinstance(seq, ChunkSeq) and seq.safe_values:
                name = _dimension(what, seq[0].key)
                own = tuple(seq[0].fields)
            else:
                name, own, ok = _scan_dimension(what, seq)
                safe = safe and ok
            label = f"{what} (dimension {name!r})"
            if name in {n for n in names}:
                raise PlanError(
                    f"plans with distinct dimensions in {self._name()}",
                    f"dimension {name!r} in two plans",
                    "key one of the plans by another field (e.g. ChunkList(key_field=...))",
                )
            for field_name in own:
                if field_name in owner:
                    raise PlanError(
                        f"plans with distinct field names in {self._name()} (every field is a field "
                        "of the product's chunks)",
                        f"field {field_name!r} in both {owner[field_name]} and {label}",
                        f"rename {field_name!r} in one of the plans (the items of a ChunkList), or "
                        "derive it in the extract instead",
                    )
                owner[field_name] = label
            names.append(name)
            fields.append(own)
        return ProductChunks(parts, names, fields, safe)


def _product(*plans: Plan) -> Product:
    return Product(*plans)


def _dimension(plan: str, key: str) -> str:
    """The dimension name of a plan's chunk key ``name=value``."""
    name, eq, value = key.partition("=")
    if not eq or not name or "/" in name or "\\" in name:
        raise PlanError(
            f"chunk keys of the form name=value from every plan of a Product (the name is the "
            f"dimension), from {plan}",
            repr(key),
            "key the chunks name=value, e.g. ChunkList([...], key_field='origin')",
            where=f"chunk {key}",
        )
    return name


def _scan_dimension(plan: str, chunks: Sequence[Chunk]) -> tuple[str, tuple[str, ...], bool]:
    """Check every chunk of one dimension: one dimension name, values safe in a key and a
    path. Returns the name, the field names (in first-seen order) and whether every field
    value is safe in a path segment and every chunk has the same fields."""
    from distetl.model.chunkseq import unsafe_value

    name = ""
    own: dict[str, None] = {}
    first: tuple[str, ...] | None = None
    safe = True
    for chunk in chunks:
        this = _dimension(plan, chunk.key)
        if not name:
            name = this
        elif this != name:
            raise PlanError(
                f"one dimension per plan of a Product (every key {name}=…) from {plan}",
                f"chunk {chunk.key!r}", "key every chunk of the plan by the same field",
                where=f"dimension {name}")
        value = chunk.key.partition("=")[2]
        if unsafe_value(value, in_key=True):
            raise PlanError(
                f"dimension values safe in a key and a path (no '/', '\\', '=', and not '.', "
                f"'..' or empty) for dimension {name!r} of a Product, from {plan}",
                repr(value),
                f"change the value in the {plan} (e.g. replace '/' and '=' with '-'), or key the "
                "chunks by another field",
                where=f"dimension {name}",
            )
        keys = tuple(chunk.fields)
        if first is None:
            first = keys
        elif safe and keys != first:
            safe = False
        own.update(dict.fromkeys(keys))
        if safe and any(unsafe_value(str(v), in_key=False) for v in chunk.fields.values()):
            safe = False
    return name, tuple(own), safe
