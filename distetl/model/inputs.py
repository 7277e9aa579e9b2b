"""What a stage reads: inputs (an upstream stage through a mapping) and declared sources.

One graph model: a stage has zero or more **inputs**, each an upstream stage and a
:class:`~distetl.model.mappings.Mapping` from the stage's chunks to the upstream chunks
they read, under a name unique in the stage (``ctx.read_inputs("orders")``). A dimension
table is an upstream stage of one chunk read through
:class:`~distetl.model.mappings.AllChunks`. A **declared source** is a file, URL or
glob that a stage reads besides its chunks; it is fingerprinted by its listing stamp
(size and modification time, or ETag: no content read), so replacing it makes the
stage's chunks stale (``input``).

Plain Python: no Prefect, Dask, pandas or pyarrow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from distetl.errors import ConfigError
from distetl.model.mappings import Identity, Mapping

__all__ = ["Input", "Source", "fingerprint_key", "normalise_inputs", "normalise_sources", "source_key"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Input:
    """One input of a stage: an upstream stage read through a mapping.

    Example:
        >>> Input("orders")                       # the order chunk with the same key
        >>> Input(nation, AllChunks())            # every chunk reads the whole dimension
        >>> Input("days", CalendarWindow("month"), name="days")

    Attributes:
        upstream: The upstream stage (its name, or the Stage itself).
        mapping: This stage's chunk → the upstream chunks it reads (default
            :class:`~distetl.model.mappings.Identity`).
        name: The input's name in ``ctx.read_inputs(name)`` and in messages (default: the
            upstream stage's name, or the key of the ``inputs`` dict).
    """

    upstream: Any
    mapping: Mapping = field(default_factory=Identity)
    name: Optional[str] = None

    def __post_init__(self) -> None:
        upstream = getattr(self.upstream, "name", self.upstream) if not isinstance(self.upstream, str) else \
            self.upstream
        if not isinstance(upstream, str) or not upstream:
            raise ConfigError("an upstream stage (its name or the Stage)", repr(self.upstream),
                              "write Input('orders') or Input(orders_stage)")
        object.__setattr__(self, "upstream", upstream)
        if not isinstance(self.mapping, Mapping):
            raise ConfigError(
                "a distetl mapping (Identity, AllChunks, CalendarWindow, WindowDays, TrailingDays, AllToOne, "
                "FromFunction)", repr(self.mapping), f"write Input({upstream!r}, AllChunks()) or similar",
                where=f"input {self.name or upstream!r}")

    def named(self, name: str) -> "Input":
        """This input under ``name``."""
        return Input(self.upstream, self.mapping, name)


@dataclass(frozen=True)
class Source:
    """A file, URL or glob a stage reads besides its chunks, fingerprinted by its listing.

    Attributes:
        url: A local path, an ``s3://`` (or other fsspec) URL, or a glob of either.
        name: The source's name in ``ctx.sources[name]`` and in messages (default: the
            key of the ``sources`` dict, or the file's base name).
    """

    url: str
    name: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url:
            raise ConfigError("a source path, URL or glob", repr(self.url),
                              "write sources={'rates': 's3://bucket/rates.csv'}")
        field = re.search(r"\{[A-Za-z_]\w*\}", self.url)
        if field:
            raise ConfigError(
                "a fixed source path, URL or glob (a declared source is one set of files for the whole stage; "
                "its path takes no chunk fields)", f"{field.group(0)} in {self.url!r}",
                "for one file per chunk, make the files a stage of their own with a FileList plan "
                "(Stage('readings', plan=FileList(pattern='raw/*.csv'), ...)) and read each chunk's file through "
                "an input: inputs={'readings': Input('readings', FromFunction(lambda c: [f\"file={c['date']}.csv\"]))} "
                "(see 'One raw file per day' in the mappings reference)",
                where=f"source {self.name or self.url!r}")
        if self.name is None:
            base = self.url.rstrip("/").rsplit("/", 1)[-1] or self.url
            object.__setattr__(self, "name", base)

    @property
    def is_glob(self) -> bool:
        return any(ch in self.url for ch in "*?[")


def normalise_inputs(stage: str, inputs: Any, upstream: Any, mapping: Any) -> tuple[Input, ...]:
    """A stage's inputs as a tuple of named :class:`Input`, from any accepted form.

    Accepted: ``inputs`` as a dict ``{name: Input | Stage | stage name}`` or a sequence of
    ``Input | Stage | stage name``; or the one-input form ``upstream=`` / ``mapping=``.

    Raises:
        ConfigError: Both forms at once, an unknown item, or two inputs with one name.
    """
    where = f"stage {stage}"
    if inputs and upstream is not None:
        raise ConfigError("either inputs=... or upstream=... (the one-input form)", "both",
                          "move the upstream into inputs=[...] (or drop inputs)", where=where)
    if not inputs:
        if upstream is None:
            return ()
        item = Input(upstream, mapping if mapping is not None else Identity())
        return (item.named(item.upstream),)
    if mapping is not None:
        raise ConfigError("a mapping per input with inputs=...", f"mapping={mapping!r} besides inputs",
                          "give each input its mapping: Input('days', CalendarWindow('month'))", where=where)
    if isinstance(inputs, dict):
        items = [(name, value) for name, value in inputs.items()]
    elif isinstance(inputs, (list, tuple)):
        items = [(None, value) for value in inputs]
    else:
        raise ConfigError("inputs as a dict {name: Input} or a list of Input", type(inputs).__name__,
                          "write inputs={'orders': Input('orders'), 'nation': Input(nation, AllChunks())}",
                          where=where)
    out: list[Input] = []
    for name, value in items:
        if isinstance(value, Input):
            item = value
        elif isinstance(value, str) or hasattr(value, "target"):
            item = Input(value)
        else:
            raise ConfigError("an Input, a Stage or a stage name", repr(value),
                              "write Input('orders') or Input(nation, AllChunks())",
                              where=f"{where}, input {name or '#' + str(len(out) + 1)}")
        final = name or item.name or item.upstream
        if not isinstance(final, str) or not _NAME.match(final):
            raise ConfigError("an input name of letters, digits and '_' (not starting with a digit)",
                              repr(final), "name the input e.g. Input('orders', name='orders')", where=where)
        out.append(item if item.name == final else item.named(final))
    names = [i.name for i in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError("one name per input", f"two inputs named {dupes[0]!r}",
                          f"name them apart: Input({dupes[0]!r}, ..., name='{dupes[0]}_2')", where=where)
    return tuple(out)


def normalise_sources(stage: str, sources: Any) -> tuple[Source, ...]:
    """A stage's declared sources as a tuple of named :class:`Source`.

    Accepted: a dict ``{name: url}`` or a sequence of URLs / :class:`Source`.

    Raises:
        ConfigError: An unknown item, or two sources with one name.
    """
    where = f"stage {stage}"
    if not sources:
        return ()
    if isinstance(sources, str):
        sources = [sources]
    if isinstance(sources, dict):
        items = [Source(url, name) if isinstance(url, str) else Source(url.url, name) for name, url in sources.items()]
    elif isinstance(sources, (list, tuple)):
        items = []
        for value in sources:
            if isinstance(value, Source):
                items.append(value)
            elif isinstance(value, str):
                items.append(Source(value))
            else:
                raise ConfigError("a source path, URL or Source", repr(value),
                                  "write sources={'rates': 's3://bucket/rates.csv'}", where=where)
    else:
        raise ConfigError("sources as a dict {name: url} or a list of URLs", type(sources).__name__,
                          "write sources={'rates': 's3://bucket/rates.csv'}", where=where)
    names = [s.name for s in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError("one name per declared source", f"two sources named {dupes[0]!r}",
                          "name them in a dict: sources={'rates_eu': ..., 'rates_us': ...}", where=where)
    return tuple(items)


def fingerprint_key(stage: Any, input_name: str, upstream_key: str) -> str:
    """The key under which a chunk's record keeps one upstream chunk's data version.

    A stage with one input keeps the upstream key as it is (records written before
    stages had several inputs stay valid); with several, ``input:key``, so two inputs
    with the same keys (orders and line items by part) do not collide.
    """
    return upstream_key if len(stage.all_inputs) == 1 else f"{input_name}:{upstream_key}"


def source_key(name: str) -> str:
    """The key under which a chunk's record keeps a declared source's fingerprint."""
    return f"@{name}"
