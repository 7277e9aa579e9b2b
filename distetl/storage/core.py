"""Filesystems: listing committed targets, and committing bytes atomically.

Everything goes through fsspec. Local paths are made absolute so workers in another
directory see the same files. ``s3://`` uses s3fs with the standard AWS configuration
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``/``AWS_DEFAULT_REGION``) plus
explicit storage options, which take precedence. Each process reads that environment for
itself: the driver and every worker; explicit storage options travel with the tasks.

On S3:

* A commit is one ``PutObject`` of the finished bytes, create-only (``If-None-Match: *``)
  unless the caller overwrites on purpose: a failed write leaves nothing at the key, and
  of two concurrent writers exactly one wins.
* A file written piece by piece (:meth:`Storage.open_atomic`, a chunk bigger than memory)
  is a multipart upload completed only after its last part, create-only the same way
  (``If-None-Match: *`` on ``CompleteMultipartUpload``), and aborted on any failure.
* Listings are never cached, so a rerun sees what workers wrote.
* Plan-time checks use a client with short timeouts and one retry, so a wrong endpoint
  is an error within seconds rather than after minutes of retries.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Optional
from urllib.parse import urlsplit, urlunsplit

import fsspec

from distetl.errors import StorageError

if TYPE_CHECKING:
    from distetl.storage.listing import Listing

__all__ = ["Storage", "AtomicSink", "SinkAborted", "parse_storage_options", "redact", "stamp_of", "DISTETL_OPTIONS"]

_SECRET_WORDS = ("secret", "token", "password", "key", "credential")
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECURITY_TOKEN")
_S3 = ("s3", "s3a")

#: Storage options distetl reads itself and never passes to fsspec.
#: ``create_only`` (default True): commit chunks to S3 with ``If-None-Match: *``.
DISTETL_OPTIONS = ("create_only",)

#: Largest object one S3 ``PutObject`` may carry; bigger commits go multipart.
SINGLE_PUT_LIMIT = 5 * 2**30

#: Size of the parts of a multipart upload (S3's minimum is 5 MiB, but for the last
#: part). The part size doubles every :data:`PARTS_PER_SIZE` parts, so S3's limit of
#: 10,000 parts is reached only past 80 TiB.
MULTIPART_PART_SIZE = 8 * 2**20
PARTS_PER_SIZE = 1000

#: botocore settings of the plan-time probe: fail within seconds, not minutes.
PROBE_CONFIG = {"connect_timeout": 5, "read_timeout": 20, "retries": {"max_attempts": 2, "mode": "standard"}}

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


def _protocol(url: str) -> str:
    if "://" in url:
        return url.split("://", 1)[0]
    return "file"


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


class Storage:
    """One filesystem, identified by protocol and options. Picklable; cheap to rebuild.

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
        self._fs: fsspec.AbstractFileSystem | None = None

    @classmethod
    def for_url(cls, url: str, options: Mapping[str, Any] | None = None) -> "Storage":
        """The storage for a URL or local path."""
        return cls(_protocol(url), options)

    def __getstate__(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.protocol = state["protocol"]
        self.options = state["options"]
        self._fs = None

    def __repr__(self) -> str:
        return f"Storage({self.protocol!r}, {redact(self.options)!r})"

    @property
    def is_local(self) -> bool:
        """Whether this is the local filesystem."""
        return self.protocol in ("file", "local")

    @property
    def is_s3(self) -> bool:
        """Whether this is S3 (``s3://`` or ``s3a://``) through s3fs."""
        return self.protocol in _S3

    # -- the filesystem --------------------------------------------------------------

    def _fs_options(self, probe: bool = False) -> dict[str, Any]:
        """fsspec arguments: the storage options without distetl's own, plus, for S3, no
        listings cache and the endpoint and profile from the environment."""
        options = {k: v for k, v in self.options.items() if k not in DISTETL_OPTIONS}
        if not self.is_s3:
            return options
        options["use_listings_cache"] = False
        endpoint = self.endpoint
        if endpoint and "endpoint_url" not in options and "endpoint_url" not in options.get("client_kwargs", {}):
            options["endpoint_url"] = endpoint
        if os.environ.get("AWS_PROFILE") and "profile" not in options and not (
            options.get("key") or options.get("secret") or options.get("session")
        ):
            options["profile"] = os.environ["AWS_PROFILE"]
        if probe:
            config = dict(options.get("config_kwargs") or {})
            for name, value in PROBE_CONFIG.items():
                config.setdefault(name, value)
            options["config_kwargs"] = config
        return options

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem (created on first use, in the process that uses it)."""
        if self._fs is None:
            if self.is_local:
                self._fs = fsspec.filesystem("file")
            else:
                self._fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, **self._fs_options())
        return self._fs

    @property
    def endpoint(self) -> str | None:
        """The S3 endpoint in use: ``endpoint_url`` option, else ``AWS_ENDPOINT_URL_S3``
        or ``AWS_ENDPOINT_URL``; None means AWS's own endpoints."""
        return (
            self.options.get("endpoint_url")
            or (self.options.get("client_kwargs") or {}).get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )

    # -- paths -------------------------------------------------------------------------

    def normalize(self, url: str) -> str:
        """A URL as this storage's paths are compared: absolute for local files."""
        if self.is_local:
            return os.path.abspath(url.split("://", 1)[1] if url.startswith("file://") else url)
        return url.rstrip("/")

    def strip(self, url: str) -> str:
        """The filesystem-internal path of a URL (no protocol)."""
        if self.is_local:
            return self.normalize(url)
        return fsspec.get_filesystem_class(self.protocol)._strip_protocol(url)

    def unstrip(self, path: str) -> str:
        """The URL of a filesystem-internal path."""
        if self.is_local:
            return path
        return f"{self.protocol}://{path}"

    def describe(self) -> str:
        """Where this storage points, without credentials: for error messages."""
        if not self.is_s3:
            return f"{self.protocol}://"
        endpoint = self.endpoint
        if endpoint:
            return f"endpoint {_hide_userinfo(str(endpoint))}"
        return "AWS S3 (default endpoint; set AWS_ENDPOINT_URL for another server)"

    # -- reading -------------------------------------------------------------------------

    def glob(self, pattern: str) -> list[str]:
        """URLs of the files matching a glob, sorted; one listing on object stores.

        Raises:
            StorageError: If the bucket is missing or cannot be read (checked first, with
                short timeouts).
        """
        return sorted(self.glob_stamps(pattern))

    def glob_stamps(self, pattern: str) -> dict[str, str]:
        """The files matching a glob, each with its stamp (see :func:`stamp_of`); one
        listing on object stores.

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
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.is_s3:
            self.check_root(pattern.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0], role="source")
        try:
            found = _scandir_glob(self.fs, self.strip(pattern)) if self.is_local else None
            if found is None:
                detail = self.fs.glob(self.strip(pattern), detail=True)
                found = ([self.unstrip(p) for p, info in detail.items() if info.get("type") != "directory"],
                         [stamp_of(info) for info in detail.values() if info.get("type") != "directory"])
                del detail
        except FileNotFoundError:
            found = ([], [])
        except Exception as exc:  # noqa: BLE001 - surface any backend error plainly
            raise self._access_error(pattern, exc, role="source") from None
        table = pa.table({"path": pa.array(found[0], type=pa.string()), "stamp": pa.array(found[1], type=pa.string())})
        del found
        return table.take(pc.sort_indices(table, sort_keys=[("path", "ascending")])) if table.num_rows else table

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
        if self.is_local:
            return _local_stamps(self.strip(root))
        try:
            found = self.fs.find(self.strip(root), detail=True)
        except FileNotFoundError:
            return {}
        except Exception as exc:  # noqa: BLE001
            raise self._access_error(root, exc) from None
        return {self.unstrip(p): stamp_of(info) for p, info in found.items()}

    def list_table(self, root: str, keep_stamps: bool = False) -> "Listing":
        """Every file under ``root`` (recursively) with its stamp, as columns (see
        :class:`distetl.storage.listing.Listing`): what :meth:`list_stamps` returns, without a
        Python object per file. Local paths and stamps are kept as hash keys only
        (enough to look paths up and compare stamps; ``keep_stamps`` keeps the stamps'
        text too); object-store listings keep their paths.

        Raises:
            StorageError: If the listing fails (credentials, endpoint, permissions).
        """
        from distetl.storage.listing import Listing

        if not self.is_local:
            return Listing.from_dict(self.list_stamps(root))
        return _local_listing(self.strip(root), keep_stamps)

    def exists(self, url: str) -> bool:
        """Whether one file exists (used on workers as a guard, not for planning).

        On S3 this is one ``HeadObject`` (s3fs's ``exists`` adds a listing to look for a
        "directory" when the key is missing).
        """
        if self.is_s3:
            bucket, _, key = self.strip(url).partition("/")
            try:
                self.fs.call_s3("head_object", Bucket=bucket, Key=key)
            except FileNotFoundError:
                return False
            return True
        return self.fs.exists(self.strip(url))

    def open(self, url: str, mode: str = "rb", **kwargs: Any) -> Any:
        """Open a file for reading (sources). Never use this to write a target: see
        :meth:`write_atomic`."""
        return self.fs.open(self.strip(url), mode, **kwargs)

    def read_bytes(self, url: str) -> bytes | None:
        """The whole content of one small file (a lease, a manifest); None if it is missing.

        On S3 this is one ``GetObject`` (s3fs would otherwise send a ``HeadObject`` first,
        to split large reads).
        """
        try:
            if self.is_local:
                with open(self.normalize(url), "rb") as handle:
                    return handle.read()
            if self.is_s3:
                try:
                    return self.fs.cat_file(self.strip(url), max_concurrency=1)
                except TypeError:  # an s3fs without concurrent reads: one GET anyway
                    pass
            return self.fs.cat_file(self.strip(url))
        except FileNotFoundError:
            return None

    def mtime(self, url: str) -> float | None:
        """When one file was last modified (seconds since the epoch); None if it is missing.

        Local: one ``stat``; object stores: one ``HeadObject`` (its ``LastModified``).
        """
        try:
            if self.is_local:
                return os.stat(self.normalize(url)).st_mtime
            info = self.fs.info(self.strip(url))
        except FileNotFoundError:
            return None
        modified = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
        if modified is None:
            return None
        return modified.timestamp() if hasattr(modified, "timestamp") else float(modified)

    # -- plan-time checks ------------------------------------------------------------------

    def check_root(self, root: str, role: str = "output") -> None:
        """Fail fast if ``root`` cannot be used: missing bucket, bad credentials, no endpoint.

        On S3 this lists at most one key under ``root`` with a client that gives up within
        seconds (:data:`PROBE_CONFIG`): the same permission the skip-by-listing needs.

        Args:
            root: The output root or a source prefix.
            role: ``output`` or ``source``, for the message.

        Raises:
            StorageError: Naming the bucket or endpoint and the fix.
        """
        if self.is_local:
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
            return
        if not self.is_s3:
            return
        bucket, _, prefix = self.strip(root).partition("/")
        if not bucket:
            raise StorageError(
                f"an {role} URL with a bucket, like s3://bucket/prefix", repr(root),
                "name the bucket in the URL",
            )
        probe = fsspec.filesystem(self.protocol, skip_instance_cache=True, **self._fs_options(probe=True))
        probe.retries = 1  # s3fs's own retry loop, on top of botocore's (bounded above)
        try:
            probe.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
        except Exception as exc:  # noqa: BLE001
            raise self._access_error(root, exc, role=role) from None

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
        if self.is_local:
            path = self.normalize(url)
            with _local_temp(path, data) as tmp:
                os.replace(tmp, path)
            return True
        path = self.strip(url)
        if self.is_s3:
            exclusive = create_only and self.options.get("create_only", True) is not False
            return self._put_s3(url, path, data, exclusive)
        parent = posixpath.dirname(path)
        if parent and self.protocol not in ("gs", "gcs", "az", "abfs", "abfss"):
            self.fs.makedirs(parent, exist_ok=True)
        self.fs.pipe_file(path, data)
        return True

    def open_atomic(self, url: str, *, create_only: bool = False) -> "AtomicSink":
        """A file to write piece by piece that appears at ``url`` only on ``commit()``.

        For chunks bigger than memory: the caller writes (e.g. with
        ``pyarrow.parquet.ParquetWriter``), then calls :meth:`AtomicSink.commit`, or
        :meth:`AtomicSink.abort` on any failure (also from another thread, e.g. past a
        time limit). Nothing is ever written at ``url`` before the commit.

        Local: a hidden temp file beside the target (``.{name}.{32 hex}.tmp``, the name
        :mod:`distetl.state.leftovers` removes after a kill), fsync, ``os.replace``, as
        :meth:`write_atomic` (``create_only`` is not applied: the last writer wins).
        S3: a multipart upload of :data:`MULTIPART_PART_SIZE` parts (one part buffered at
        a time), completed only by the commit, create-only (``If-None-Match: *`` on
        ``CompleteMultipartUpload``) as :meth:`write_atomic`'s PUT, and aborted on
        failure; a file smaller than one part is committed with one ``PutObject``.
        Other object stores: the bytes are kept in memory and committed with
        :meth:`write_atomic`.

        Args:
            url: Final location.
            create_only: Never replace an existing object (S3).
        """
        if self.is_local:
            return _LocalSink(self.normalize(url))
        if self.is_s3:
            exclusive = create_only and self.options.get("create_only", True) is not False
            return _S3MultipartSink(self, url, exclusive)
        return _BufferedSink(self, url, create_only)

    @property
    def creates_exclusively(self) -> bool:
        """Whether :meth:`write_new` is atomic create-if-absent (local files; S3 unless the
        ``create_only`` storage option is False). Otherwise it checks, then writes."""
        return self.is_local or (self.is_s3 and self.options.get("create_only", True) is not False)

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
        if not self.is_local:
            if self.creates_exclusively:
                return self.write_atomic(url, data, create_only=True)
            if self.exists(url):
                return False
            self.write_atomic(url, data)
            return True
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
        """Remove one file. Returns False if it was already gone (local files; an object
        store's delete of a missing key succeeds, so there it returns True)."""
        try:
            if self.is_local:
                os.unlink(self.normalize(url))
            else:
                self.fs.rm_file(self.strip(url))
        except FileNotFoundError:
            return False
        return True

    def _put_s3(self, url: str, path: str, data: bytes, exclusive: bool) -> bool:
        if len(data) >= SINGLE_PUT_LIMIT:  # too big for one PUT: a create-only multipart upload
            sink = _S3MultipartSink(self, url, exclusive)
            with sink:
                sink.write(data)
                return sink.commit()
        mode = "create" if exclusive else "overwrite"
        for attempt in range(4):
            try:
                # chunksize: s3fs sends one PutObject for anything under 2 x chunksize.
                self.fs.pipe_file(path, data, mode=mode, chunksize=SINGLE_PUT_LIMIT)
                return True
            except FileExistsError:
                return False
            except OSError as exc:
                code = _error_code(exc)
                if exclusive and code in ("PreconditionFailed", "412"):
                    return False
                if exclusive and code == "ConditionalRequestConflict" and attempt < 3:
                    # A concurrent conditional write to the key is in flight; AWS asks
                    # for a retry, which then sees the winner's object (412).
                    time.sleep(0.2 * (attempt + 1))
                    continue
                if exclusive and code in ("NotImplemented", "501"):
                    raise StorageError(
                        f"an S3 server supporting conditional writes (If-None-Match) at {self.describe()}",
                        f"{code} for {url!r}",
                        "upgrade the server, or pass --storage-option create_only=false to "
                        "commit with plain PUTs (still atomic; concurrent writers: last wins)",
                    ) from None
                raise
        return False  # pragma: no cover - the loop always returns or raises


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


class _S3MultipartSink(AtomicSink):
    """A multipart upload, one part buffered at a time, completed only by the commit.

    ``CreateMultipartUpload`` is sent when the first part is full; a file smaller than
    one part is committed with one (create-only) ``PutObject`` instead. The commit
    uploads the last part, then ``CompleteMultipartUpload`` (with ``If-None-Match: *``
    when create-only). Any failure, and :meth:`abort`, sends ``AbortMultipartUpload``.
    """

    def __init__(self, storage: Storage, url: str, exclusive: bool, part_size: Optional[int] = None):
        super().__init__(url)
        self._storage = storage
        self._path = storage.strip(url)
        self._bucket, _, self._key = self._path.partition("/")
        self._exclusive = exclusive
        self._part_size = part_size or MULTIPART_PART_SIZE
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._upload_id: Optional[str] = None

    @property
    def parts(self) -> int:
        """Parts uploaded so far."""
        return len(self._parts)

    def _call(self, method: str, **kwargs: Any) -> Any:
        return self._storage.fs.call_s3(method, Bucket=self._bucket, Key=self._key, **kwargs)

    def _target(self) -> int:
        return self._part_size * 2 ** (len(self._parts) // PARTS_PER_SIZE)

    def _write(self, view: memoryview) -> None:
        offset, total = 0, view.nbytes
        if self._buffer:
            take = min(total, self._target() - len(self._buffer))
            self._buffer += view[:take]
            offset = take
            if len(self._buffer) >= self._target():
                self._upload(self._buffer)
                self._buffer = bytearray()
        while total - offset >= self._target():
            size = self._target()
            self._upload(view[offset:offset + size])
            offset += size
        if offset < total:
            self._buffer += view[offset:]

    def _upload(self, body: Any) -> None:
        self._check()
        if self._upload_id is None:
            self._upload_id = self._call("create_multipart_upload")["UploadId"]
        number = len(self._parts) + 1
        out = self._call("upload_part", UploadId=self._upload_id, PartNumber=number, Body=bytes(body))
        self._parts.append({"PartNumber": number, "ETag": out["ETag"]})

    def _commit(self) -> bool:
        if self._upload_id is None:  # smaller than one part: one PutObject, as write_atomic
            data, self._buffer = bytes(self._buffer), bytearray()
            return self._storage._put_s3(self.url, self._path, data, self._exclusive)
        if self._buffer:
            self._upload(self._buffer)
            self._buffer = bytearray()
        match = {"IfNoneMatch": "*"} if self._exclusive else {}
        for attempt in range(4):
            try:
                self._call("complete_multipart_upload", UploadId=self._upload_id,
                           MultipartUpload={"Parts": self._parts}, **match)
                return True
            except FileExistsError:
                return False
            except OSError as exc:
                code = _error_code(exc)
                if self._exclusive and code in ("PreconditionFailed", "412"):
                    return False
                if self._exclusive and code == "ConditionalRequestConflict" and attempt < 3:
                    # A concurrent conditional write to the key is in flight: retry, which
                    # then sees the winner's object (412).
                    time.sleep(0.2 * (attempt + 1))
                    continue
                if attempt and self._exclusive and (code == "NoSuchUpload" or isinstance(exc, FileNotFoundError)):
                    # S3 may end an upload that lost a conflict: then the key has the winner.
                    if self._storage.exists(self.url):
                        return False
                if self._exclusive and code in ("NotImplemented", "501"):
                    raise StorageError(
                        f"an S3 server supporting conditional writes (If-None-Match on "
                        f"CompleteMultipartUpload) at {self._storage.describe()}",
                        f"{code} for {self.url!r}",
                        "upgrade the server, or pass --storage-option create_only=false to "
                        "commit with plain uploads (still atomic; concurrent writers: last wins)",
                    ) from None
                raise
        return False  # pragma: no cover - the loop always returns or raises

    def _cleanup(self, holding_io: bool) -> None:
        if holding_io:
            self._buffer = bytearray()
        upload, self._upload_id = self._upload_id, None
        if upload is None:
            return
        try:
            self._storage.fs.call_s3("abort_multipart_upload", Bucket=self._bucket, Key=self._key, UploadId=upload)
        except FileNotFoundError:  # already gone
            pass
        except Exception:  # noqa: BLE001 - keep the error that brought us here
            self._upload_id = upload  # a later cleanup tries again


class _BufferedSink(AtomicSink):
    """Other object stores: the bytes in memory, committed with one ``write_atomic``."""

    def __init__(self, storage: Storage, url: str, create_only: bool):
        super().__init__(url)
        self._storage = storage
        self._create_only = create_only
        self._buffer = bytearray()

    def _write(self, view: memoryview) -> None:
        self._buffer += view

    def _commit(self) -> bool:
        data, self._buffer = bytes(self._buffer), bytearray()
        return self._storage.write_atomic(self.url, data, create_only=self._create_only)

    def _cleanup(self, holding_io: bool) -> None:
        if holding_io:
            self._buffer = bytearray()


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


def stamp_of(info: Mapping[str, Any]) -> str:
    """A file's stamp from its listing entry: size plus ETag (object stores) or
    modification time (files). A rewritten or replaced file gets another stamp."""
    size = info.get("size")
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or info.get("updated")
    return f"{size}:{tag}"


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
