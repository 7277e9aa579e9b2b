"""S3 through s3fs: create-only commits, multipart uploads, fast plan-time checks.

Credentials and endpoint come from the standard AWS configuration
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, ``AWS_REGION``/``AWS_DEFAULT_REGION``) plus
explicit storage options, which take precedence. Each process reads that environment for
itself: the driver and every worker; explicit storage options travel with the tasks.

* A commit is one ``PutObject`` of the finished bytes, create-only (``If-None-Match: *``)
  unless the caller overwrites on purpose: a failed write leaves nothing at the key, and
  of two concurrent writers exactly one wins.
* A file written piece by piece (:meth:`Storage.open_atomic
  <distetl.storage.core.Storage.open_atomic>`, a chunk bigger than memory) is a multipart
  upload completed only after its last part, create-only the same way (``If-None-Match: *``
  on ``CompleteMultipartUpload``), and aborted on any failure.
* Listings are never cached, so a rerun sees what workers wrote.
* Plan-time checks use a client with short timeouts and one retry, so a wrong endpoint
  is an error within seconds rather than after minutes of retries.
* Chunk reads and writes use botocore's ``standard`` retries (exponential backoff with
  jitter) and bounded timeouts (:data:`CLIENT_CONFIG`) unless the storage options'
  ``config_kwargs`` give their own. The requests that failed transiently (5xx, throttled,
  a connection reset, a timeout) are counted (:attr:`S3Backend.retries`): the run's
  report shows them per chunk and in all.
* A request may succeed on the server and its answer be lost: the retry of a create-only
  commit (by botocore, s3fs, or aiohttp, which resends a PUT once, silently, when a
  kept-alive connection drops) then meets its own object (412). Each create-only commit
  therefore carries a token of its own in the object's metadata
  (``x-amz-meta-distetl-commit``); on a 412 one ``HeadObject`` tells whether the object
  is this commit's (committed: True) or another writer's (False), even when both wrote
  the same bytes. A retried ``CreateMultipartUpload`` that created an upload whose
  answer was lost has that upload aborted; an abort is itself retried.
"""

from __future__ import annotations

import copy
import os
import threading
import time
import uuid
from typing import Any, Optional

import fsspec

from distetl.errors import StorageError
from distetl.storage.base import AtomicSink, Backend, _error_code, _hide_userinfo

__all__ = ["S3Backend", "MULTIPART_PART_SIZE", "SINGLE_PUT_LIMIT", "CLIENT_CONFIG", "RetryCounter"]

#: Largest object one S3 ``PutObject`` may carry; bigger commits go multipart.
SINGLE_PUT_LIMIT = 5 * 2**30

#: Size of the parts of a multipart upload (S3's minimum is 5 MiB, but for the last
#: part). The part size doubles every :data:`PARTS_PER_SIZE` parts, so S3's limit of
#: 10,000 parts is reached only past 80 TiB.
MULTIPART_PART_SIZE = 8 * 2**20
PARTS_PER_SIZE = 1000

#: botocore settings of the plan-time probe: fail within seconds, not minutes.
PROBE_CONFIG = {"connect_timeout": 5, "read_timeout": 20, "retries": {"max_attempts": 2, "mode": "standard"}}

#: botocore settings of every other request (each key unless ``config_kwargs`` has it):
#: up to 8 tries of a request that failed transiently (5xx, throttling, a connection
#: error, a timeout), with exponential backoff and jitter (botocore's ``standard`` mode;
#: s3fs adds its own few tries for some errors on top).
CLIENT_CONFIG = {"connect_timeout": 10, "read_timeout": 30, "retries": {"max_attempts": 8, "mode": "standard"}}

#: Error codes botocore (standard mode) retries besides 5xx answers.
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "RequestLimitExceeded", "RequestThrottled", "RequestTimeout",
    "RequestTimeoutException", "PriorRequestNotComplete", "BandwidthLimitExceeded",
})

#: The object metadata key of a create-only commit's token (``x-amz-meta-distetl-commit``).
COMMIT_TOKEN = "distetl-commit"

#: Tries of the ``HeadObject`` that tells a create-only commit's own object (an answer
#: without its headers is asked again).
HEAD_TRIES = 4

#: Tries of an ``AbortMultipartUpload`` (each itself retried by botocore) and the pause
#: before the first retry (doubling).
ABORT_TRIES = 4
ABORT_PAUSE = 0.5


class RetryCounter:
    """botocore event handlers that count the requests that failed transiently.

    Called as the ``needs-retry`` handler (after each try of a request): an exception
    while sending or receiving the answer's head (connection reset or refused, a
    timeout), an answer of 500 or more, or a throttling/timeout error code. It never asks
    for a retry itself (botocore's own handler decides). :meth:`escaped`, the
    ``after-call-error`` handler, counts the failures that end a call without passing
    there and that s3fs tries again: an answer cut off while its body was read.

    Attributes:
        count: Such failures so far (each was tried again unless the call gave up).
    """

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, response: Any = None, caught_exception: Any = None, **kwargs: Any) -> None:
        if caught_exception is None:
            if not response:
                return None
            http, parsed = response
            code = (parsed or {}).get("Error", {}).get("Code") if isinstance(parsed, dict) else None
            if getattr(http, "status_code", 0) < 500 and code not in _TRANSIENT_CODES:
                return None
        self.add()
        return None

    def add(self) -> None:
        """Count one request that failed transiently (thread-safe)."""
        with self._lock:
            self.count += 1

    def escaped(self, exception: Any = None, **kwargs: Any) -> None:
        """``after-call-error`` handler: counts a call's exception that s3fs retries and
        that the ``needs-retry`` handler did not see (an error reading the answer's body)."""
        from botocore.exceptions import HTTPClientError
        from s3fs.core import S3_RETRYABLE_ERRORS

        if isinstance(exception, S3_RETRYABLE_ERRORS) and not isinstance(exception, HTTPClientError):
            self.add()
        return None


class S3Backend(Backend):
    """S3 (``s3://`` or ``s3a://``) through s3fs. Its storage options are s3fs arguments
    (``endpoint_url``, ``key``, ``secret``, ``token``, ``profile``, ``client_kwargs``, …)
    plus ``create_only``."""

    # -- the filesystem --------------------------------------------------------------

    def _fs_options(self, probe: bool = False) -> dict[str, Any]:
        """fsspec arguments: the storage options without distetl's own, no listings
        cache, and the endpoint and profile from the environment; with ``probe``, the
        short timeouts of :data:`PROBE_CONFIG`."""
        options = super()._fs_options()
        options["use_listings_cache"] = False
        endpoint = self.endpoint
        if endpoint and "endpoint_url" not in options and "endpoint_url" not in options.get("client_kwargs", {}):
            options["endpoint_url"] = endpoint
        if os.environ.get("AWS_PROFILE") and "profile" not in options and not (
            options.get("key") or options.get("secret") or options.get("session")
        ):
            options["profile"] = os.environ["AWS_PROFILE"]
        config = dict(options.get("config_kwargs") or {})
        for name, value in (PROBE_CONFIG if probe else CLIENT_CONFIG).items():
            # Copies: botocore writes into the retries dict it is given (total_max_attempts),
            # which must not reach the module's defaults or the caller's options.
            if isinstance(value, dict) and isinstance(config.get(name), dict):
                config[name] = {**copy.deepcopy(value), **config[name]}  # retries.max_attempts=12 keeps the mode
            elif name in config:
                config[name] = copy.deepcopy(config[name])
            else:
                config[name] = copy.deepcopy(value)
        options["config_kwargs"] = config
        return options

    @property
    def fs(self) -> Any:
        """The s3fs filesystem, its client connected with :attr:`retries` counting."""
        fs = Backend.fs.fget(self)
        client = fs.s3
        if getattr(self, "_counted", None) is not client:
            if getattr(self, "_counter", None) is None:
                self._counter = RetryCounter()
            client.meta.events.register("needs-retry.s3", self._counter)
            client.meta.events.register("after-call-error.s3", self._counter.escaped)
            self._counted = client
        return fs

    @property
    def retries(self) -> int:
        """Requests of this backend's client that failed transiently so far (see
        :class:`RetryCounter`)."""
        counter = getattr(self, "_counter", None)
        return counter.count if counter is not None else 0

    def describe(self) -> str:
        endpoint = self.endpoint
        if endpoint:
            return f"endpoint {_hide_userinfo(str(endpoint))}"
        return "AWS S3 (default endpoint; set AWS_ENDPOINT_URL for another server)"

    @property
    def _exclusive_allowed(self) -> bool:
        """Whether create-only commits are on (the ``create_only`` option is not False)."""
        return self.options.get("create_only", True) is not False

    # -- reading -------------------------------------------------------------------------

    def glob_table(self, pattern: str) -> Any:
        """The bucket is checked first (short timeouts), then one listing."""
        self.check_root(pattern.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0], role="source")
        return super().glob_table(pattern)

    def exists(self, url: str) -> bool:
        """One ``HeadObject`` (s3fs's ``exists`` adds a listing to look for a "directory"
        when the key is missing)."""
        bucket, _, key = self.strip(url).partition("/")
        try:
            self.fs.call_s3("head_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return False
        return True

    def read_bytes(self, url: str) -> bytes | None:
        """One ``GetObject`` (s3fs would otherwise send a ``HeadObject`` first, to split
        large reads)."""
        try:
            try:
                return self.fs.cat_file(self.strip(url), max_concurrency=1)
            except TypeError:  # an s3fs without concurrent reads: one GET anyway
                pass
            return self.fs.cat_file(self.strip(url))
        except FileNotFoundError:
            return None

    # -- plan-time checks ------------------------------------------------------------------

    def check_root(self, root: str, role: str = "output") -> None:
        """List at most one key under ``root`` with a client that gives up within seconds."""
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

    # -- committing ----------------------------------------------------------------------

    def write_atomic(self, url: str, data: bytes, *, create_only: bool = False) -> bool:
        """One ``PutObject``, create-only on request (multipart from 5 GiB)."""
        exclusive = create_only and self._exclusive_allowed
        return self._put(url, self.strip(url), data, exclusive)

    def open_atomic(self, url: str, *, create_only: bool = False) -> AtomicSink:
        return _S3MultipartSink(self, url, create_only and self._exclusive_allowed)

    @property
    def creates_exclusively(self) -> bool:
        return self._exclusive_allowed

    def _put(self, url: str, path: str, data: bytes, exclusive: bool) -> bool:
        if len(data) >= SINGLE_PUT_LIMIT:  # too big for one PUT: a create-only multipart upload
            sink = _S3MultipartSink(self, url, exclusive)
            with sink:
                sink.write(data)
                return sink.commit()
        mode = "create" if exclusive else "overwrite"
        token = uuid.uuid4().hex
        extra = {"Metadata": {COMMIT_TOKEN: token}} if exclusive else {}
        for attempt in range(4):
            try:
                # chunksize: s3fs sends one PutObject for anything under 2 x chunksize.
                self.fs.pipe_file(path, data, mode=mode, chunksize=SINGLE_PUT_LIMIT, **extra)
                return True
            except FileExistsError:
                return self.is_ours(url, token)  # a retried PUT whose first try landed: ours
            except OSError as exc:
                code = _error_code(exc)
                if exclusive and code in ("PreconditionFailed", "412"):
                    return self.is_ours(url, token)
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

    def is_ours(self, url: str, token: str) -> bool:
        """Whether the object at ``url`` is the one a create-only commit with ``token``
        made (one ``HeadObject``): after a 412, the commit's first try may have landed
        with its answer lost."""
        bucket, _, key = self.strip(url).partition("/")
        for _ in range(HEAD_TRIES):
            try:
                head = self.fs.call_s3("head_object", Bucket=bucket, Key=key)
            except FileNotFoundError:
                return False
            if head.get("ETag"):
                break
            # An answer cut off after its status line parses as a 200 without headers (no
            # ETag, no metadata): it says nothing of whose object this is. Ask again.
            counter = getattr(self, "_counter", None)
            if counter is not None:
                counter.add()
        return (head.get("Metadata") or {}).get(COMMIT_TOKEN) == token


class _S3MultipartSink(AtomicSink):
    """A multipart upload, one part buffered at a time, completed only by the commit.

    ``CreateMultipartUpload`` is sent when the first part is full; a file smaller than
    one part is committed with one (create-only) ``PutObject`` instead. The commit
    uploads the last part, then ``CompleteMultipartUpload`` (with ``If-None-Match: *``
    when create-only). Any failure, and :meth:`abort`, sends ``AbortMultipartUpload``.
    """

    def __init__(self, backend: S3Backend, url: str, exclusive: bool, part_size: Optional[int] = None):
        super().__init__(url)
        self._backend = backend
        self._path = backend.strip(url)
        self._bucket, _, self._key = self._path.partition("/")
        self._exclusive = exclusive
        self._part_size = part_size or MULTIPART_PART_SIZE
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._upload_id: Optional[str] = None
        self._token = uuid.uuid4().hex

    @property
    def parts(self) -> int:
        """Parts uploaded so far."""
        return len(self._parts)

    def _call(self, method: str, **kwargs: Any) -> Any:
        return self._backend.fs.call_s3(method, Bucket=self._bucket, Key=self._key, **kwargs)

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
            before, started = self._backend.retries, time.monotonic()
            extra = {"Metadata": {COMMIT_TOKEN: self._token}} if self._exclusive else {}
            self._upload_id = self._call("create_multipart_upload", **extra)["UploadId"]
            if self._backend.retries != before:  # a try whose answer was lost may have made one
                self._abort_strays(time.monotonic() - started)
        number = len(self._parts) + 1
        out = self._call("upload_part", UploadId=self._upload_id, PartNumber=number, Body=bytes(body))
        self._parts.append({"PartNumber": number, "ETag": out["ETag"]})

    def _abort_strays(self, seconds: float) -> None:
        """Abort the uploads of this key that a retried ``CreateMultipartUpload`` made
        before the one it returned (the answers of their requests were lost): those
        started at most ``seconds`` (plus a margin) before ours, in the server's clock.
        Best effort: a failure here leaves them to the bucket's lifecycle rule."""
        try:
            listed = self._backend.fs.call_s3("list_multipart_uploads", Bucket=self._bucket, Prefix=self._key)
            uploads = [u for u in listed.get("Uploads", []) if u.get("Key") == self._key]
            ours = next((u["Initiated"] for u in uploads if u.get("UploadId") == self._upload_id), None)
            if ours is None:
                return
            for upload in uploads:
                age = (ours - upload["Initiated"]).total_seconds()
                if upload["UploadId"] != self._upload_id and -1 <= age <= seconds + 5:
                    self._abort(upload["UploadId"])
        except Exception:  # noqa: BLE001 - the write goes on; a stray upload costs storage only
            pass

    def _abort(self, upload: str) -> bool:
        """``AbortMultipartUpload``, tried :data:`ABORT_TRIES` times; True once the
        upload is gone (aborted now or before)."""
        for n in range(ABORT_TRIES):
            try:
                self._backend.fs.call_s3("abort_multipart_upload", Bucket=self._bucket, Key=self._key,
                                         UploadId=upload)
                return True
            except FileNotFoundError:  # already gone (an earlier try's answer was lost)
                return True
            except Exception as exc:  # noqa: BLE001 - tried again, then left to the caller
                if _error_code(exc) in ("NoSuchUpload", "404"):
                    return True
                if n + 1 < ABORT_TRIES:
                    time.sleep(ABORT_PAUSE * 2 ** n)
        return False

    def _commit(self) -> bool:
        if self._upload_id is None:  # smaller than one part: one PutObject, as write_atomic
            data, self._buffer = bytes(self._buffer), bytearray()
            return self._backend._put(self.url, self._path, data, self._exclusive)
        if self._buffer:
            self._upload(self._buffer)
            self._buffer = bytearray()
        match = {"IfNoneMatch": "*"} if self._exclusive else {}
        for attempt in range(4):
            try:
                self._call("complete_multipart_upload", UploadId=self._upload_id,
                           MultipartUpload={"Parts": self._parts}, **match)
                return True
            except OSError as exc:
                code = _error_code(exc)
                if self._exclusive and (isinstance(exc, (FileExistsError, FileNotFoundError))
                                        or code in ("PreconditionFailed", "412", "NoSuchUpload")):
                    # A retried complete whose first try landed (its answer lost) meets
                    # its own object: committed.
                    if self._backend.is_ours(self.url, self._token):
                        self._upload_id = None  # completed: nothing to abort
                        return True
                if isinstance(exc, FileExistsError):
                    return False
                if self._exclusive and code in ("PreconditionFailed", "412"):
                    return False
                if self._exclusive and code == "ConditionalRequestConflict" and attempt < 3:
                    # A concurrent conditional write to the key is in flight: retry, which
                    # then sees the winner's object (412).
                    time.sleep(0.2 * (attempt + 1))
                    continue
                if attempt and self._exclusive and (code == "NoSuchUpload" or isinstance(exc, FileNotFoundError)):
                    # S3 may end an upload that lost a conflict: then the key has the winner.
                    if self._backend.exists(self.url):
                        return False
                if self._exclusive and code in ("NotImplemented", "501"):
                    raise StorageError(
                        f"an S3 server supporting conditional writes (If-None-Match on "
                        f"CompleteMultipartUpload) at {self._backend.describe()}",
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
        if not self._abort(upload):  # keep the error that brought us here
            self._upload_id = upload  # a later cleanup tries again

