"""Storage: one interface over local folders, S3 and any fsspec filesystem.

Everything goes through fsspec. :class:`Storage` is what the rest of distetl holds: it
names a filesystem by protocol and options, pickles to workers as just that, and hands
each call to the backend for its protocol, as fsspec picks a filesystem class:
:class:`~distetl.storage.local.LocalBackend` for local paths (made absolute so workers in
another directory see the same files), :class:`~distetl.storage.s3.S3Backend` for
``s3://`` (create-only commits, multipart uploads, plan-time checks that fail within
seconds), and :class:`~distetl.storage.generic.FsspecBackend` for any other protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import fsspec

from distetl.storage.base import AtomicSink, Backend, redact
from distetl.storage.generic import FsspecBackend
from distetl.storage.local import LocalBackend
from distetl.storage.s3 import S3Backend

if TYPE_CHECKING:
    from distetl.storage.listing import Listing

__all__ = ["Storage", "BACKENDS"]

#: The backend of each protocol; any other protocol gets :class:`FsspecBackend`.
BACKENDS: dict[str, type[Backend]] = {"file": LocalBackend, "local": LocalBackend, "s3": S3Backend, "s3a": S3Backend}


def _protocol(url: str) -> str:
    if "://" in url:
        return url.split("://", 1)[0]
    return "file"


def _backend_for(protocol: str, options: dict[str, Any]) -> Backend:
    return BACKENDS.get(protocol, FsspecBackend)(protocol, options)


class Storage:
    """One filesystem, identified by protocol and options. Picklable; cheap to rebuild.

    Each call goes to the backend of the protocol (:data:`BACKENDS`); the docstrings
    here say what each backend does.

    Args:
        protocol: fsspec protocol, e.g. ``file``, ``s3``, ``memory``.
        options: Storage options for the filesystem (credentials allowed; never logged).
            For ``s3`` these are s3fs arguments (``endpoint_url``, ``key``, ``secret``,
            ``token``, ``profile``, ``client_kwargs``, …) plus ``create_only``. Local
            paths ignore them (one option set serves S3 sources and a local output).
    """

    def __init__(self, protocol: str, options: Mapping[str, Any] | None = None):
        self.protocol = protocol
        self.options = dict(options or {})
        self._backend: Backend = _backend_for(self.protocol, self.options)

    @classmethod
    def for_url(cls, url: str, options: Mapping[str, Any] | None = None) -> "Storage":
        """The storage for a URL or local path."""
        return cls(_protocol(url), options)

    def __getstate__(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.protocol = state["protocol"]
        self.options = state["options"]
        self._backend = _backend_for(self.protocol, self.options)

    def __repr__(self) -> str:
        return f"Storage({self.protocol!r}, {redact(self.options)!r})"

    @property
    def is_local(self) -> bool:
        """Whether this is the local filesystem."""
        return isinstance(self._backend, LocalBackend)

    @property
    def is_s3(self) -> bool:
        """Whether this is S3 (``s3://`` or ``s3a://``) through s3fs."""
        return isinstance(self._backend, S3Backend)

    # -- the filesystem ----------------------------------------------------------------

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem (created on first use, in the process that uses it)."""
        return self._backend.fs

    @property
    def retries(self) -> int:
        """Requests to the storage that failed transiently (5xx, throttled, a connection
        reset, a timeout) and were tried again, so far, by this storage's client (S3;
        0 elsewhere). A worker's chunk counts the difference over its work."""
        return getattr(self._backend, "retries", 0)

    @property
    def endpoint(self) -> str | None:
        """The S3 endpoint in use: ``endpoint_url`` option, else ``AWS_ENDPOINT_URL_S3``
        or ``AWS_ENDPOINT_URL``; None means AWS's own endpoints."""
        return self._backend.endpoint

    # -- paths -------------------------------------------------------------------------

    def normalize(self, url: str) -> str:
        """A URL as this storage's paths are compared: absolute for local files."""
        return self._backend.normalize(url)

    def strip(self, url: str) -> str:
        """The filesystem-internal path of a URL (no protocol)."""
        return self._backend.strip(url)

    def unstrip(self, path: str) -> str:
        """The URL of a filesystem-internal path."""
        return self._backend.unstrip(path)

    def describe(self) -> str:
        """Where this storage points, without credentials: for error messages."""
        return self._backend.describe()

    # -- reading -----------------------------------------------------------------------

    def glob(self, pattern: str) -> list[str]:
        """URLs of the files matching a glob, sorted; one listing on object stores.

        Raises:
            StorageError: If the bucket is missing or cannot be read (checked first, with
                short timeouts).
        """
        return sorted(self.glob_stamps(pattern))

    def glob_stamps(self, pattern: str) -> dict[str, str]:
        """The files matching a glob, each with its stamp (see
        :func:`~distetl.storage.base.stamp_of`); one listing on object stores.

        Raises:
            StorageError: If the bucket is missing or cannot be read.
        """
        table = self.glob_table(pattern)
        return dict(zip(table.column("path").to_pylist(), table.column("stamp").to_pylist()))

    def glob_table(self, pattern: str) -> Any:
        """The files matching a glob as an Arrow table (``path``, ``stamp``) sorted by
        path: ~50 bytes per file, for a plan of a million files.

        A local pattern whose wildcards are all in its last segment (``data/*.csv``) is
        listed with one ``os.scandir`` of its folder, with the same matches and stamps
        as fsspec's glob (hidden files included, case-sensitive), without an info dict
        per file. Other patterns go through fsspec's glob (one listing on object stores).

        Raises:
            StorageError: If the bucket is missing or cannot be read.
        """
        return self._backend.glob_table(pattern)

    def list_files(self, root: str) -> set[str]:
        """Every file under ``root`` (recursively), as URLs, with one listing.

        On S3 this is one ``ListObjectsV2`` per 1,000 keys under the prefix (never a
        request per file), uncached. A missing root is an empty set.

        Raises:
            StorageError: If the listing fails (credentials, endpoint, permissions).
        """
        return set(self.list_stamps(root))

    def list_stamps(self, root: str) -> dict[str, str]:
        """Every file under ``root`` (recursively) with its stamp, in one listing (the
        same requests as :meth:`list_files`: the listing carries sizes and times).

        Raises:
            StorageError: If the listing fails (credentials, endpoint, permissions).
        """
        return self._backend.list_stamps(root)

    def list_table(self, root: str, keep_stamps: bool = False) -> "Listing":
        """Every file under ``root`` (recursively) with its stamp, as columns (see
        :class:`distetl.storage.listing.Listing`): what :meth:`list_stamps` returns, without a
        Python object per file. Local paths and stamps are kept as hash keys only
        (enough to look paths up and compare stamps; ``keep_stamps`` keeps the stamps'
        text too); object-store listings keep their paths.

        Raises:
            StorageError: If the listing fails (credentials, endpoint, permissions).
        """
        return self._backend.list_table(root, keep_stamps)

    def exists(self, url: str) -> bool:
        """Whether one file exists (used on workers as a guard, not for planning).

        On S3 this is one ``HeadObject`` (s3fs's ``exists`` adds a listing to look for a
        "directory" when the key is missing).
        """
        return self._backend.exists(url)

    def open(self, url: str, mode: str = "rb", **kwargs: Any) -> Any:
        """Open a file for reading (sources). Never use this to write a target: see
        :meth:`write_atomic`."""
        return self._backend.open(url, mode, **kwargs)

    def read_bytes(self, url: str) -> bytes | None:
        """The whole content of one small file (a lease, a manifest); None if it is missing.

        On S3 this is one ``GetObject`` (s3fs would otherwise send a ``HeadObject`` first,
        to split large reads).
        """
        return self._backend.read_bytes(url)

    def mtime(self, url: str) -> float | None:
        """When one file was last modified (seconds since the epoch); None if it is missing.

        Local: one ``stat``; object stores: one ``HeadObject`` (its ``LastModified``).
        """
        return self._backend.mtime(url)

    # -- plan-time checks ------------------------------------------------------------

    def check_root(self, root: str, role: str = "output") -> None:
        """Fail fast if ``root`` cannot be used: missing bucket, bad credentials, no endpoint.

        On S3 this lists at most one key under ``root`` with a client that gives up within
        seconds (:data:`~distetl.storage.s3.PROBE_CONFIG`): the same permission the
        skip-by-listing needs.

        Args:
            root: The output root or a source prefix.
            role: ``output`` or ``source``, for the message.

        Raises:
            StorageError: Naming the bucket or endpoint and the fix.
        """
        self._backend.check_root(root, role)

    # -- committing --------------------------------------------------------------------

    def write_atomic(self, url: str, data: bytes, *, create_only: bool = False) -> bool:
        """Commit complete bytes at ``url``: either the whole file appears or nothing.

        Local: a hidden temp file in the target's directory, fsync, then ``os.replace``
        (``create_only`` is not applied: the last writer wins).
        S3: one ``PutObject`` of the finished bytes; S3 stores an object only when its
        whole body arrived, so a failure leaves nothing at the key. With ``create_only``
        (and the ``create_only`` storage option not False) the PUT carries
        ``If-None-Match: *``: if the key exists, nothing is written and this returns
        False. Objects of 5 GiB or more go multipart (invisible until complete, and
        create-only the same way: see :meth:`open_atomic`).
        Other object stores: one ``pipe_file`` of the finished bytes.

        Args:
            url: Final location.
            data: The complete file.
            create_only: Never replace an existing object (S3).

        Returns:
            True if this call committed the file, False if the object already existed
            (create-only on S3: another writer won).

        Raises:
            StorageError: If the server does not support create-only writes.
            OSError: If the write failed (nothing was committed).
        """
        return self._backend.write_atomic(url, data, create_only=create_only)

    def open_atomic(self, url: str, *, create_only: bool = False) -> "AtomicSink":
        """A file to write piece by piece that appears at ``url`` only on ``commit()``.

        For chunks bigger than memory: the caller writes (e.g. with
        ``pyarrow.parquet.ParquetWriter``), then calls :meth:`AtomicSink.commit`, or
        :meth:`AtomicSink.abort` on any failure (also from another thread, e.g. past a
        time limit). Nothing is ever written at ``url`` before the commit.

        Local: a hidden temp file beside the target (``.{name}.{32 hex}.tmp``, the name
        :mod:`distetl.state.leftovers` removes after a kill), fsync, ``os.replace``, as
        :meth:`write_atomic` (``create_only`` is not applied: the last writer wins).
        S3: a multipart upload of :data:`~distetl.storage.s3.MULTIPART_PART_SIZE` parts (one
        part buffered at a time), completed only by the commit, create-only (``If-None-Match: *`` on
        ``CompleteMultipartUpload``) as :meth:`write_atomic`'s PUT, and aborted on
        failure; a file smaller than one part is committed with one ``PutObject``.
        Other object stores: the bytes are kept in memory and committed with
        :meth:`write_atomic`.

        Args:
            url: Final location.
            create_only: Never replace an existing object (S3).
        """
        return self._backend.open_atomic(url, create_only=create_only)

    @property
    def creates_exclusively(self) -> bool:
        """Whether :meth:`write_new` is atomic create-if-absent (local files; S3 unless the
        ``create_only`` storage option is False). Otherwise it checks, then writes."""
        return self._backend.creates_exclusively

    def write_new(self, url: str, data: bytes) -> bool:
        """Create a small file with complete content only if nothing is at ``url``.

        Local: the bytes go to a hidden temp file beside it, which is then hard-linked to
        ``url`` (``link`` fails if ``url`` exists, and readers never see a partial file);
        where hard links are not supported, ``os.open(O_CREAT | O_EXCL)`` then write.
        S3: a create-only ``PutObject`` (``If-None-Match: *``), see :meth:`write_atomic`.
        Elsewhere (and on S3 with ``create_only=false``): an existence check, then a write,
        which two concurrent writers can both pass (see :attr:`creates_exclusively`).

        Returns:
            True if this call created the file, False if something was already there.
        """
        return self._backend.write_new(url, data)

    def delete(self, url: str) -> bool:
        """Remove one file. Returns False if it was already gone (local files; an object
        store's delete of a missing key succeeds, so there it returns True)."""
        return self._backend.delete(url)
