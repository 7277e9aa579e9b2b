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
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

import fsspec

from distetl.errors import StorageError
from distetl.storage.base import AtomicSink, Backend, _error_code, _hide_userinfo

__all__ = ["S3Backend", "MULTIPART_PART_SIZE", "SINGLE_PUT_LIMIT"]

#: Largest object one S3 ``PutObject`` may carry; bigger commits go multipart.
SINGLE_PUT_LIMIT = 5 * 2**30

#: Size of the parts of a multipart upload (S3's minimum is 5 MiB, but for the last
#: part). The part size doubles every :data:`PARTS_PER_SIZE` parts, so S3's limit of
#: 10,000 parts is reached only past 80 TiB.
MULTIPART_PART_SIZE = 8 * 2**20
PARTS_PER_SIZE = 1000

#: botocore settings of the plan-time probe: fail within seconds, not minutes.
PROBE_CONFIG = {"connect_timeout": 5, "read_timeout": 20, "retries": {"max_attempts": 2, "mode": "standard"}}


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
        if probe:
            config = dict(options.get("config_kwargs") or {})
            for name, value in PROBE_CONFIG.items():
                config.setdefault(name, value)
            options["config_kwargs"] = config
        return options

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
            self._upload_id = self._call("create_multipart_upload")["UploadId"]
        number = len(self._parts) + 1
        out = self._call("upload_part", UploadId=self._upload_id, PartNumber=number, Body=bytes(body))
        self._parts.append({"PartNumber": number, "ETag": out["ETag"]})

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
        try:
            self._backend.fs.call_s3("abort_multipart_upload", Bucket=self._bucket, Key=self._key, UploadId=upload)
        except FileNotFoundError:  # already gone
            pass
        except Exception:  # noqa: BLE001 - keep the error that brought us here
            self._upload_id = upload  # a later cleanup tries again

