"""Running a stage's data checks on the worker, and quarantining what fails.

A chunk's output (each piece of a streamed chunk) is checked after the transform and
the schema cast, before its commit: every pandera schema is validated lazily (all
failures at once) and every callable check is called. Error-level failures stop the
commit: the chunk fails with an error starting ``check failed``, naming each check, its
column, its failing row count and up to five failing rows, and the failing rows (the
whole piece for a table-wide failure) are written to the stage's quarantine folder,
``{output}/_distetl/{pipeline}/quarantine/{stage}/{key}.parquet``, removed once the
chunk commits. Warning-level failures let the chunk commit and go into its record.

pandera is imported here only when a stage has a pandera schema among its checks.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from distetl.model.checks import DataCheck, RowCountCheck

__all__ = ["CheckFailed", "CheckOutcome", "Failure", "Checker", "quarantine_path"]

#: Failing rows shown per check in a failure message.
EXAMPLES = 5


@dataclass
class Failure:
    """One check that failed on a chunk.

    Attributes:
        check: The check's name.
        column: The column it checks (None: the table as a whole).
        rows: Failing rows (of the chunk); for a table-wide failure, the rows of the
            pieces that failed it.
        examples: Up to :data:`EXAMPLES` failing rows as text (``row 3: 'ZZ'``).
        warning: Whether it is a warning (the chunk commits).
        table_wide: No failing rows are named: the whole piece counts as failing.
        message: A callable's failure message.
    """

    check: str
    column: Optional[str]
    rows: int
    examples: list[str] = field(default_factory=list)
    warning: bool = False
    table_wide: bool = False
    message: Optional[str] = None

    def describe(self) -> str:
        """One line: the check, its column, the failing row count, the examples."""
        where = f" on column {self.column}" if self.column else ""
        head = f"{self.check}{where}: "
        if self.table_wide and self.message:
            return head + self.message + (", e.g. " + "; ".join(self.examples) if self.examples else "")
        if self.table_wide:
            head += f"table-wide failure ({self.rows} row(s) in the failing piece(s))"
        else:
            head += f"{self.rows} failing row(s)"
        if self.message:
            head += f": {self.message}"
        if self.examples:
            head += ", e.g. " + "; ".join(self.examples)
        return head

    def to_record(self) -> dict[str, Any]:
        """What a chunk's record keeps of a warning."""
        out: dict[str, Any] = {"check": self.check, "column": self.column, "rows": self.rows}
        if self.message:
            out["message"] = self.message[:500]
        return out

    def merge(self, other: "Failure") -> None:
        self.rows += other.rows
        self.table_wide = self.table_wide or other.table_wide
        self.examples = (self.examples + other.examples)[:EXAMPLES]
        self.message = self.message or other.message


class CheckFailed(Exception):
    """A chunk failed an error-level check: nothing is committed.

    Attributes:
        failures: The error-level failures.
        quarantined: Failing rows (an Arrow table), or None.
    """

    def __init__(self, stage: str, key: str, failures: Sequence[Failure], quarantined: Any = None):
        self.failures = list(failures)
        self.quarantined = quarantined
        self.stage = stage
        self.key = key
        self.path: Optional[str] = None
        super().__init__(self.message())

    def message(self) -> str:
        lines = "; ".join(f.describe() for f in self.failures)
        if self.path and self.path.startswith("nothing"):
            where = self.path
        elif self.path and self.quarantined is not None:
            where = f"{self.path} ({self.quarantined.num_rows} row(s))"
        else:
            where = "nothing (no rows)"
        return (f"check failed: chunk {self.key} of stage {self.stage}: expected its output to pass its checks; "
                f"got {len(self.failures)} failing check(s): {lines}. Quarantined: {where}. "
                f"Fix: correct the data or the check, then rerun (the chunk is redone)")

    def __str__(self) -> str:
        return self.message()


@dataclass
class CheckOutcome:
    """The checks' results over a chunk (all its pieces)."""

    errors: dict[tuple[str, Optional[str]], Failure] = field(default_factory=dict)
    warnings: dict[tuple[str, Optional[str]], Failure] = field(default_factory=dict)
    quarantine: list[Any] = field(default_factory=list)
    #: The quarantine holds the whole chunk (a table-wide rule failed).
    quarantine_whole: bool = False

    def add(self, failure: Failure) -> None:
        bucket = self.warnings if failure.warning else self.errors
        key = (failure.check, failure.column)
        if key in bucket:
            bucket[key].merge(failure)
        else:
            bucket[key] = failure

    def warning_records(self) -> list[dict[str, Any]]:
        return [f.to_record() for f in self.warnings.values()]

    def raise_if_failed(self, stage: str, key: str) -> None:
        if not self.errors:
            return
        import pyarrow as pa

        table = None
        if self.quarantine:
            try:
                table = pa.concat_tables(self.quarantine, promote_options="permissive")
            except (pa.ArrowException, TypeError):
                table = pa.concat_tables([t.cast(self.quarantine[0].schema) for t in self.quarantine])
        raise CheckFailed(stage, key, list(self.errors.values()), table)


class Checker:
    """Runs a stage's checks on a chunk's pieces (one checker per try of a chunk).

    Args:
        checks: The stage's normalised checks (pandera schemas, DataCheck and
            RowCountCheck objects).
        previous_rows: The row counts of the chunks before this one that are known
            (for the row-count rules).
    """

    def __init__(self, checks: Sequence[Any], previous_rows: Sequence[int] = ()):
        self.rules = [c for c in checks if isinstance(c, RowCountCheck)]
        self.checks = [c for c in checks if not isinstance(c, RowCountCheck)]
        self.previous_rows = list(previous_rows)
        self.outcome = CheckOutcome()
        self.offset = 0
        self._schemas: Optional[list[tuple[Any, Any]]] = None

    def check(self, table: Any) -> None:
        """Check one piece (an Arrow table); failures go to :attr:`outcome`, failing
        rows to its quarantine list."""
        if not self.checks:
            return
        frame = table.to_pandas(split_blocks=True)  # no block consolidation: a copy less
        failing: set[int] = set()
        whole = False
        for item in self.checks:
            if isinstance(item, DataCheck):
                found = _run_callable(item, frame, self.offset)
            else:
                found = _run_schema(self._split(item), frame, self.offset)
            for failure, rows in found:
                self.outcome.add(failure)
                if failure.warning:
                    continue
                if rows is None:
                    whole = True
                else:
                    failing.update(rows)
        if whole:
            self.outcome.quarantine.append(table)
        elif failing:
            import pyarrow as pa

            self.outcome.quarantine.append(table.take(pa.array(sorted(failing), pa.int64())))
        self.offset += table.num_rows

    def finish(self, rows: int, table: Any = None) -> None:
        """Evaluate the row-count rules once the chunk's rows are known; an error-level
        failure quarantines ``table`` (the whole chunk) when it is given."""
        for rule in self.rules:
            message = rule.evaluate(rows, self.previous_rows)
            if message is None:
                continue
            self.outcome.add(Failure(check=rule.label, column=None, rows=rows, warning=rule.warning,
                                     table_wide=True, message=message))
            if not rule.warning and table is not None and not self.outcome.quarantine_whole:
                self.outcome.quarantine = [table]
                self.outcome.quarantine_whole = True

    def _split(self, item: Any) -> tuple[Any, Any]:
        """A pandera schema as (error part, warning part): the warning part holds the
        checks declared with ``raise_warning=True``, run as errors so their failing
        rows are named (None when there are none)."""
        if self._schemas is None:
            self._schemas = []
        for source, split in self._schemas:
            if source is item:
                return split
        split = _split_schema(item.to_schema() if isinstance(item, type) else item)
        self._schemas.append((item, split))
        return split


def _split_schema(schema: Any) -> tuple[Any, Any]:
    import copy

    import pandera.pandas as pa

    def errors_only(checks: Sequence[Any]) -> list[Any]:
        return [c for c in checks if not getattr(c, "raise_warning", False)]

    def as_errors(checks: Sequence[Any]) -> list[Any]:
        out = []
        for c in checks:
            if getattr(c, "raise_warning", False):
                c = copy.copy(c)
                c.raise_warning = False
                out.append(c)
        return out

    warned_columns = {name: as_errors(col.checks) for name, col in schema.columns.items()}
    warned_frame = as_errors(schema.checks)
    if not warned_frame and not any(warned_columns.values()):
        return schema, None
    errors = copy.copy(schema)
    errors.columns = {name: _with_checks(col, errors_only(col.checks)) for name, col in schema.columns.items()}
    errors.checks = errors_only(schema.checks)
    warning_schema = pa.DataFrameSchema(
        {name: pa.Column(None, checks=checks, nullable=True, required=False,
                         regex=getattr(schema.columns[name], "regex", False))
         for name, checks in warned_columns.items() if checks},
        checks=warned_frame)
    return errors, warning_schema


def _with_checks(column: Any, checks: list[Any]) -> Any:
    import copy

    column = copy.copy(column)
    column.checks = checks
    return column


def _run_schema(split: tuple[Any, Any], frame: Any, offset: int) -> list[tuple[Failure, Optional[list[int]]]]:
    import pandera.errors as pe

    out: list[tuple[Failure, Optional[list[int]]]] = []
    for schema, warning in ((split[0], False), (split[1], True)):
        if schema is None:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                schema.validate(frame, lazy=True, inplace=True)
        except pe.SchemaErrors as exc:
            out.extend(_failures(exc.failure_cases, frame, offset, warning))
        except pe.SchemaError as exc:  # a non-lazy error (e.g. a check that raised)
            out.append((Failure(check=str(getattr(exc, "check", None) or "schema"),
                                column=getattr(exc, "column_name", None) or None,
                                rows=len(frame), warning=warning, table_wide=True,
                                message=str(exc)[:300]), None))
    return out


def _failures(cases: Any, frame: Any, offset: int, warning: bool) -> list[tuple[Failure, Optional[list[int]]]]:
    """Failures grouped by (check, column) from pandera's ``failure_cases``."""
    out: list[tuple[Failure, Optional[list[int]]]] = []
    cases = cases.copy()
    frame_wide = cases["schema_context"].astype(str) == "DataFrameSchema"
    cases["_column"] = cases["column"].where(~frame_wide, None)
    for (check, column), group in cases.groupby([cases["check"].astype(str), cases["_column"].astype(object)],
                                               dropna=False, sort=False):
        column = None if column is None or column != column else str(column)
        indexes = group["index"]
        named = indexes.dropna()
        if len(named) < len(indexes) or not len(named):
            out.append((Failure(check=check, column=column, rows=len(frame), warning=warning, table_wide=True,
                                examples=[_example(None, v) for v in group["failure_case"].head(EXAMPLES)]),
                        None))
            continue
        rows = sorted({int(i) for i in named})
        if column is None:
            examples = [_example(offset + i, _row(frame, i)) for i in rows[:EXAMPLES]]
        else:
            firsts = group.drop_duplicates("index").head(EXAMPLES)
            examples = [_example(offset + int(i), v) for i, v in zip(firsts["index"], firsts["failure_case"])]
        out.append((Failure(check=check, column=column, rows=len(rows), warning=warning, examples=examples), rows))
    return out


def _row(frame: Any, i: int) -> dict[str, Any]:
    try:
        return {str(k): v for k, v in frame.iloc[i].items()}
    except (IndexError, KeyError, TypeError):
        return {}


def _example(row: Optional[int], value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 120 else text[:117] + "..."
    return f"row {row}: {text}" if row is not None else text


def _run_callable(item: DataCheck, frame: Any, offset: int) -> list[tuple[Failure, Optional[list[int]]]]:
    try:
        result = item.func(frame)
    except Exception as exc:  # noqa: BLE001 - a check that raises fails the chunk, named
        return [(Failure(check=item.label, column=None, rows=len(frame), warning=item.warning, table_wide=True,
                         message=f"the check raised {type(exc).__name__}: {exc}"[:300]), None)]
    if result is None or result is True:
        return []
    if isinstance(result, str):
        return [(Failure(check=item.label, column=None, rows=len(frame), warning=item.warning, table_wide=True,
                         message=result), None)]
    if hasattr(result, "dtype") and hasattr(result, "__len__") and len(result) == len(frame):
        import numpy as np

        passing = np.asarray(result, dtype=bool)
        rows = np.flatnonzero(~passing).tolist()
        if not rows:
            return []
        return [(Failure(check=item.label, column=None, rows=len(rows), warning=item.warning,
                         examples=[_example(offset + i, _row(frame, i)) for i in rows[:EXAMPLES]]), rows)]
    if bool(result):
        return []
    return [(Failure(check=item.label, column=None, rows=len(frame), warning=item.warning, table_wide=True,
                     message="returned False"), None)]


_UNSAFE = re.compile(r"[^A-Za-z0-9_.=-]")


def quarantine_path(output: str, pipeline: str, stage: str, key: str) -> str:
    """Where a chunk's quarantined rows go:
    ``{output}/_distetl/{pipeline}/quarantine/{stage}/{key}.parquet``, the key made
    path-safe (other characters become ``_``, plus a short digest of the key when any
    did, so two keys never share a file)."""
    safe = _UNSAFE.sub("_", key).strip(".") or "_"
    if safe != key:
        safe += "-" + hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{output.rstrip('/')}/_distetl/{pipeline}/quarantine/{stage}/{safe}.parquet"


def write_quarantine(storage: Any, path: str, table: Any) -> None:
    """Write quarantined rows as one Parquet file (replacing an older one)."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_atomic(path, buffer.getvalue())
