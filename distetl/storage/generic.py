"""Any other fsspec protocol (``memory``, ``gs``, ``az``, …): the generic fallback.

Reading goes through fsspec as :class:`~distetl.storage.base.Backend` does it; a commit is
one ``pipe_file`` of the finished bytes, and a file written piece by piece is kept in
memory until its commit.
"""

from __future__ import annotations

import posixpath

from distetl.storage.base import AtomicSink, Backend

__all__ = ["FsspecBackend"]


class FsspecBackend(Backend):
    """A filesystem of any fsspec protocol without a backend of its own."""

    def write_atomic(self, url: str, data: bytes, *, create_only: bool = False) -> bool:
        """One ``pipe_file`` of the finished bytes (``create_only`` is not applied)."""
        path = self.strip(url)
        parent = posixpath.dirname(path)
        if parent and self.protocol not in ("gs", "gcs", "az", "abfs", "abfss"):
            self.fs.makedirs(parent, exist_ok=True)
        self.fs.pipe_file(path, data)
        return True

    def open_atomic(self, url: str, *, create_only: bool = False) -> AtomicSink:
        return _BufferedSink(self, url, create_only)


class _BufferedSink(AtomicSink):
    """Other object stores: the bytes in memory, committed with one ``write_atomic``."""

    def __init__(self, backend: Backend, url: str, create_only: bool):
        super().__init__(url)
        self._backend = backend
        self._create_only = create_only
        self._buffer = bytearray()

    def _write(self, view: memoryview) -> None:
        self._buffer += view

    def _commit(self) -> bool:
        data, self._buffer = bytes(self._buffer), bytearray()
        return self._backend.write_atomic(self.url, data, create_only=self._create_only)

    def _cleanup(self, holding_io: bool) -> None:
        if holding_io:
            self._buffer = bytearray()

