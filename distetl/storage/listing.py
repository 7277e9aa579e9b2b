"""A recursive file listing held as columns, and path lookups by hash.

A plan over a million committed files must not hold a million-entry ``{path: stamp}``
dict (~250 bytes per file). A :class:`Listing` keeps the paths and their stamps (size
plus modification time or ETag) as two Arrow string arrays, and finds paths through two
64-bit hashes per path (Python's string hash of the path, and of the path with a NUL
appended: together 128 bits, so two different paths never match in practice) sorted in
NumPy arrays. Looking up a million rendered target paths is then a ``searchsorted``.
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import pyarrow as pa

__all__ = ["Listing", "path_keys"]

#: Paths converted to Python strings at once when hashing a column.
_STEP = 65_536


def path_keys(paths: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """The two 64-bit hash keys of each path (see the module docstring)."""
    first: list[int] = []
    second: list[int] = []
    for path in paths:
        first.append(hash(path))
        second.append(hash(path + "\x00"))
    return np.array(first, dtype=np.int64), np.array(second, dtype=np.int64)


def column_keys(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """:func:`path_keys` of an Arrow string column, a slice at a time."""
    parts = [path_keys(column.slice(start, _STEP).to_pylist()) for start in range(0, len(column), _STEP)]
    # (slices of a chunked array are chunked arrays: to_pylist works on both)
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class KeyIndex:
    """Find rows by path hash keys.

    Args:
        first: The rows' first hash keys.
        second: Their second hash keys.
    """

    def __init__(self, first: np.ndarray, second: np.ndarray):
        self.order = np.argsort(first)
        self.first = first[self.order]
        self.second = second[self.order]

    def find(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Row of each queried path (by its two keys), or -1 where none matches."""
        if not len(self.first) or not len(first):
            return np.full(len(first), -1, dtype=np.int64)
        pos = np.searchsorted(self.first, first)
        pos_c = np.minimum(pos, len(self.first) - 1)
        hit = (self.first[pos_c] == first) & (self.second[pos_c] == second)
        out = np.where(hit, self.order[pos_c], -1)
        # Equal first keys of different paths (a 64-bit collision): look past the first.
        near = np.flatnonzero(~hit & (self.first[pos_c] == first))
        for q in near.tolist():
            j = int(pos[q])
            while j < len(self.first) and self.first[j] == first[q]:
                if self.second[j] == second[q]:
                    out[q] = self.order[j]
                    break
                j += 1
        return out


class Listing:
    """Every file under a root with its stamp, as columns.

    Args:
        paths: The files' URLs (local: absolute paths); None when only their keys are kept.
        stamps: Their stamps, same order; None when only their hashes are kept.
        keys: The paths' hash keys (computed from ``paths`` when not given).
        hidden: The listed files whose name starts with a dot (from ``paths`` if None).
        stamp_keys: Each stamp's hash, when ``stamps`` are not kept.
    """

    def __init__(self, paths: "pa.Array | pa.ChunkedArray | None", stamps: "pa.Array | pa.ChunkedArray | None",
                 keys: Optional[tuple[np.ndarray, np.ndarray]] = None, hidden: Optional[set[str]] = None,
                 stamp_keys: Optional[np.ndarray] = None):
        self.paths = paths
        self.stamps = stamps
        self._stamp_keys = stamp_keys
        self._keys = keys
        self._hidden = hidden
        self._index: Optional[KeyIndex] = None

    @classmethod
    def from_dict(cls, stamps: dict[str, str]) -> "Listing":
        return cls(pa.array(list(stamps), pa.string()), pa.array(list(stamps.values()), pa.string()))

    def __len__(self) -> int:
        return len(self.stamps) if self.stamps is not None else len(self._stamp_keys)

    def stamp_keys(self, rows: np.ndarray) -> np.ndarray:
        """The hash of each row's stamp (rows ≥ 0)."""
        if self._stamp_keys is not None:
            return self._stamp_keys[rows]
        return np.array([hash(s) for s in self.stamps.take(pa.array(rows)).to_pylist()], dtype=np.int64)

    @property
    def index(self) -> KeyIndex:
        if self._index is None:
            keys = self._keys if self._keys is not None else column_keys(self.paths)
            self._index = KeyIndex(*keys)
            self._keys = None
        return self._index

    def find(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Row of each path given by its keys, or -1 where it is not listed."""
        return self.index.find(first, second)

    def find_paths(self, paths: list[str]) -> np.ndarray:
        """Row of each path, or -1 where it is not listed."""
        return self.find(*path_keys(paths))

    def stamp_of(self, rows: np.ndarray) -> list[Optional[str]]:
        """The stamps of rows (None for -1)."""
        found = rows >= 0
        out: list[Optional[str]] = [None] * len(rows)
        if found.any():
            values = self.stamps.take(pa.array(rows[found])).to_pylist()
            for position, value in zip(np.flatnonzero(found).tolist(), values):
                out[position] = value
        return out

    def hidden(self) -> set[str]:
        """Listed files whose name starts with a dot (temp files of killed writes)."""
        import pyarrow.compute as pc

        if self._hidden is not None:
            return set(self._hidden)
        if not len(self.paths):
            return set()
        mask = pc.match_substring_regex(self.paths, r"(^|/)\.[^/]*$")
        return set(self.paths.filter(mask).to_pylist())
