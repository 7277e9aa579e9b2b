"""What every storage backend shares: the :class:`Backend` interface, atomic sinks,
stamps, storage options and the redaction of secrets.

A :class:`~distetl.storage.core.Storage` hands each call to one backend object, chosen by
protocol, as fsspec picks a filesystem class: :class:`~distetl.storage.local.LocalBackend`
(local files), :class:`~distetl.storage.s3.S3Backend` (S3 through s3fs) or
:class:`~distetl.storage.generic.FsspecBackend` (any other fsspec protocol). What they
share lives here: reading through fsspec (globs, listings, single files), the plan-time
errors that say which of bucket, credentials, permission or endpoint is wrong, and
:class:`AtomicSink`, the file written piece by piece that appears only on commit.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any, Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

import fsspec

from distetl.errors import StorageError

if TYPE_CHECKING:
    from distetl.storage.listing import Listing

__all__ = ["Backend", "AtomicSink", "SinkAborted", "parse_storage_options", "redact", "stamp_of", "DISTETL_OPTIONS"]

_SECRET_WORDS = ("secret", "token", "password", "key", "credential")
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECURITY_TOKEN")

#: Storage options distetl reads itself and never passes to fsspec.
#: ``create_only`` (default True): commit chunks to S3 with ``If-None-Match: *``.
DISTETL_OPTIONS = ("create_only",)

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "InvalidClientTokenId", "TokenRefreshRequired", "AuthorizationHeaderMalformed",
    "InvalidSecurity", "UnrecognizedClientException",
}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "403"}
_MISSING_BUCKET_CODES = {"NoSuchBucket", "404"}
_CREDENTIAL_ERRORS = {"NoCredentialsError", "PartialCredentialsError", "ProfileNotFound",
                      "CredentialRetrievalError", "InvalidConfigError"}
_ENDPOINT_ERRORS = {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
                    "ReadTimeoutError", "ConnectionError", "ClientConnectorError",
                    "ServerDisconnectedError", "ClientOSError", "TimeoutError", "InvalidEndpointError",
                    "gaierror", "ConnectionRefusedError"}


def redact(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return storage options with every credential-like value replaced by ``***``."""
    out: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if isinstance(value, Mapping):
            out[name] = redact(value)
        elif any(word in name.lower() for word in _SECRET_WORDS):
            out[name] = "***"
        elif name == "endpoint_url" and isinstance(value, str):
            out[name] = _hide_userinfo(value)
        else:
            out[name] = value
    return out


def parse_storage_options(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` pairs from the command line into storage options.

    ``true``/``false`` become booleans and integers become ints. A dotted key such as
    ``client_kwargs.region_name=eu-west-1`` sets a nested value.

    Raises:
        StorageError: If a pair has no ``=``.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise StorageError(
                "--storage-option KEY=VALUE", repr(pair),
                "write e.g. --storage-option endpoint_url=http://127.0.0.1:9000",
            )
        name, raw = pair.split("=", 1)
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        elif raw.lstrip("-").isdigit():
            value = int(raw)
        target = out
        parts = name.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return out


def _hide_userinfo(url: str) -> str:
    """A URL without ``user:password@`` (endpoints are shown in errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def stamp_of(info: Mapping[str, Any]) -> str:
    """A file's stamp from its listing entry: size plus ETag (object stores) or
    modification time (files). A rewritten or replaced file gets another stamp."""
    size = info.get("size")
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or info.get("updated")
    return f"{size}:{tag}"


def _secret_values(options: Mapping[str, Any]) -> list[str]:
    out = []
    for name, value in options.items():
        if isinstance(value, Mapping):
            out.extend(_secret_values(value))
        elif isinstance(value, str) and len(value) >= 4 and any(w in name.lower() for w in _SECRET_WORDS):
            out.append(value)
    return out


def _env_secrets() -> list[str]:
    return [os.environ[name] for name in _SECRET_ENV if len(os.environ.get(name, "")) >= 4]


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code behind an exception (s3fs keeps botocore's error as the cause)."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 6:
        response = getattr(current, "response", None)
        if isinstance(response, Mapping):
            error = response.get("Error") or {}
            code = error.get("Code")
            if code:
                return str(code)
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if status:
                return str(status)
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _classify(exc: BaseException) -> tuple[str, str]:
    """``(kind, detail)`` of a failed storage call: kind is ``missing-bucket``,
    ``credentials``, ``denied``, ``endpoint`` or ``other``."""
    code = _error_code(exc)
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 6:
        chain.append(current)
        current = current.__cause__ or current.__context__
    names = {type(e).__name__ for e in chain}
    first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    detail = f"{code}: {first}" if code and code not in first else f"{type(exc).__name__}: {first}"
    if code in _MISSING_BUCKET_CODES:
        return "missing-bucket", detail
    if code in _CREDENTIAL_CODES or names & _CREDENTIAL_ERRORS:
        return "credentials", detail
    if code in _DENIED_CODES:
        return "denied", detail
    if names & _ENDPOINT_ERRORS or (code is None and isinstance(exc, (ConnectionError, TimeoutError))):
        return "endpoint", detail
    return "other", detail


class Backend:
    """How one kind of filesystem does what :class:`~distetl.storage.core.Storage` offers.

    Each method is the backend's side of the :class:`~distetl.storage.core.Storage` method
    of the same name (see there for the contract). What is written here goes through
    fsspec and serves every backend that does not say otherwise; committing
    (:meth:`write_atomic`, :meth:`open_atomic`) is each backend's own.

    Args:
        protocol: fsspec protocol, e.g. ``file``, ``s3``, ``memory``.
        options: The storage options (the :class:`~distetl.storage.core.Storage`'s own
            mapping, credentials included; never logged).
    """

    def __init__(self, protocol: str, options: dict[str, Any]):
        self.protocol = protocol
        self.options = options
        self._fs: fsspec.AbstractFileSystem | None = None

    # -- the filesystem --------------------------------------------------------------

    def _fs_options(self, probe: bool = False) -> dict[str, Any]:
        """fsspec arguments: the storage options without distetl's own."""
        return {k: v for k, v in self.options.items() if k not in DISTETL_OPTIONS}

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem (created on first use, in the process that uses it)."""
        if self._fs is None:
            self._fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, **self._fs_options())
        return self._fs

    @property
    def endpoint(self) -> str | None:
        """``endpoint_url`` option, else ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``."""
        return (
            self.options.get("endpoint_url")
            or (self.options.get("client_kwargs") or {}).get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )

    # -- paths -------------------------------------------------------------------------

    def normalize(self, url: str) -> str:
        return url.rstrip("/")

    def strip(self, url: str) -> str:
        return fsspec.get_filesystem_class(self.protocol)._strip_protocol(url)

    def unstrip(self, path: str) -> str:
        return f"{self.protocol}://{path}"

    def describe(self) -> str:
        return f"{self.protocol}://"

    # -- reading -------------------------------------------------------------------------

    def glob_table(self, pattern: str) -> Any:
        """The files matching a glob as an Arrow table (``path``, ``stamp``) sorted by path."""
        import pyarrow as pa
        import pyarrow.compute as pc

        try:
            found = self._glob(pattern)
        except FileNotFoundError:
            found = ([], [])
        except Exception as exc:  # noqa: BLE001 - surface any backend error plainly
            raise self._access_error(pattern, exc, role="source") from None
        table = pa.table({"path": pa.array(found[0], type=pa.string()), "stamp": pa.array(found[1], type=pa.string())})
        del found
        return table.take(pc.sort_indices(table, sort_keys=[("path", "ascending")])) if table.num_rows else table

    def _glob(self, pattern: str) -> tuple[list[str], list[str]]:
        """URLs and stamps of the files matching a glob, through fsspec's glob (one
        listing on object stores)."""
        detail = self.fs.glob(self.strip(pattern), detail=True)
        return ([self.unstrip(p) for p, info in detail.items() if info.get("type") != "directory"],
                [stamp_of(info) for info in detail.values() if info.get("type") != "directory"])

    def list_stamps(self, root: str) -> dict[str, str]:
        try:
            found = self.fs.find(self.strip(root), detail=True)
        except FileNotFoundError:
            return {}
        except Exception as exc:  # noqa: BLE001
            raise self._access_error(root, exc) from None
        return {self.unstrip(p): stamp_of(info) for p, info in found.items()}

    def list_table(self, root: str, keep_stamps: bool = False) -> "Listing":
        from distetl.storage.listing import Listing

        return Listing.from_dict(self.list_stamps(root))

    def exists(self, url: str) -> bool:
        return self.fs.exists(self.strip(url))

    def open(self, url: str, mode: str = "rb", **kwargs: Any) -> Any:
        return self.fs.open(self.strip(url), mode, **kwargs)

    def read_bytes(self, url: str) -> bytes | None:
        try:
            return self.fs.cat_file(self.strip(url))
        except FileNotFoundError:
            return None

    def mtime(self, url: str) -> float | None:
        try:
            info = self.fs.info(self.strip(url))
        except FileNotFoundError:
            return None
        modified = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
        if modified is None:
            return None
        return modified.timestamp() if hasattr(modified, "timestamp") else float(modified)

    # -- plan-time checks ------------------------------------------------------------------

    def check_root(self, root: str, role: str = "output") -> None:
        """Nothing to check here (local files and S3 check theirs)."""

    def _access_error(self, url: str, exc: BaseException, role: str = "output") -> StorageError:
        """A StorageError for a failed S3 call, saying which of bucket, credentials,
        permission or endpoint is wrong, with every known secret scrubbed."""
        kind, detail = _classify(exc)
        detail = self._scrub(detail)
        bucket = self.strip(url).split("/", 1)[0]
        where = self.describe()
        url_flag = "--output URL" if role == "output" else "source pattern"
        if kind == "missing-bucket":
            return StorageError(
                f"an existing bucket {bucket!r} for the {role} {url!r} on {where}",
                f"no such bucket ({detail})",
                f"create the bucket (aws s3 mb s3://{bucket}) or fix the {url_flag}; check "
                "AWS_ENDPOINT_URL / --storage-option endpoint_url=… points at the right server",
            )
        if kind == "credentials":
            return StorageError(
                f"credentials accepted by {where} for bucket {bucket!r}",
                f"rejected credentials ({detail})",
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass "
                "--storage-option key=… --storage-option secret=… (storage_options={'key': …, "
                "'secret': …} in Python) with a valid pair for this endpoint",
            )
        if kind == "denied":
            return StorageError(
                f"permission to list and write bucket {bucket!r} on {where}",
                f"access denied ({detail})",
                f"grant s3:ListBucket, s3:GetObject and s3:PutObject on {bucket} to these "
                "credentials, or use credentials that have them",
            )
        if kind == "endpoint":
            return StorageError(
                f"an S3 server answering at {where}",
                f"no connection ({detail})",
                "start the server or fix the endpoint: AWS_ENDPOINT_URL, or "
                "--storage-option endpoint_url=http://HOST:PORT (storage_options="
                "{'endpoint_url': …} in Python); unset it to use AWS",
            )
        return StorageError(
            f"{url!r} usable as {role} on {where}",
            detail,
            "check the endpoint (AWS_ENDPOINT_URL or --storage-option endpoint_url=…), "
            "the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and "
            f"that bucket {bucket!r} exists",
        )

    def _scrub(self, text: str) -> str:
        for secret in _secret_values(self.options) + _env_secrets():
            text = text.replace(secret, "***")
        return text

    # -- committing ----------------------------------------------------------------------

    def write_atomic(self, url: str, data: bytes, *, create_only: bool = False) -> bool:
        raise NotImplementedError

    def open_atomic(self, url: str, *, create_only: bool = False) -> "AtomicSink":
        raise NotImplementedError

    @property
    def creates_exclusively(self) -> bool:
        return False

    def write_new(self, url: str, data: bytes) -> bool:
        """Create-only where the backend can (:attr:`creates_exclusively`), else an
        existence check, then a write."""
        if self.creates_exclusively:
            return self.write_atomic(url, data, create_only=True)
        if self.exists(url):
            return False
        self.write_atomic(url, data)
        return True

    def delete(self, url: str) -> bool:
        try:
            self.fs.rm_file(self.strip(url))
        except FileNotFoundError:
            return False
        return True


class SinkAborted(OSError):
    """A write to, or the commit of, a sink that was aborted (its chunk failed, timed out
    or was stopped)."""


class AtomicSink:
    """A file written piece by piece that appears at its target only on :meth:`commit`.

    A binary, write-only file object (``write``, ``tell``, ``flush``), e.g. for
    ``pyarrow.parquet.ParquetWriter`` (which does not close a file it was handed).
    Made by :meth:`Storage.open_atomic`. As a context manager it aborts on exit unless
    committed.

    :meth:`abort` may be called from another thread while a write is in progress (a
    chunk past its time limit): it removes what was written without waiting, that write
    or the next one raises :class:`SinkAborted` and cleans up again, and the sink can no
    longer be committed.

    Attributes:
        url: The target.
        size: Bytes written so far.
    """

    closed = False

    def __init__(self, url: str):
        self.url = url
        self.size = 0
        self._io = threading.Lock()      # held while writing or committing
        self._guard = threading.Lock()   # guards _state
        self._state = "open"             # open -> committing -> committed | aborted

    # -- the file protocol ---------------------------------------------------------------

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """Nothing: a sink ends with :meth:`commit` or :meth:`abort`."""

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        with self._io:
            try:
                self._check()
                self._write(view)
                self.size += view.nbytes
                self._check()  # aborted from another thread during the write
            except SinkAborted:
                if self._state == "aborted":
                    self._cleanup(holding_io=True)
                raise
        return view.nbytes

    def _check(self) -> None:
        if self._state == "aborted":
            raise SinkAborted(f"the write to {self.url} was aborted")
        if self._state == "committed":
            raise SinkAborted(f"{self.url} is already committed")

    # -- the end -------------------------------------------------------------------------

    @property
    def aborted(self) -> bool:
        """Whether the sink was aborted (nothing of it remains)."""
        return self._state == "aborted"

    def commit(self) -> bool:
        """Make the written bytes the file at :attr:`url`, all at once.

        Returns:
            True if committed; False if a create-only commit found an object there
            (another writer won; what was written is discarded).

        Raises:
            SinkAborted: If the sink was aborted.
            OSError, StorageError: If the commit failed (nothing was committed, what was
                written is discarded).
        """
        with self._io:
            with self._guard:
                if self._state != "open":
                    raise SinkAborted(f"the write to {self.url} was aborted; nothing was committed")
                self._state = "committing"
            try:
                committed = self._commit()
            except BaseException:
                with self._guard:
                    self._state = "aborted"
                self._cleanup(holding_io=True)
                raise
            with self._guard:
                self._state = "committed" if committed else "aborted"
            if not committed:
                self._cleanup(holding_io=True)
            return committed

    def abort(self) -> None:
        """Discard everything written; idempotent, a no-op once committed or committing.
        Safe to call from another thread than the writer's, and never waits for it."""
        with self._guard:
            if self._state != "open":
                return
            self._state = "aborted"
        if self._io.acquire(blocking=False):
            try:
                self._cleanup(holding_io=True)
            finally:
                self._io.release()
        else:  # a write is in progress in another thread: it cleans up after itself too
            self._cleanup(holding_io=False)

    def __enter__(self) -> "AtomicSink":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.abort()

    # -- per backend -----------------------------------------------------------------------

    def _write(self, view: memoryview) -> None:
        raise NotImplementedError

    def _commit(self) -> bool:
        raise NotImplementedError

    def _cleanup(self, holding_io: bool) -> None:
        """Remove what was written (idempotent). ``holding_io``: no write can be in
        progress, so local resources (handles, buffers) may be released too."""
        raise NotImplementedError

