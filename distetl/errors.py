"""Errors that say what was expected, what arrived, and how to fix it."""

from __future__ import annotations


class DistetlError(Exception):
    """Base class of every error distetl raises on purpose.

    Messages follow one shape: ``Expected …; got …`` and then the fix.

    Attributes:
        exit_code: The process exit code the command line uses for this error.
    """

    exit_code: int = 2

    def __init__(self, expected: str, got: str, fix: str, *, where: str | None = None):
        self.expected = expected
        self.got = got
        self.fix = fix
        self.where = where
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}Expected {expected}; got {got}. Fix: {fix}")


class ConfigError(DistetlError):
    """A pipeline, command line or environment setting is wrong (plan time)."""


class PlanError(DistetlError):
    """The plan or a target template cannot produce valid chunks (plan time)."""


class StorageError(DistetlError):
    """A filesystem or object store cannot be used as configured (plan time)."""


class ClusterError(DistetlError):
    """The Dask cluster cannot be reached or is not usable (plan time)."""


class ChunkError(DistetlError):
    """One chunk's output does not match what the pipeline declared (run time)."""

    exit_code = 1
