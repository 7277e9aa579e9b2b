"""Output schemas: a chunk's output (or each piece of a streamed chunk) is cast to the
declared pyarrow schema."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd
import pyarrow as pa

from distetl.errors import ChunkError

__all__ = ["PIECE_TYPES", "is_piece", "is_stream", "to_table"]

#: What one chunk output, or one piece of a streamed chunk, may be.
PIECE_TYPES = (pd.DataFrame, pa.Table, pa.RecordBatch)

#: Iterables that are never a stream of pieces (their elements are not tables).
_NOT_STREAMS = (str, bytes, bytearray, memoryview, dict, pd.Series, pd.Index, np.ndarray, pa.Array, pa.ChunkedArray)


def is_piece(value: Any) -> bool:
    """Whether ``value`` is one table: a pandas DataFrame, an Arrow table or record batch."""
    return isinstance(value, PIECE_TYPES)


def is_stream(value: Any) -> bool:
    """Whether ``value`` is a stream of pieces: an iterator, generator, list, Arrow
    ``RecordBatchReader`` or any other iterable that is not itself a table (nor a
    string, mapping, Series or array, whose elements are not tables)."""
    if is_piece(value) or isinstance(value, _NOT_STREAMS):
        return False
    from collections.abc import Iterable, Mapping

    return isinstance(value, Iterable) and not isinstance(value, Mapping)


def to_table(frame: Any, schema: pa.Schema | None, chunk_key: str, *, piece: Optional[int] = None,
             inferred: bool = False) -> pa.Table:
    """Convert one chunk's output (or one piece of it) to an Arrow table in the declared schema.

    Columns are selected and ordered as the schema lists them; extra columns are
    dropped. Without a schema the output's own types are kept.

    Args:
        frame: The transformed chunk: a pandas DataFrame, an Arrow table or record batch.
        schema: The declared output schema, or None.
        chunk_key: The chunk's key, for error messages.
        piece: The piece's number (1-based) in a streamed chunk, for error messages.
        inferred: ``schema`` is not declared but the first piece's of a streamed chunk:
            a later piece must have exactly its columns (an extra column is an error, not
            dropped), each castable to the first piece's type.

    Raises:
        ChunkError: If a declared column is missing or cannot be cast; the message names
            the chunk (and piece) and the column.
    """
    where = f"chunk {chunk_key}" if piece is None else f"chunk {chunk_key}, piece {piece}"
    if not is_piece(frame):
        raise ChunkError(
            "the transform to return a pandas.DataFrame or pyarrow.Table"
            if piece is None else "each piece to be a pandas.DataFrame, pyarrow.Table or RecordBatch",
            type(frame).__name__,
            "return a DataFrame (or Arrow table) from extract/transform, or an iterator of them",
            where=where,
        )
    arrow = not isinstance(frame, pd.DataFrame)
    if arrow and isinstance(frame, pa.RecordBatch):
        frame = pa.Table.from_batches([frame])
    if schema is None:
        return frame if arrow else pa.Table.from_pandas(frame, preserve_index=False)
    columns = list(frame.column_names if arrow else frame.columns)
    what = "an Arrow table" if arrow else "a DataFrame"
    origin = "the first piece's schema" if inferred else "the output schema"
    missing = [name for name in schema.names if name not in columns]
    if missing:
        raise ChunkError(
            f"column {missing[0]!r} {'of the first piece' if inferred else 'declared in the output schema'}",
            f"{what} with columns {columns[:20]}",
            "give every piece the same columns, or declare Pipeline(schema=...) (declared "
            "columns are selected, others dropped)" if inferred else
            f"produce {missing[0]!r} in the transform, or remove it from the schema",
            where=where,
        )
    if inferred:
        extra = [name for name in columns if name not in schema.names]
        if extra:
            raise ChunkError(
                f"the columns of the first piece, {schema.names[:20]}",
                f"{what} with the extra column {extra[0]!r}",
                "give every piece the same columns, or declare Pipeline(schema=...) (declared "
                "columns are selected, others dropped)",
                where=where,
            )
    arrays = []
    for fld in schema:
        source = frame.column(fld.name) if arrow else frame[fld.name]
        try:
            array = source if arrow else pa.array(source, from_pandas=True)
            if not array.type.equals(fld.type):
                array = array.cast(fld.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError, TypeError) as exc:
            if arrow:
                sample = source.drop_null().slice(0, 3).to_pylist()
                kind = f"type {source.type}"
            else:
                sample = source.dropna().head(3).tolist()
                kind = f"dtype {source.dtype}"
            raise ChunkError(
                f"column {fld.name!r} castable to {fld.type} ({origin})",
                f"{kind} with values like {sample!r} ({str(exc).splitlines()[0][:200]})",
                f"convert {fld.name!r} in the transform, or declare Pipeline(schema=...) with "
                f"the type every piece can be cast to" if inferred else
                f"convert {fld.name!r} in the transform, or declare it as the type it has",
                where=where,
            ) from None
        if not fld.nullable and array.null_count:
            raise ChunkError(
                f"no nulls in non-nullable column {fld.name!r}",
                f"{array.null_count} nulls",
                f"fill {fld.name!r} in the transform, or declare it nullable",
                where=where,
            )
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=schema)
