"""Partition columns: a ``name=value`` directory in a target path is a column, Hive-style.

Readers of Hive-partitioned data (``pyarrow.dataset.dataset(root, partitioning="hive")``,
Spark, ``dask.dataframe.read_parquet``) take every ``name=value`` directory below the
dataset root as column ``name`` holding ``value`` in every row of the files under it,
as ``dask.dataframe.to_parquet(partition_on=…)`` writes them. The column lives in the
path, not in the file: a file that also has a column ``name`` makes readers merge two
types (``timestamp[ms] vs string``) or silently disagree with the path.

So before a chunk's table is written, every partition column it has is checked to equal
its path value in every row (after converting the path value to the column's type, see
:func:`convert_path_values`) and dropped (:func:`strip_partition_columns`). With a
declared schema the conversion is checked for every chunk at plan time
(:func:`check_schema`).

Plain Python and pyarrow: nothing here imports Prefect or Dask.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import string
from dataclasses import dataclass
from typing import Optional, Sequence
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc

from distetl.model.chunks import Chunk
from distetl.errors import ChunkError, PlanError
from distetl.model.templates import TargetTemplate

__all__ = [
    "HIVE_NULL", "PartitionLayout", "check_schema", "convert_path_values", "dataset_root",
    "partition_layout", "partition_values", "strip_partition_columns", "strip_partitions",
]

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
"""The path value Hive readers (pyarrow included) read as null."""

_FIX_CHUNK = (
    "drop or rename {name!r} in the transform, or make it equal to the path value, "
    "or rename the path segment {name}=… in the target template"
)


@dataclass(frozen=True)
class PartitionLayout:
    """Where a target template puts partition directories.

    A directory segment after ``{output}`` (the file name is not one) whose text up to
    its first ``=`` is literal names a partition column, e.g. ``date={date}``,
    ``part={part}`` or ``region=eu``; this is the rule pyarrow's Hive partitioning
    applies to paths. A segment that starts with a chunk field (``{key}`` renders
    ``date=2013-01-03``) may name one too: such a layout is ``dynamic`` and its names
    are only known from rendered paths.

    Attributes:
        template: The parsed target template.
        names: Partition column names written literally in the template, in path order.
        dynamic: Whether a directory segment starts with a chunk field.
        head: Literal template text before ``{output}`` (empty when it starts with it).
        has_output: Whether the template has an ``{output}`` field.
        root: Template text of the deepest fixed directory above every partition
            directory (``{output}/flights``), ``{output}`` unrendered.
    """

    template: TargetTemplate
    names: tuple[str, ...]
    dynamic: bool
    head: str
    has_output: bool
    root: str

    @classmethod
    def parse(cls, template: TargetTemplate | str) -> "PartitionLayout":
        """Find the partition segments of a template.

        Args:
            template: A target template (parsed or as text).

        Raises:
            PlanError: If the template is not valid format syntax.
        """
        parsed = template if isinstance(template, TargetTemplate) else TargetTemplate(template)
        pieces = list(string.Formatter().parse(parsed.template))
        head, root, start = "", "", 0
        for i, (text, name, _, _) in enumerate(pieces):
            if name is not None and name.split(".")[0].split("[")[0] == "output":
                head = "".join(p[0] for p in pieces[:i]) + text
                root, start = _escape(head) + "{output}", i + 1
                break
        has_output = bool(root)
        # Segments as (literal text before the first field, whether a field is in it,
        # template text); field values never hold "/", so each renders one segment.
        segments: list[list] = [["", False, ""]]
        for text, name, spec, conv in pieces[start:]:
            for k, part in enumerate(text.split("/")):
                if k:
                    segments.append(["", False, ""])
                if not segments[-1][1]:
                    segments[-1][0] += part
                segments[-1][2] += _escape(part)
            if name is not None:
                segments[-1][1] = True
                segments[-1][2] += _field(name, spec, conv)
        names: list[str] = []
        dynamic, fixed = False, True
        if has_output:  # text glued to {output} belongs to the root's last segment
            root += segments[0][2]
            fixed = not segments[0][1]
            segments = segments[1:]
        parts = []
        for literal, has_field, raw in segments[:-1]:  # the last one is the file name
            name_end = literal.find("=")
            if name_end > 0:
                names.append(literal[:name_end])
            elif has_field:
                dynamic = dynamic or name_end < 0
            fixed = fixed and name_end <= 0 and not has_field
            if fixed:
                parts.append(raw)
        root = "/".join([root, *parts]) if has_output else "/".join(parts) or "."
        return cls(parsed, tuple(dict.fromkeys(names)), dynamic, head, has_output, root)

    def may_hold(self, columns: Sequence[str]) -> bool:
        """Whether any of ``columns`` may be a partition column of this layout."""
        return self.dynamic or any(name in self.names for name in columns)

    def relative(self, path: str, output: str) -> str:
        """The part of a rendered path after the output root (the whole path without one)."""
        prefix = self.head + output if self.has_output else ""
        return path[len(prefix):] if prefix and path.startswith(prefix) else path

    def values(self, path: str, output: str) -> dict[str, Optional[str]]:
        """Partition values of one rendered path, as a Hive reader gets them.

        Values are percent-decoded (pyarrow's default ``segment_encoding="uri"``);
        :data:`HIVE_NULL` reads as None. A name repeated in the path keeps its first value.

        Args:
            path: A target path rendered from this template.
            output: The run's output root the path was rendered with.
        """
        segments = self.relative(path, output).split("/")
        out: dict[str, Optional[str]] = {}
        for segment in segments[1 if self.has_output else 0:-1]:
            name, sep, value = segment.partition("=")
            if sep and name and name not in out:
                out[name] = None if value == HIVE_NULL else unquote(value)
        return out

    def dataset_root(self, output: str) -> str:
        """The directory to open with ``partitioning="hive"`` to read every target."""
        return self.root.format(output=output)


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _field(name: str, spec: Optional[str], conv: Optional[str]) -> str:
    return "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"


@functools.lru_cache(maxsize=64)
def partition_layout(template: str) -> PartitionLayout:
    """The cached :class:`PartitionLayout` of a target template's text."""
    return PartitionLayout.parse(template)


def dataset_root(template: str, output: str) -> str:
    """The directory to read a pipeline's output from with Hive partitioning.

    Example:
        >>> dataset_root("{output}/flights/date={date}/part-0.parquet", "/out")
        '/out/flights'
    """
    return partition_layout(template).dataset_root(output)


def partition_values(template: str | TargetTemplate, rendered_path: str, output: str) -> dict[str, Optional[str]]:
    """The partition column values of one rendered target path.

    Args:
        template: The target template the path was rendered from.
        rendered_path: The rendered path.
        output: The output root it was rendered with.

    Returns:
        ``{name: value}`` in path order; a :data:`HIVE_NULL` value is None.

    Example:
        >>> partition_values("{output}/t/date={date}/part-0.parquet", "/o/t/date=2013-01-03/part-0.parquet", "/o")
        {'date': '2013-01-03'}
    """
    text = template.template if isinstance(template, TargetTemplate) else template
    return partition_layout(text).values(rendered_path, output)


_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


def _convert(text: pa.Array, kind: pa.DataType) -> pa.Array:
    """Cast string path values to ``kind``; for a timezone-aware timestamp a value
    without a zone offset is local time in that zone."""
    if pa.types.is_timestamp(kind) and kind.tz is not None:
        try:
            naive = text.cast(pa.timestamp(kind.unit))
        except pa.ArrowInvalid:
            return text.cast(kind)  # values with a zone offset
        return pc.assume_timezone(naive, kind.tz, ambiguous="raise", nonexistent="raise")
    return text.cast(kind)


def convert_path_values(values: Sequence[str], kind: pa.DataType) -> pa.Array:
    """Convert path values to a column's Arrow type, the natural way.

    ``date32``/``date64`` from ``YYYY-MM-DD``; timestamps of any unit from an ISO date
    (midnight) or date and time; for a timezone-aware type a value without a zone
    offset is local time in that zone (``2013-01-03`` is midnight there); integers,
    floats and booleans (``true``/``false``) as written; strings (and dictionaries of
    strings, compared by value) as they are. Other types: Arrow's cast from string.

    Vectorised: one cast for all values; only when it fails are the values tried one
    by one, to name the first that does not convert.

    Args:
        values: Path values (percent-decoded, not :data:`HIVE_NULL`).
        kind: The column's type.

    Returns:
        The converted values, of ``kind`` (its value type for a dictionary).

    Raises:
        ValueError: With ``args`` (reason, first value that does not convert).
    """
    target = kind.value_type if pa.types.is_dictionary(kind) else kind
    text = pa.array(list(values), pa.string())
    try:
        return _convert(text, target)
    except _ARROW_ERRORS:
        pass
    pieces = []
    for i, value in enumerate(values):  # mixed offsets, or find the value that fails
        try:
            pieces.append(_convert(text.slice(i, 1), target))
        except _ARROW_ERRORS as exc:
            raise ValueError(str(exc).splitlines()[0][:200], value) from None
    return pa.concat_arrays(pieces)


def _show(column: pa.ChunkedArray | pa.Array, row: int) -> str:
    """One value of a column, readable (``2013-01-03 06:00:00.000``, ``'eu'``, ``null``)."""
    value = column[row]
    if not value.is_valid:
        return "null"
    if isinstance(value.as_py(), str):
        return repr(value.as_py())
    try:
        return str(pc.cast(column.slice(row, 1), pa.string())[0].as_py())
    except _ARROW_ERRORS:
        return repr(value.as_py())


def strip_partition_columns(
    table: pa.Table, values: dict[str, Optional[str]], chunk_key: str, path: str
) -> pa.Table:
    """Drop the partition columns a chunk's table has, after checking them against the path.

    For each ``name`` in ``values`` that is a column of ``table``, the path value is
    converted to the column's type (:func:`convert_path_values`) and every row must
    equal it (a null row differs; a :data:`HIVE_NULL` path value wants every row null).
    Vectorised: no Python loop over rows.

    Args:
        table: The chunk's table (already cast to the declared schema, if any).
        values: Its partition values (:func:`partition_values`).
        chunk_key: The chunk's key, for the error.
        path: The chunk's target path, for the error.

    Returns:
        The table without its partition columns (the same table if it has none).

    Raises:
        ChunkError: Naming the chunk, the column, the path value and the first row that
            differs (with its value), or the path value that does not convert.
    """
    drop = [name for name in values if name in table.column_names]
    for name in drop:
        column = table.column(name)
        value = values[name]
        if value is None:
            mask = pc.is_valid(column)
            shown = HIVE_NULL
        else:
            shown = repr(value)
            try:
                scalar = convert_path_values([value], column.type)[0]
            except ValueError as exc:
                raise ChunkError(
                    f"path value {shown} of partition column {name!r} ({name}={value} in "
                    f"{path}) convertible to the column's type {column.type}",
                    f"a value that does not convert ({exc.args[0]})",
                    _FIX_CHUNK.format(name=name),
                    where=f"chunk {chunk_key}",
                ) from None
            mask = pc.invert(pc.fill_null(pc.equal(column, scalar), False))
        bad = pc.sum(mask).as_py() or 0
        if bad:
            row = pc.index(mask, True).as_py()
            raise ChunkError(
                f"partition column {name!r} equal to its path value {shown} in every row "
                f"({name}={value if value is not None else HIVE_NULL} in {path}; the column "
                "lives in the path, not the file)",
                f"{_show(column, row)} in row {row} ({bad} of {table.num_rows} rows differ, "
                f"column type {column.type})",
                _FIX_CHUNK.format(name=name),
                where=f"chunk {chunk_key}",
            )
    return table.drop_columns(drop) if drop else table


def strip_partitions(table: pa.Table, target: str, chunk: Chunk, output: str) -> pa.Table:
    """:func:`strip_partition_columns` for one chunk of a pipeline.

    The chunk's target path is rendered again (the same path the plan rendered) only
    when the table has a column that may be a partition column; the template's layout
    is parsed once per process and cached.

    Args:
        table: The chunk's table.
        target: The pipeline's target template.
        chunk: The chunk.
        output: The run's output root (normalised, as the plan rendered it).

    Raises:
        ChunkError: See :func:`strip_partition_columns`.
    """
    layout = partition_layout(target)
    if not layout.may_hold(table.column_names):
        return table
    path = layout.template.render(chunk, output)
    return strip_partition_columns(table, layout.values(path, output), chunk.key, path)


def check_schema(
    template: str | TargetTemplate,
    schema: Optional[pa.Schema],
    chunks: Sequence[Chunk],
    paths: Sequence[str],
    output: str,
) -> None:
    """Check at plan time that every chunk's path value converts to its declared column.

    A declared schema may list a partition column: each output is cast to the schema
    first, then the column is checked against the path and dropped, so the files lack
    it and readers get it from the path. Each distinct path value is converted once
    (vectorised over the paths), so a million chunks cost well under a second.

    Args:
        template: The target template.
        schema: The declared schema; nothing is checked without one.
        chunks: The chunks, in plan order.
        paths: Their rendered target paths (same order).
        output: The output root the paths were rendered with.

    Raises:
        PlanError: Naming the first chunk whose path value does not convert, the
            column, the value and the fix.
    """
    if schema is None or not paths:
        return
    layout = partition_layout(template.template if isinstance(template, TargetTemplate) else template)
    candidates = [name for name in schema.names if name in layout.names or layout.dynamic]
    if not candidates:
        return
    prefix = layout.head + output if layout.has_output else ""
    texts = pa.array(paths if isinstance(paths, list) else list(paths), pa.string())
    if prefix and paths[0].startswith(prefix):  # every path is rendered from one template
        texts = pc.utf8_slice_codeunits(texts, len(prefix))
    lead = "/" if layout.has_output else "(?:^|/)"
    if layout.dynamic:  # names rendered by fields: keep the declared ones the paths hold
        segments = pc.list_flatten(pc.split_pattern(texts, "/"))
        named = pc.filter(segments, pc.match_substring(segments, "="))
        held = set(pc.unique(pc.list_element(pc.split_pattern(named, "=", max_splits=1), 0)).to_pylist())
        candidates = [name for name in candidates if name in layout.names or name in held]
    for name in candidates:
        found = pc.extract_regex(texts, f"{lead}{re.escape(name)}=(?P<v>[^/]*)/").field("v")
        distinct = [v for v in pc.unique(found).to_pylist() if v is not None and v != HIVE_NULL]
        if not distinct:
            continue
        kind = schema.field(name).type
        try:
            convert_path_values([unquote(v) for v in distinct], kind)
        except ValueError as exc:
            decoded = exc.args[1]
            raw = next(v for v in distinct if unquote(v) == decoded)
            index = pc.index(found, raw).as_py()
            key = chunks[index].key if 0 <= index < len(chunks) else "?"
            raise PlanError(
                f"path value {decoded!r} of partition column {name!r} ({name}={raw} in "
                f"{paths[index]}) convertible to its declared type {kind}",
                f"a value that does not convert ({exc.args[0]})",
                f"declare {name!r} with a type the path values convert to (e.g. "
                f"{_suggest(decoded)}), remove it from the schema, or rename the path "
                f"segment {name}=… in the target template",
                where=f"chunk {key}",
            ) from None


def _suggest(value: str) -> str:
    """A schema type the path value converts to, for the fix of :func:`check_schema`."""
    try:
        dt.date.fromisoformat(value)
        return "pa.date32() or pa.string()"
    except ValueError:
        return "pa.string()"
