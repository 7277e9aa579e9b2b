"""A stage: one chunked dataset of a pipeline, from its own plan or from an upstream stage.

A root stage is exactly a one-stage pipeline: a plan, an extract, an optional transform,
a target template. A downstream stage names an upstream stage and a mapping
(:mod:`distetl.model.mappings`) from each of its chunks to the upstream chunks it reads; its
chunks come from the mapping (or from a plan of its own), and its extract receives the
committed upstream files through its context (``ctx.inputs``, ``ctx.read_inputs()``), so
data never travels through the driver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import pyarrow as pa

from distetl.errors import ConfigError
from distetl.model.checks import describe_checks, normalise_checks
from distetl.model.inputs import Input, Source, normalise_inputs, normalise_sources
from distetl.model.mappings import Identity, Mapping
from distetl.model.plans import Plan
from distetl.model.templates import TargetTemplate

__all__ = ["Stage", "read_inputs"]

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def read_inputs(chunk: Any, ctx: Any) -> Any:
    """The default extract of a one-input downstream stage: its input as one DataFrame."""
    return ctx.read_inputs()


@dataclass(frozen=True)
class Stage:
    """One chunked dataset of a pipeline.

    Example:
        >>> daily = Stage(
        ...     name="carrier_daily",
        ...     upstream="flights",
        ...     mapping=Identity(),
        ...     transform=per_carrier_stats,
        ...     target="{output}/carrier_daily/date={date}/part-0.parquet",
        ... )

    Attributes:
        name: The stage's name (in task-run names, the manifest, ``--stage``).
        target: Parquet path template of one chunk, e.g.
            ``{output}/t/date={date}/part-0.parquet``.
        plan: How a root stage splits into chunks. A downstream stage may have one too
            (its chunks are then the plan's, each mapped to upstream keys); without one,
            its chunks come from the mapping.
        extract: ``extract(chunk)`` or ``extract(chunk, ctx)``. Required for a root
            stage. For a downstream stage it defaults to reading the chunk's inputs as
            one DataFrame (:func:`read_inputs`).
        transform: Optional ``transform(df)`` or ``transform(df, chunk)``.
        upstream: The stage this one reads (its name, or the Stage itself): the one-input
            form of ``inputs``.
        mapping: Downstream chunk → upstream chunks (default :class:`Identity`), with
            ``upstream``.
        schema: Optional pyarrow schema every output is cast to.
        retries: Times a failing chunk is retried before it counts as failed.
        retry_delay_seconds: Pause between tries.
        timeout_seconds: Time limit of one try of one chunk (None: no limit).
        compression: Parquet compression codec.
        version: The stage's code version; derived from its code when None.
        inputs: Several inputs, each an upstream stage and a mapping
            (:class:`~distetl.model.inputs.Input`): a dict ``{name: Input | Stage | name}``
            or a list. The first input that gives chunks decides the stage's chunks when
            it has no plan; the extract reads each with ``ctx.read_inputs(name)``.
        sources: Files, URLs or globs the stage reads besides its chunks
            (``{"rates": "s3://bucket/rates.csv"}``), fingerprinted by their listing stamp:
            replacing one makes the stage's chunks stale (``input``). A file read without
            being declared here is invisible to distetl.
        checks: Data checks every chunk's output must pass before it is committed
            (:mod:`distetl.model.checks`): a pandera ``DataFrameSchema`` or
            ``DataFrameModel``, a callable ``check(df) -> bool | str``,
            :func:`distetl.warn` of a callable, or a list of those. They are part of
            the stage's code version.
    """

    name: str
    target: str
    plan: Optional[Plan] = None
    extract: Optional[Callable[..., Any]] = None
    transform: Optional[Callable[..., Any]] = None
    upstream: Optional[Any] = None
    mapping: Optional[Mapping] = None
    schema: Optional[pa.Schema] = None
    retries: int = 0
    retry_delay_seconds: float = 0.0
    timeout_seconds: Optional[float] = None
    compression: str = "snappy"
    version: Optional[str] = None
    description: str = field(default="", compare=False)
    inputs: Any = field(default=(), metadata={"distetl_added": True})
    sources: Any = field(default=(), metadata={"distetl_added": True})
    checks: Any = field(default=(), metadata={"distetl_added": True})

    def __post_init__(self) -> None:
        where = f"stage {self.name!r}"
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(
                "a stage name of letters, digits, '_', '.' or '-'", repr(self.name),
                "name the stage e.g. 'carrier_daily'",
            )
        if isinstance(self.upstream, Stage):
            object.__setattr__(self, "upstream", self.upstream.name)
        if self.upstream is not None and not isinstance(self.upstream, str):
            raise ConfigError("an upstream stage (its name or the Stage)", repr(self.upstream),
                              "pass upstream='flights' or upstream=flights_stage", where=where)
        if self.upstream is not None and self.mapping is None:
            object.__setattr__(self, "mapping", Identity())
        if self.upstream is not None and not isinstance(self.mapping, Mapping):
            raise ConfigError(
                "a distetl mapping (Identity, AllChunks, CalendarWindow, WindowDays, TrailingDays, AllToOne, "
                "FromFunction)", repr(self.mapping), "pass mapping=CalendarWindow('month') or similar",
                where=where,
            )
        if self.upstream is None and self.mapping is not None and not self.inputs:
            raise ConfigError("a mapping only with an upstream stage", repr(self.mapping),
                              "add upstream=... or drop the mapping", where=where)
        object.__setattr__(self, "_inputs", normalise_inputs(self.name, self.inputs, self.upstream, self.mapping))
        object.__setattr__(self, "_sources", normalise_sources(self.name, self.sources))
        object.__setattr__(self, "checks", normalise_checks(where, self.checks))
        if not self._inputs:
            if self.plan is None or self.extract is None:
                raise ConfigError(
                    "a plan and an extract for a root stage (or an upstream stage)",
                    f"plan={type(self.plan).__name__ if self.plan else None}, "
                    f"extract={'set' if self.extract else None}",
                    "give the stage plan=... and extract=..., or upstream=... with a mapping",
                    where=where,
                )
        elif self.extract is None:
            if len(self._inputs) > 1:
                raise ConfigError(
                    "an extract(chunk, ctx) for a stage with several inputs",
                    f"no extract, inputs {[i.name for i in self._inputs]}",
                    f"write an extract that reads and joins them, e.g. ctx.read_inputs({self._inputs[0].name!r})",
                    where=where,
                )
            object.__setattr__(self, "extract", read_inputs)
        if self.plan is not None and not isinstance(self.plan, Plan):
            raise ConfigError(
                "a distetl plan (DateRange, FileList, IdRange, ChunkList)",
                type(self.plan).__name__, "build the plan with one of those classes", where=where,
            )
        if not callable(self.extract):
            raise ConfigError("a callable extract(chunk)", repr(self.extract), "pass a function", where=where)
        if self.transform is not None and not callable(self.transform):
            raise ConfigError("a callable transform(df)", repr(self.transform), "pass a function or None",
                              where=where)
        if self.schema is not None and not isinstance(self.schema, pa.Schema):
            raise ConfigError("a pyarrow.Schema", type(self.schema).__name__, "pass pa.schema([...])", where=where)
        if self.retries < 0:
            raise ConfigError("retries >= 0", str(self.retries), "pass 0 or more", where=where)
        if self.timeout_seconds is not None and not (
            isinstance(self.timeout_seconds, (int, float)) and self.timeout_seconds > 0
        ):
            raise ConfigError(
                "a chunk time limit above 0 seconds (timeout_seconds / --chunk-timeout)",
                repr(self.timeout_seconds), "pass e.g. timeout_seconds=600, or None for no limit",
                where=where,
            )
        TargetTemplate(self.target)

    def code_version(self) -> str:
        """The stage's code version: ``version`` when set, else a digest of what its
        extract and transform do (:func:`distetl.model.codeversion.code_version`) and of its
        target, schema and compression, and of its checks (their meaning: a pandera
        schema's columns, types and checks with their parameters, and the code of any
        function behind a check) when it has some."""
        if self.version:
            return str(self.version)
        from distetl.model.codeversion import code_version

        extra = {"target": self.target, "schema": str(self.schema), "compression": self.compression}
        if not self.checks:
            return code_version(self.extract, self.transform, extra=extra)
        described, funcs = describe_checks(self.checks)
        return code_version(self.extract, self.transform, *funcs, extra={**extra, "checks": described})

    @property
    def all_inputs(self) -> tuple[Input, ...]:
        """Every input of the stage, named (the one-input form gives one)."""
        return self._inputs  # type: ignore[attr-defined,no-any-return]

    @property
    def all_sources(self) -> tuple[Source, ...]:
        """Every declared source of the stage, named."""
        return self._sources  # type: ignore[attr-defined,no-any-return]

    def input(self, name: str) -> Input:
        """The input called ``name``.

        Raises:
            ConfigError: For a name the stage has no input under.
        """
        for item in self.all_inputs:
            if item.name == name:
                return item
        raise ConfigError(f"an input of stage {self.name!r} ({', '.join(i.name for i in self.all_inputs) or 'none'})",
                          repr(name), "use one of the listed names")

    @property
    def upstreams(self) -> list[str]:
        """The distinct upstream stages this stage reads, in input order."""
        out: list[str] = []
        for item in self.all_inputs:
            if item.upstream not in out:
                out.append(item.upstream)
        return out

    @property
    def is_root(self) -> bool:
        """Whether the stage reads no upstream stage."""
        return not self.all_inputs

    def with_options(self, **changes: Any) -> "Stage":
        """A copy with some attributes replaced (new ``inputs`` replace the one-input form)."""
        if "inputs" in changes and "upstream" not in changes:
            changes.setdefault("upstream", None)
            changes.setdefault("mapping", None)
        return replace(self, **changes)
