"""Filesystems: listing committed targets, and committing bytes atomically.

Everything goes through fsspec. Local paths are made absolute so workers in another
directory see the same files. ``s3://`` uses s3fs with the standard AWS configuration
plus explicit storage options; listings are never cached, so a rerun sees what workers
wrote.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Any, Iterable, Mapping

import fsspec

from distetl.errors import StorageError

__all__ = ["Storage", "parse_storage_options", "redact"]

_SECRET_WORDS = ("secret", "token", "password", "key", "credential")


def redact(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return storage options with every credential-like value replaced by ``***``."""
    out: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if isinstance(value, Mapping):
            out[name] = redact(value)
        elif any(word in name.lower() for word in _SECRET_WORDS):
            out[name] = "***"
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


class Storage:
    """One filesystem, identified by protocol and options. Picklable; cheap to rebuild.

    Args:
        protocol: fsspec protocol, e.g. ``file``, ``s3``, ``memory``.
        options: Storage options for the filesystem (credentials allowed; never logged).
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
        return self.protocol in ("file", "local")

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The fsspec filesystem (created on first use, in the process that uses it)."""
        if self._fs is None:
            options = {k: v for k, v in self.options.items() if k != "create_only"}
            if self.protocol in ("s3", "s3a"):
                options.setdefault("use_listings_cache", False)
                endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                if endpoint and "endpoint_url" not in options and "endpoint_url" not in options.get("client_kwargs", {}):
                    options["endpoint_url"] = endpoint
                if os.environ.get("AWS_PROFILE") and "profile" not in options:
                    options["profile"] = os.environ["AWS_PROFILE"]
            self._fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, **options)
        return self._fs

    def normalize(self, url: str) -> str:
        """A URL as this storage's paths are compared: absolute for local files."""
        if self.is_local:
            return os.path.abspath(url.split("://", 1)[1] if url.startswith("file://") else url)
        return url.rstrip("/")

    def strip(self, url: str) -> str:
        """The filesystem-internal path of a URL (no protocol)."""
        if self.is_local:
            return self.normalize(url)
        return self.fs._strip_protocol(url)

    def unstrip(self, path: str) -> str:
        """The URL of a filesystem-internal path."""
        if self.is_local:
            return path
        return f"{self.protocol}://{path}"

    def describe(self) -> str:
        """Where this storage points, without credentials: for error messages."""
        endpoint = self.options.get("endpoint_url") or self.options.get("client_kwargs", {}).get(
            "endpoint_url"
        ) or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return f"{self.protocol}://" + (f" at endpoint {endpoint}" if endpoint else "")

    def glob(self, pattern: str) -> list[str]:
        """URLs matching a glob, sorted."""
        try:
            found = self.fs.glob(self.strip(pattern))
        except FileNotFoundError:
            return []
        except Exception as exc:  # noqa: BLE001 - surface any backend error plainly
            raise self._access_error(pattern, exc) from exc
        return sorted(self.unstrip(p) for p in found if not self.fs.isdir(p))

    def list_files(self, root: str) -> set[str]:
        """Every file under ``root`` (recursively), as URLs, with one listing.

        A missing root is an empty set.
        """
        try:
            found = self.fs.find(self.strip(root))
        except FileNotFoundError:
            return set()
        except Exception as exc:  # noqa: BLE001
            raise self._access_error(root, exc) from exc
        return {self.unstrip(p) for p in found}

    def exists(self, url: str) -> bool:
        """Whether one file exists (used on workers as a guard, not for planning)."""
        return self.fs.exists(self.strip(url))

    def check_root(self, root: str) -> None:
        """Fail fast if ``root`` cannot be used: missing bucket, bad credentials, no endpoint.

        Raises:
            StorageError: Naming the bucket or endpoint and the fix.
        """
        if self.is_local:
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
        if self.protocol in ("s3", "s3a"):
            bucket = self.strip(root).split("/", 1)[0]
            try:
                exists = self.fs.exists(bucket)
            except Exception as exc:  # noqa: BLE001
                raise self._access_error(root, exc) from exc
            if not exists:
                raise StorageError(
                    f"an existing bucket {bucket!r} on {self.describe()}",
                    "no such bucket",
                    f"create it (aws s3 mb s3://{bucket}) or fix the --output URL",
                )

    def _access_error(self, url: str, exc: Exception) -> StorageError:
        name = type(exc).__name__
        text = str(exc).splitlines()[0][:300] if str(exc) else name
        for secret in _secret_values(self.options):
            text = text.replace(secret, "***")
        return StorageError(
            f"{url!r} readable on {self.describe()}",
            f"{name}: {text}",
            "check the endpoint (AWS_ENDPOINT_URL or --storage-option endpoint_url=…), "
            "the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and "
            "that the bucket exists",
        )

    def write_atomic(self, url: str, data: bytes) -> bool:
        """Commit complete bytes at ``url``: either the whole file appears or nothing.

        Local: a hidden temp file in the target's directory, fsync, then ``os.replace``.
        Object stores: one complete PUT of the finished bytes (create-only where the
        store supports it, so of two concurrent writers only one wins).

        Returns:
            True if this call committed the file, False if a concurrent writer had
            already committed it (create-only stores).
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
        if self.protocol in ("s3", "s3a") and self.options.get("create_only", True):
            try:
                self.fs.pipe_file(path, data, mode="create")
                return True
            except FileExistsError:
                return False
            except Exception as exc:  # noqa: BLE001
                if "PreconditionFailed" in repr(exc) or "412" in str(exc):
                    return False
                raise
        parent = posixpath.dirname(path)
        if parent and self.protocol not in ("s3", "s3a", "gs", "gcs", "az", "abfs"):
            self.fs.makedirs(parent, exist_ok=True)
        self.fs.pipe_file(path, data)
        return True

    def open(self, url: str, mode: str = "rb", **kwargs: Any):
        """Open a file for reading (sources). Never use this to write a target."""
        return self.fs.open(self.strip(url), mode, **kwargs)


def _secret_values(options: Mapping[str, Any]) -> list[str]:
    out = []
    for name, value in options.items():
        if isinstance(value, Mapping):
            out.extend(_secret_values(value))
        elif isinstance(value, str) and len(value) >= 4 and any(w in name.lower() for w in _SECRET_WORDS):
            out.append(value)
    return out
