"""A chunk's own past: chunk N of a stage reads chunk N−k of the same stage.

A running total, a balance to date, a snapshot that applies today's changes to
yesterday's state: each chunk reads its stage's previous chunk besides its other inputs.
The stage names itself as the input's upstream::

    Stage("running", inputs={"daily": "daily", "before": Input("running", Previous())}, ...)

With ``per``, chunks form one chain per value of those fields (a chain per origin over
``date × origin`` keys), in plan order; chains run side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from distetl.errors import ConfigError
from distetl.model.chunks import Chunk
from distetl.model.mappings.base import Mapping, UpstreamKeys, _Lookup

__all__ = ["Previous"]


def _fields_of_key(key: str) -> dict[str, str]:
    """``date=2024-01-03/origin=EWR`` → ``{"date": "2024-01-03", "origin": "EWR"}``."""
    out: dict[str, str] = {}
    for part in key.split("/"):
        name, sep, value = part.partition("=")
        if sep:
            out[name] = value
    return out


@dataclass(frozen=True)
class Previous(Mapping):
    """Chunk N reads chunk N−``k`` of its own stage (per value of ``per``), in plan order.

    The first ``k`` chunks of each chain read nothing from it: they start the chain.
    A failed chunk blocks the rest of its chain only; a redone chunk with a new data
    version makes its successors stale (``upstream``).

    Attributes:
        k: How far back (1: the chunk just before).
        per: Field name(s) that split the chunks into chains (e.g. ``"origin"``), or None
            for one chain.

    Raises:
        ConfigError: For ``k`` < 1 or a ``per`` that is not field names.
    """

    k: int = 1
    per: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise ConfigError("Previous(k): how many chunks back, an int >= 1", repr(self.k),
                              "write Previous() for the chunk just before, Previous(7) for a week back")
        per = self.per
        if isinstance(per, str):
            per = (per,)
        if per is not None and not (isinstance(per, (tuple, list)) and all(isinstance(p, str) for p in per)):
            raise ConfigError("Previous(per=...): a field name or a tuple of them", repr(self.per),
                              "write Previous(per='origin')")
        object.__setattr__(self, "per", tuple(per) if per else None)

    @property
    def allows_empty_inputs(self) -> bool:
        return True  # the start of each chain

    def downstream_chunks(self, upstream: Sequence[Chunk]) -> list[Chunk]:
        raise ConfigError("a stage whose chunks come from its plan or another input",
                          "Previous() as the input that decides the stage's chunks",
                          "give the stage a plan=..., or list another input first")

    def _previous(self, upstream: UpstreamKeys) -> list[int]:
        """For every upstream position, the position k chunks back in its chain, or -1."""
        cached = self.__dict__.get("_ranked")
        if cached is not None and cached[0] is upstream:
            return cached[1]  # type: ignore[no-any-return]
        out: list[int] = []
        seen: dict[Any, list[int]] = {}
        per = self.per
        for i, key in enumerate(upstream.keys()):
            if per:
                fields = _fields_of_key(key)
                missing = [p for p in per if p not in fields]
                if missing:
                    raise ConfigError(
                        f"chunk keys with the field(s) {list(per)} to split chains by", repr(key),
                        "name fields of the stage's keys in Previous(per=...) (see `distetl status` for keys)")
                group: Any = tuple(fields[p] for p in per)
            else:
                group = None
            chain = seen.setdefault(group, [])
            out.append(chain[-self.k] if len(chain) >= self.k else -1)
            chain.append(i)
        object.__setattr__(self, "_ranked", (upstream, out))
        return out

    def upstream_keys(self, chunk: Chunk, upstream: UpstreamKeys) -> list[str]:
        i = upstream.get(chunk.key) if hasattr(upstream, "get") else None
        if i is None:
            return []
        j = self._previous(upstream)[i]
        return [upstream.keys()[j]] if j >= 0 else []

    def _indexes(self, chunk: Chunk, upstream: UpstreamKeys, lookup: _Lookup) -> tuple[list[int], list[str]]:
        i = lookup(chunk.key)
        if i is None:
            return [], []
        j = self._previous(upstream)[i]
        return ([j] if j >= 0 else []), []

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_ranked"}  # never ship the cache

    def describe(self) -> str:
        per = f", per={self.per[0]!r}" if self.per and len(self.per) == 1 else (f", per={self.per!r}" if self.per else "")
        return f"Previous({self.k}{per}): each chunk reads its own stage's chunk {self.k} back"
