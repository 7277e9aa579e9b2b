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
* Listings are never cached, so a rerun sees what workers wrote.
* Plan-time checks use a client with short timeouts and one retry, so a wrong endpoint
  is an error within seconds rather than after minutes of retries.
"""

from __future__ import annotations

import os
import posixpath
import time
import uuid
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

import fsspec

from distetl.errors import StorageError

__all__ = ["Storage", "parse_storage_options", "redact", "stamp_of", "DISTETL_OPTIONS"]

_SECRET_WORDS = ("secret", "token", "password", "key", "credential")
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECURITY_TOKEN")
_S3 = ("s3", "s3a")

#: Storage options distetl reads itself and never passes to fsspec.
#: ``create_only`` (default True): commit chunks to S3 with ``If-None-Match: *``.
DISTETL_OPTIONS = ("create_only",)

#: Largest object one S3 ``PutObject`` may carry; bigger commits go multipart.
SINGLE_PUT_LIMIT = 5 * 2**30

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
        if self.is_s3:
            self.check_root(pattern.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0], role="source")
        try:
            found = self.fs.glob(self.strip(pattern), detail=True)
        except FileNotFoundError:
            return {}
        except Exception as exc:  # noqa: BLE001 - surface any backend error plainly
            raise self._access_error(pattern, exc, role="source") from None
        return {self.unstrip(p): stamp_of(info) for p, info in found.items() if info.get("type") != "directory"}

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
        try:
            found = self.fs.find(self.strip(root), detail=True)
        except FileNotFoundError:
            return {}
        except Exception as exc:  # noqa: BLE001
            raise self._access_error(root, exc) from None
        return {self.unstrip(p): stamp_of(info) for p, info in found.items()}

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
        False. Objects of 5 GiB or more go multipart (still invisible until complete, but
        not create-only).
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
            directory = os.path.dirname(path)
            os.makedirs(directory, exist_ok=True)
            tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
            try:
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
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
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
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
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

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
        if len(data) >= SINGLE_PUT_LIMIT:
            self.fs.pipe_file(path, data)
            return True
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
