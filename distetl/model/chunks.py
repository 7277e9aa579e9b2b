"""The chunk: one unit of work with a key and the fields its target is rendered from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True, slots=True)
class Chunk:
    """One unit of a backfill.

    Attributes:
        key: The chunk's identity, e.g. ``date=2013-01-03``. Used in target paths,
            task-run names, logs and the run manifest.
        fields: Values a target template may use, e.g. ``{"date": "2013-01-03"}``.
        index: Position of the chunk in its plan (0-based).
    """

    key: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    index: int = 0

    def __getitem__(self, name: str) -> Any:
        try:
            return self.fields[name]
        except KeyError:
            raise KeyError(
                f"Expected a field of chunk {self.key!r}; got {name!r}. "
                f"Fix: use one of {sorted(self.fields)}."
            ) from None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        fields = object.__getattribute__(self, "fields")
        if name in fields:
            return fields[name]
        raise AttributeError(
            f"Expected a field of chunk {self.key!r}; got {name!r}. "
            f"Fix: use one of {sorted(fields)}."
        )

    def template_fields(self) -> dict[str, Any]:
        """Return the fields a target template can use: the plan's plus ``key``/``index``."""
        values: dict[str, Any] = {"key": self.key, "index": self.index, "chunk": self.index}
        values.update(self.fields)
        return values
