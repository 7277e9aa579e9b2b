"""Local files: atomic commits by temp file and ``os.replace``, listings by ``os.scandir``.

Local paths are made absolute so workers in another directory see the same files. A
commit writes a hidden temp file beside its target (``.{name}.{32 hex}.tmp``, the name
:mod:`distetl.state.leftovers` removes after a kill), fsyncs it and moves it into place
with ``os.replace``; a create-only write hard-links it instead. Listings walk folders with
``os.scandir`` (one ``stat`` per file, no info dict per file), and a glob whose wildcards
are all in its last segment lists that one folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from typing import TYPE_CHECKING, Any, Iterator, Optional

import fsspec

from distetl.errors import StorageError
from distetl.storage.base import AtomicSink, Backend, stamp_of

if TYPE_CHECKING:
    from distetl.storage.listing import Listing

__all__ = ["LocalBackend"]


class LocalBackend(Backend):
    """The local filesystem (protocol ``file`` or ``local``); storage options are ignored
    (one option set serves S3 sources and a local output)."""

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._fs is None:
            self._fs = fsspec.filesystem("file")
        return self._fs

    # -- paths -------------------------------------------------------------------------

    def normalize(self, url: str) -> str:
        return os.path.abspath(url.split("://", 1)[1] if url.startswith("file://") else url)

    def strip(self, url: str) -> str:
        return self.normalize(url)

    def unstrip(self, path: str) -> str:
        return path

    # -- reading -------------------------------------------------------------------------

    def _glob(self, pattern: str) -> tuple[list[str], list[str]]:
        """One ``os.scandir`` of the folder when only the last segment has wildcards
        (:func:`_scandir_glob`), else fsspec's glob."""
        found = _scandir_glob(self.fs, self.strip(pattern))
        return found if found is not None else super()._glob(pattern)

    def list_stamps(self, root: str) -> dict[str, str]:
        return _local_stamps(self.strip(root))

    def list_table(self, root: str, keep_stamps: bool = False) -> "Listing":
        return _local_listing(self.strip(root), keep_stamps)

    def read_bytes(self, url: str) -> bytes | None:
        try:
            with open(self.normalize(url), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def mtime(self, url: str) -> float | None:
        try:
            return os.stat(self.normalize(url)).st_mtime
        except FileNotFoundError:
            return None

    # -- plan-time checks ------------------------------------------------------------------

    def check_root(self, root: str, role: str = "output") -> None:
        """An output must be writable (its nearest existing folder); sources are not checked."""
        if role != "output":
            return
        path = self.normalize(root)
        parent = path
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if parent and not os.access(parent, os.W_OK):
            raise StorageError(
                f"a writable output directory at {path}",
                f"no write permission on {parent}",
                "pass an --output you can write to",
            )

    # -- committing ----------------------------------------------------------------------

    def write_atomic(self, url: str, data: bytes, *, create_only: bool = False) -> bool:
        """A temp file beside the target, fsync, ``os.replace`` (``create_only`` is not
        applied: the last writer wins)."""
        path = self.normalize(url)
        with _local_temp(path, data) as tmp:
            os.replace(tmp, path)
        return True

    def open_atomic(self, url: str, *, create_only: bool = False) -> AtomicSink:
        return _LocalSink(self.normalize(url))

    @property
    def creates_exclusively(self) -> bool:
        return True

    def write_new(self, url: str, data: bytes) -> bool:
        """A temp file hard-linked to ``url`` (``link`` fails if ``url`` exists); where hard
        links are not supported, ``os.open(O_CREAT | O_EXCL)`` then write."""
        path = self.normalize(url)
        with _local_temp(path, data) as tmp:
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            except OSError:  # no hard links on this file system
                pass
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            return True

    def delete(self, url: str) -> bool:
        try:
            os.unlink(self.normalize(url))
        except FileNotFoundError:
            return False
        return True


class _LocalSink(AtomicSink):
    """A hidden temp file beside the target, fsync'ed and ``os.replace``d by the commit."""

    def __init__(self, path: str):
        super().__init__(path)
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        self.temp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        self._handle: Any = open(self.temp, "wb")

    def _write(self, view: memoryview) -> None:
        self._handle.write(view)

    def _commit(self) -> bool:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self.temp, self.url)
        return True

    def _cleanup(self, holding_io: bool) -> None:
        if holding_io and not self._handle.closed:
            try:
                self._handle.close()
            except OSError:
                pass
        try:
            os.unlink(self.temp)  # POSIX: also while a writer in another thread has it open
        except FileNotFoundError:
            pass
        except OSError:  # still open (Windows): the writer's own cleanup removes it
            pass


@contextlib.contextmanager
def _local_temp(path: str, data: bytes) -> Iterator[str]:
    """``data`` in a hidden temp file beside ``path``, flushed and fsynced, for the
    block to commit (rename or link); the temp file is gone afterwards either way."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        yield tmp
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _local_listing(root: str, keep_stamps: bool = False) -> "Listing":
    """:func:`_local_stamps` as columns: each path is hashed as it is listed and not
    kept (see :class:`distetl.storage.listing.Listing`), and so is each stamp, whose text is
    kept too with ``keep_stamps`` (in slices: no list of every stamp)."""
    from array import array

    import numpy as np
    import pyarrow as pa

    from distetl.storage.listing import Listing

    first, second, stamp_keys = array("q"), array("q"), array("q")
    hidden: set[str] = set()
    stamps: list[pa.Array] = []
    batch: list[str] = []
    for path, stamp in _walk_stamps(root):
        first.append(hash(path))
        second.append(hash(path + "\x00"))
        stamp_keys.append(hash(stamp))
        if os.path.basename(path).startswith("."):
            hidden.add(path)
        if keep_stamps:
            batch.append(stamp)
            if len(batch) >= 65_536:
                stamps.append(pa.array(batch, pa.string()))
                batch = []
    stamps.append(pa.array(batch, pa.string()))

    def numbers(values: array) -> np.ndarray:
        return np.frombuffer(values, dtype=np.int64).copy() if len(values) else np.empty(0, np.int64)

    return Listing(None, pa.chunked_array(stamps, pa.string()) if keep_stamps else None,
                   keys=(numbers(first), numbers(second)), hidden=hidden, stamp_keys=numbers(stamp_keys))


_GLOB_MAGIC = re.compile(r"[*?\[]")


def _scandir_glob(fs: Any, pattern: str) -> Optional[tuple[list[str], list[str]]]:
    """Paths and stamps of the local files matching ``pattern`` (absolute), when only
    its last segment has wildcards; None otherwise (the caller then uses fsspec's glob).

    Matches what fsspec's local glob returns: ``fnmatchcase`` on the names (hidden
    files included), every entry but directories, a symlink's stamp from fsspec's own
    info for it.
    """
    import fnmatch

    folder, _, name = pattern.rpartition("/")
    if not folder or _GLOB_MAGIC.search(folder) or not _GLOB_MAGIC.search(name) or "**" in name:
        return None
    match = re.compile(fnmatch.translate(name)).match
    paths: list[str] = []
    stamps: list[str] = []
    try:
        entries = os.scandir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return paths, stamps
    with entries:
        for entry in entries:
            if not match(entry.name):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    continue
                stamp = stamp_of(fs.info(entry)) if entry.is_symlink() else _stat_stamp(entry.stat(follow_symlinks=False))
            except FileNotFoundError:  # removed while listing
                continue
            paths.append(entry.path)
            stamps.append(stamp)
    return paths, stamps


def _stat_stamp(info: os.stat_result) -> str:
    """A local file's stamp from its ``stat``: what :func:`stamp_of` makes of fsspec's
    info for it (size and modification time)."""
    return f"{info.st_size}:{info.st_mtime}"


def _local_stamps(root: str) -> dict[str, str]:
    """Every file under a local directory with its stamp (as :func:`stamp_of` makes it
    from fsspec's listing)."""
    return dict(_walk_stamps(root))


def _walk_stamps(root: str) -> Iterator[tuple[str, str]]:
    """Every file under a local directory with its stamp, walked with ``os.scandir``:
    one ``stat`` per file and no per-file info dict, so a million files list in seconds."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=True):
                        stack.append(entry.path)
                        continue
                    info = entry.stat(follow_symlinks=True)
                except FileNotFoundError:  # removed while listing
                    continue
                yield entry.path, _stat_stamp(info)

