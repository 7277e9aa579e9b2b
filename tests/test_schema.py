"""Declared schemas: outputs are cast; a column that cannot be cast names chunk and column."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from distetl import ChunkError
from distetl.model.schema import to_table

SCHEMA = pa.schema([("id", pa.int64()), ("amount", pa.float64()), ("note", pa.string())])


def test_cast_to_declared_schema_even_when_all_null():
    frame = pd.DataFrame({"id": [1, 2], "amount": [1, 2], "note": [None, None], "extra": [0, 0]})
    table = to_table(frame, SCHEMA, "date=2013-01-01")
    assert table.schema == SCHEMA
    assert table.column("amount").to_pylist() == [1.0, 2.0]


def test_uncastable_column_names_chunk_and_column():
    frame = pd.DataFrame({"id": ["1", "x"], "amount": [1.0, 2.0], "note": ["a", "b"]})
    with pytest.raises(ChunkError) as err:
        to_table(frame, SCHEMA, "date=2013-01-05")
    text = str(err.value)
    assert "chunk date=2013-01-05" in text and "'id'" in text and "int64" in text and "Fix:" in text


def test_missing_column_is_named():
    with pytest.raises(ChunkError, match="'note'"):
        to_table(pd.DataFrame({"id": [1], "amount": [1.0]}), SCHEMA, "k")
