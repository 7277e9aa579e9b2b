"""Output schemas: a chunk's DataFrame is cast to the declared pyarrow schema."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from distetl.errors import ChunkError

__all__ = ["to_table"]


def to_table(frame: pd.DataFrame, schema: pa.Schema | None, chunk_key: str) -> pa.Table:
    """Convert one chunk's DataFrame to an Arrow table in the declared schema.

    Columns are selected and ordered as the schema lists them; extra columns are
    dropped. Without a schema the DataFrame's own types are kept.

    Args:
        frame: The transformed chunk.
        schema: The declared output schema, or None.
        chunk_key: The chunk's key, for error messages.

    Raises:
        ChunkError: If a declared column is missing or cannot be cast; the message names
            the chunk and the column.
    """
    if not isinstance(frame, pd.DataFrame):
        raise ChunkError(
            "the transform to return a pandas.DataFrame",
            type(frame).__name__,
            "return a DataFrame from extract/transform",
            where=f"chunk {chunk_key}",
        )
    if schema is None:
        return pa.Table.from_pandas(frame, preserve_index=False)
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise ChunkError(
            f"column {missing[0]!r} declared in the output schema",
            f"a DataFrame with columns {list(frame.columns)[:20]}",
            f"produce {missing[0]!r} in the transform, or remove it from the schema",
            where=f"chunk {chunk_key}",
        )
    arrays = []
    for fld in schema:
        series = frame[fld.name]
        try:
            array = pa.array(series, from_pandas=True)
            if not array.type.equals(fld.type):
                array = array.cast(fld.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError, TypeError) as exc:
            sample = series.dropna().head(3).tolist()
            raise ChunkError(
                f"column {fld.name!r} castable to {fld.type}",
                f"dtype {series.dtype} with values like {sample!r} ({str(exc).splitlines()[0][:200]})",
                f"convert {fld.name!r} in the transform, or declare it as the type it has",
                where=f"chunk {chunk_key}",
            ) from None
        if not fld.nullable and array.null_count:
            raise ChunkError(
                f"no nulls in non-nullable column {fld.name!r}",
                f"{array.null_count} nulls",
                f"fill {fld.name!r} in the transform, or declare it nullable",
                where=f"chunk {chunk_key}",
            )
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=schema)
