"""The pipeline: one stage (a plan, an extract, an optional transform, a target, a
schema) or a graph of stages."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import pyarrow as pa

from distetl.errors import ConfigError
from distetl.model.plans import Plan

__all__ = ["Pipeline"]


@dataclass(frozen=True)
class Pipeline:
    """A chunked backfill, declared once and run on any runner: one stage or a graph.

    One stage (today's pipeline):
        >>> pipeline = Pipeline(
        ...     name="flights",
        ...     plan=DateRange(start="2013-01-01", end="2013-12-31"),
        ...     extract=lambda chunk: load_day(chunk["date"]),
        ...     transform=add_features,
        ...     target="{output}/flights/date={date}/part-0.parquet",
        ... )

    A graph of stages (each a :class:`~distetl.model.stages.Stage`):
        >>> pipeline = Pipeline(name="rollups", stages=[flights, carrier_daily, carrier_monthly])

    Attributes:
        name: Flow name in Prefect and in the manifest path.
        plan: How the work splits into chunks (one-stage form).
        extract: ``extract(chunk)`` or ``extract(chunk, ctx)`` returning a DataFrame;
            ``ctx`` is a :class:`distetl.engine.execute.ChunkContext` (``ctx.open(url)`` reads
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
        version: The code version of the one stage (derived from its code when None).
        stages: The stages of a multi-stage pipeline, upstream before downstream or in
            any order (the graph is sorted). Excludes plan/extract/target/transform/schema.
        checks: Data checks of the one stage (see :class:`~distetl.model.stages.Stage`).
    """

    name: str
    plan: Optional[Plan] = None
    extract: Optional[Callable[..., Any]] = None
    target: Optional[str] = None
    transform: Optional[Callable[..., Any]] = None
    schema: Optional[pa.Schema] = None
    retries: int = 0
    retry_delay_seconds: float = 0.0
    timeout_seconds: Optional[float] = None
    compression: str = "snappy"
    description: str = field(default="", compare=False)
    version: Optional[str] = None
    stages: tuple[Any, ...] = ()
    checks: Any = field(default=(), metadata={"distetl_added": True})

    def __post_init__(self) -> None:
        from distetl.model.stages import Stage

        if self.stages:
            object.__setattr__(self, "stages", tuple(self.stages))
            given = [n for n in ("plan", "extract", "target", "transform", "schema", "version")
                     if getattr(self, n) is not None] + (["checks"] if self.checks else [])
            if given:
                raise ConfigError(
                    "either stages=[...] or one stage's plan/extract/target", f"both (stages and {', '.join(given)})",
                    "move those into a Stage of the list", where=f"pipeline {self.name}",
                )
            for stage in self.stages:
                if not isinstance(stage, Stage):
                    raise ConfigError("distetl Stage objects in stages=[...]", type(stage).__name__,
                                      "build each with Stage(name=..., ...)", where=f"pipeline {self.name}")
            from distetl.model.graph import StageGraph

            StageGraph(self.stages)  # names, upstreams and cycles: checked when declared
            return
        if self.plan is not None and not isinstance(self.plan, Plan):
            raise ConfigError(
                "a distetl plan (DateRange, FileList, IdRange, ChunkList)",
                type(self.plan).__name__, "build the plan with one of those classes",
            )
        if self.target is None:
            raise ConfigError("a target template", "none", "pass target='{output}/name/part-{index}.parquet'",
                              where=f"pipeline {self.name}")
        stage = Stage(
            name=self.name, target=self.target, plan=self.plan, extract=self.extract,
            transform=self.transform, schema=self.schema, retries=self.retries,
            retry_delay_seconds=self.retry_delay_seconds, timeout_seconds=self.timeout_seconds,
            compression=self.compression, version=self.version, description=self.description,
            checks=self.checks,
        )
        object.__setattr__(self, "_single", stage)
        object.__setattr__(self, "checks", stage.checks)  # normalised

    @property
    def all_stages(self) -> tuple[Any, ...]:
        """Every stage: the declared ones, or the one stage of a one-stage pipeline
        (named after the pipeline)."""
        return self.stages if self.stages else (self._single,)  # type: ignore[attr-defined]

    def stage(self, name: str) -> Any:
        """The stage called ``name``.

        Raises:
            ConfigError: If there is none.
        """
        for stage in self.all_stages:
            if stage.name == name:
                return stage
        raise ConfigError(
            f"a stage of pipeline {self.name!r} ({', '.join(s.name for s in self.all_stages)})",
            repr(name), "pass one of those names (e.g. --stage NAME)",
        )

    def with_options(self, **changes: Any) -> "Pipeline":
        """A copy with some attributes replaced (e.g. ``retries``, ``plan``); for a
        multi-stage pipeline, ``retries``, ``retry_delay_seconds`` and
        ``timeout_seconds`` apply to every stage."""
        if not self.stages:
            return replace(self, **changes)
        per_stage = {k: v for k, v in changes.items() if k in _STAGE_WIDE}
        rest = {k: v for k, v in changes.items() if k not in _STAGE_WIDE}
        stages = tuple(s.with_options(**per_stage) for s in self.stages) if per_stage else self.stages
        return replace(self, stages=stages, **rest)


    def with_retry_options(self, retries: Optional[int] = None, retry_delay: Optional[float] = None,
                           chunk_timeout: Optional[float] = None) -> "Pipeline":
        """This pipeline with the command line's ``--retries``, ``--retry-delay`` and
        ``--chunk-timeout`` applied to every stage (those given; itself if none is)."""
        changes = {name: value for name, value in (("retries", retries), ("retry_delay_seconds", retry_delay),
                                                   ("timeout_seconds", chunk_timeout)) if value is not None}
        return self.with_options(**changes) if changes else self


_STAGE_WIDE = ("retries", "retry_delay_seconds", "timeout_seconds")


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
