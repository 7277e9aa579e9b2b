"""Storage: bytes in and out of local folders and object stores, and their listings.

The lowest layer. It owns one :class:`Storage` interface over fsspec (local files, S3
with multipart uploads and create-only commits, and any other fsspec protocol), atomic
commits (:class:`AtomicSink`), listings with their stamps, and the redaction of secrets
from anything printed. It imports nothing from distetl but :mod:`distetl.errors`.
"""

from distetl.storage.core import (
    DISTETL_OPTIONS,
    MULTIPART_PART_SIZE,
    AtomicSink,
    SinkAborted,
    Storage,
    _env_secrets,
    _hide_userinfo,
    _scandir_glob,
    _secret_values,
    parse_storage_options,
    redact,
    stamp_of,
)

__all__ = ["Storage", "AtomicSink", "SinkAborted", "parse_storage_options", "redact", "stamp_of", "DISTETL_OPTIONS",
           "MULTIPART_PART_SIZE"]
