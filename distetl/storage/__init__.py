"""Storage: bytes in and out of local folders and object stores, and their listings.

The lowest layer. It owns one :class:`Storage` interface over fsspec (:mod:`.core`), which
hands each call to the backend of its protocol, as fsspec picks a filesystem class: local
files (:mod:`.local`: atomic temp-file commits, ``os.scandir`` listings), S3 (:mod:`.s3`:
multipart uploads and create-only commits) and any other fsspec protocol
(:mod:`.generic`). What the backends share is in :mod:`.base`: atomic commits
(:class:`AtomicSink`), stamps, storage options and the redaction of secrets from anything
printed. :mod:`.listing` holds listings as columns. It imports nothing from distetl but
:mod:`distetl.errors`.
"""

from distetl.storage.base import (
    DISTETL_OPTIONS,
    AtomicSink,
    SinkAborted,
    _env_secrets,
    _hide_userinfo,
    _secret_values,
    parse_storage_options,
    redact,
    stamp_of,
)
from distetl.storage.core import Storage
from distetl.storage.local import _scandir_glob
from distetl.storage.s3 import MULTIPART_PART_SIZE

__all__ = ["Storage", "AtomicSink", "SinkAborted", "parse_storage_options", "redact", "stamp_of", "DISTETL_OPTIONS",
           "MULTIPART_PART_SIZE"]
