"""Data checks a stage's output must pass before a chunk is committed.

A stage's ``checks`` is a pandera ``DataFrameSchema`` (or ``DataFrameModel`` class), a
plain callable ``check(df) -> bool | str | Series[bool]``, a :class:`DataCheck`, or a
list of those. Callables and pandera checks fail the chunk (it is not committed and its
failing rows are quarantined) unless declared as warnings: :func:`warn` for a callable,
``pandera.Check(..., raise_warning=True)`` for a pandera check. A warning lets the chunk
commit and is kept in its record.

Nothing here imports pandera: a pandera object is recognised by its class's module, and
pandera is imported only by the worker code that runs the checks of a stage that has
some (:mod:`distetl.engine.checking`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

from distetl.errors import ConfigError

__all__ = ["DataCheck", "RowCountCheck", "warn", "row_rules", "normalise_checks", "is_pandera", "describe_checks", "check_label"]


@dataclass(frozen=True)
class DataCheck:
    """A callable data check: ``func(df)`` on a chunk's output DataFrame (after the
    transform and the schema cast).

    ``func`` returns True (or None) when the chunk passes; False or a string (the
    failure message) when the chunk as a whole fails; or a boolean Series, True per
    passing row, to name the failing rows.

    Attributes:
        func: The check.
        warning: Whether a failure is only a warning (the chunk still commits).
        name: The name errors and records use (default: the function's name).
    """

    func: Callable[..., Any]
    warning: bool = False
    name: Optional[str] = None

    def __post_init__(self) -> None:
        if not callable(self.func):
            raise ConfigError("a callable check(df) -> bool | str", repr(self.func),
                              "pass a function taking the chunk's DataFrame")

    @property
    def label(self) -> str:
        """The check's name."""
        return self.name or getattr(self.func, "__name__", None) or type(self.func).__name__


@dataclass(frozen=True)
class RowCountCheck:
    """A chunk's row count against its previous chunks' (a volume anomaly such as a
    half-loaded source day), from the row counts in their records: no data is read.

    The chunk fails when its rows are fewer than ``min_ratio`` × the median (or mean)
    rows of the ``previous`` chunks before it in the plan's order that are committed
    when it is checked (their records in the index; chunks this run committed earlier,
    known to the driver or the batch, or read from their footers). With fewer than ``min_periods`` of them known, the rule is not
    evaluated (the chunk passes): the first chunks of a plan, and a first backfill's
    chunks whose neighbours run at the same time on other workers.

    Attributes:
        min_ratio: The least rows, as a share of the neighbours' statistic.
        previous: How many chunks before it count.
        stat: ``"median"`` or ``"mean"``.
        min_periods: The least known neighbours for the rule to be evaluated.
        warning: Whether a failure is only a warning (the chunk still commits).
        name: The name errors and records use.

    Example:
        >>> Stage(..., checks=[schema, RowCountCheck(min_ratio=0.5, previous=7)])
    """

    min_ratio: float = 0.5
    previous: int = 7
    stat: str = "median"
    min_periods: int = 3
    warning: bool = False
    name: str = "row_count_vs_previous"

    def __post_init__(self) -> None:
        if self.stat not in ("median", "mean"):
            raise ConfigError('stat "median" or "mean"', repr(self.stat), 'pass stat="median"',
                              where=f"check {self.name}")
        if self.previous < 1 or self.min_periods < 1 or self.min_periods > self.previous:
            raise ConfigError("1 <= min_periods <= previous", f"previous={self.previous}, "
                              f"min_periods={self.min_periods}", "pass e.g. previous=7, min_periods=3",
                              where=f"check {self.name}")
        if not self.min_ratio > 0:
            raise ConfigError("min_ratio > 0", repr(self.min_ratio), "pass e.g. min_ratio=0.5",
                              where=f"check {self.name}")

    @property
    def label(self) -> str:
        """The check's name."""
        return self.name

    def evaluate(self, rows: int, previous: list[int]) -> Optional[str]:
        """The failure message, or None when the chunk passes (or is not evaluated)."""
        if len(previous) < self.min_periods:
            return None
        ordered = sorted(previous)
        middle = len(ordered) // 2
        if self.stat == "mean":
            base = sum(ordered) / len(ordered)
        else:
            base = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
        if rows >= self.min_ratio * base:
            return None
        return (f"{rows} row(s), expected at least {self.min_ratio:g} x the {self.stat} {base:g} of the "
                f"previous {len(previous)} chunk(s)")


def warn(func: Callable[..., Any], name: Optional[str] = None) -> DataCheck:
    """A callable check whose failure is a warning: the chunk still commits, and the
    warning (check, failing rows) is kept in its record and counted in ``distetl status``.

    Example:
        >>> Stage(..., checks=[schema, warn(lambda df: len(df) > 1000, name="enough_rows")])
    """
    return DataCheck(func, warning=True, name=name)


def is_pandera(obj: Any) -> bool:
    """Whether ``obj`` is a pandera schema or ``DataFrameModel`` class (without importing pandera)."""
    classes = obj.__mro__ if isinstance(obj, type) else type(obj).__mro__
    return any((getattr(c, "__module__", "") or "").split(".")[0] == "pandera" for c in classes)


def normalise_checks(where: str, checks: Any) -> tuple[Any, ...]:
    """A stage's ``checks`` as a tuple of pandera schemas and :class:`DataCheck` objects
    (a plain callable becomes an error-level :class:`DataCheck`).

    Raises:
        ConfigError: For anything else.
    """
    if checks is None or (isinstance(checks, (list, tuple)) and not checks):
        return ()
    items = list(checks) if isinstance(checks, (list, tuple)) else [checks]
    out: list[Any] = []
    for item in items:
        if isinstance(item, (DataCheck, RowCountCheck)):
            out.append(item)
        elif is_pandera(item):
            if isinstance(item, type) and not hasattr(item, "to_schema"):
                raise ConfigError("a pandera DataFrameSchema or DataFrameModel class", item.__name__,
                                  "pass pandera.pandas.DataFrameSchema(...) or a DataFrameModel subclass",
                                  where=where)
            out.append(item)
        elif callable(item):
            out.append(DataCheck(item))
        else:
            raise ConfigError(
                "checks: a pandera DataFrameSchema or DataFrameModel, a callable check(df) -> bool | str, "
                "distetl.warn(callable), distetl.RowCountCheck(...), or a list of those", repr(item)[:200],
                "pass e.g. checks=[schema, distetl.warn(my_check)]", where=where)
    return tuple(out)


def row_rules(checks: tuple[Any, ...]) -> list[RowCountCheck]:
    """The row-count rules among a stage's checks."""
    return [item for item in checks if isinstance(item, RowCountCheck)]


def check_label(func: Callable[..., Any]) -> str:
    """A readable name of a check function."""
    return getattr(func, "__name__", None) or type(func).__name__


def _schema_of(item: Any) -> Any:
    """A pandera ``DataFrameSchema`` of a schema or a ``DataFrameModel`` class."""
    return item.to_schema() if isinstance(item, type) else item


def describe_checks(checks: tuple[Any, ...]) -> tuple[Any, list[Callable[..., Any]]]:
    """What the checks mean, for the stage's code version: a JSON-able description (per
    pandera schema its columns, types, flags and checks with their parameters) and the
    functions behind them (custom pandera checks, callables), hashed by their code.

    Returns:
        (description, functions).
    """
    funcs: list[Callable[..., Any]] = []
    described: list[Any] = []
    for item in checks:
        if isinstance(item, RowCountCheck):
            described.append({"row_count": {k: getattr(item, k) for k in (
                "min_ratio", "previous", "stat", "min_periods", "warning", "name")}})
            continue
        if isinstance(item, DataCheck):
            funcs.append(item.func)
            described.append({"callable": item.label, "warning": item.warning})
            continue
        schema = _schema_of(item)
        columns = []
        for name, column in getattr(schema, "columns", {}).items():
            columns.append({
                "name": str(name), "dtype": str(column.dtype),
                **{flag: _plain(getattr(column, flag, None)) for flag in (
                    "nullable", "unique", "coerce", "required", "regex", "report_duplicates")},
                "checks": [_describe_check(c, funcs) for c in column.checks],
            })
        described.append({
            "schema": type(schema).__name__, "columns": columns,
            "checks": [_describe_check(c, funcs) for c in getattr(schema, "checks", [])],
            "index": _plain(repr(getattr(schema, "index", None))),
            **{flag: _plain(getattr(schema, flag, None)) for flag in (
                "dtype", "coerce", "strict", "ordered", "unique", "report_duplicates", "unique_column_names")},
        })
    return described, funcs


def _describe_check(check: Any, funcs: list[Callable[..., Any]]) -> dict[str, Any]:
    fn = getattr(check, "_check_fn", None)
    if fn is not None:
        funcs.append(fn)
    return {
        "name": _plain(getattr(check, "name", None)),
        "statistics": json.dumps(getattr(check, "statistics", None) or {}, sort_keys=True, default=str),
        **{flag: _plain(getattr(check, flag, None)) for flag in (
            "error", "raise_warning", "element_wise", "ignore_na", "n_failure_cases", "groupby")},
    }


def _plain(value: Any) -> Any:
    """A JSON-able stand-in for a flag's value."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
