"""The pipeline: a plan, an extract, an optional transform, a target and a schema."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import pyarrow as pa

from distetl.errors import ConfigError
from distetl.plans import Plan
from distetl.templates import TargetTemplate

__all__ = ["Pipeline"]


@dataclass(frozen=True)
class Pipeline:
    """A chunked backfill, declared once and run on any runner.

    Example:
        >>> pipeline = Pipeline(
        ...     name="flights",
        ...     plan=DateRange(start="2013-01-01", end="2013-12-31"),
        ...     extract=lambda chunk: load_day(chunk["date"]),
        ...     transform=add_features,
        ...     target="{output}/flights/date={date}/part-0.parquet",
        ... )

    Attributes:
        name: Flow name in Prefect and in the manifest path.
        plan: How the work splits into chunks.
        extract: ``extract(chunk)`` or ``extract(chunk, ctx)`` returning a DataFrame;
            ``ctx`` is a :class:`distetl.execute.ChunkContext` (``ctx.open(url)`` reads
            through the run's storage options).
        target: Parquet path template, e.g. ``{output}/t/date={date}/part-0.parquet``.
        transform: Optional ``transform(df)`` or ``transform(df, chunk)``.
        schema: Optional pyarrow schema every output is cast to.
        retries: Times a failing chunk is retried before it counts as failed.
        retry_delay_seconds: Pause between tries.
        timeout_seconds: Time limit of one try of one chunk (extract, transform and
            serialisation); past it the try fails with a timeout and is retried like any
            failure. None: no limit. ``distetl run --chunk-timeout`` overrides it.
        compression: Parquet compression codec.
    """

    name: str
    plan: Plan
    extract: Callable[..., Any]
    target: str
    transform: Optional[Callable[..., Any]] = None
    schema: Optional[pa.Schema] = None
    retries: int = 0
    retry_delay_seconds: float = 0.0
    timeout_seconds: Optional[float] = None
    compression: str = "snappy"
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not callable(self.extract):
            raise ConfigError("a callable extract(chunk)", repr(self.extract), "pass a function")
        if self.transform is not None and not callable(self.transform):
            raise ConfigError("a callable transform(df)", repr(self.transform), "pass a function or None")
        if not isinstance(self.plan, Plan):
            raise ConfigError(
                "a distetl plan (DateRange, FileList, IdRange, ChunkList)",
                type(self.plan).__name__, "build the plan with one of those classes",
            )
        if self.schema is not None and not isinstance(self.schema, pa.Schema):
            raise ConfigError("a pyarrow.Schema", type(self.schema).__name__, "pass pa.schema([...])")
        if self.retries < 0:
            raise ConfigError("retries >= 0", str(self.retries), "pass 0 or more")
        if self.timeout_seconds is not None and not (
            isinstance(self.timeout_seconds, (int, float)) and self.timeout_seconds > 0
        ):
            raise ConfigError(
                "a chunk time limit above 0 seconds (timeout_seconds / --chunk-timeout)",
                repr(self.timeout_seconds), "pass e.g. timeout_seconds=600, or None for no limit",
                where=f"pipeline {self.name}",
            )
        TargetTemplate(self.target)

    def with_options(self, **changes: Any) -> "Pipeline":
        """A copy with some attributes replaced (e.g. ``retries``, ``plan``)."""
        return replace(self, **changes)


def arity(func: Callable[..., Any]) -> int:
    """Number of positional parameters a user function accepts (2 means it wants a context)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return 1
    count = 0
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            return 2
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            count += 1
    return count
