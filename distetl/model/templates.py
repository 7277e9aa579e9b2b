"""Target path templates, rendered for every chunk at plan time."""

from __future__ import annotations

import difflib
import string
from typing import Any, Iterable

from distetl.model.chunks import Chunk
from distetl.errors import PlanError

__all__ = ["TargetTemplate"]

_UNSAFE = ("/", "\\", "\x00")


class TargetTemplate:
    """A target path template such as ``{output}/flights/date={date}/part-0.parquet``.

    ``{output}`` is the run's output root; every other field comes from the chunk
    (see :meth:`distetl.model.chunks.Chunk.template_fields`).

    Args:
        template: A :meth:`str.format` template.

    Raises:
        PlanError: If the template is not valid format syntax.
    """

    def __init__(self, template: str):
        self.template = template
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise PlanError(
                "a target template in str.format syntax",
                f"{template!r} ({exc})",
                "balance the braces; write {{ and }} for literal braces",
            ) from None
        self.fields = {name.split(".")[0].split("[")[0] for _, name, _, _ in parsed if name}
        #: The chunk fields the template uses, checked on every render.
        self.chunk_fields = sorted(self.fields - {"output"})
        if "" in self.fields:
            raise PlanError(
                "named template fields such as {date}",
                f"an empty {{}} in {template!r}",
                "name the field, e.g. {date}",
            )

    def render(self, chunk: Chunk, output: str) -> str:
        """Render one chunk's target path.

        Raises:
            PlanError: If a field is missing from the chunk or its value is unsafe in a path.
        """
        values = chunk.template_fields()
        for name in self.chunk_fields:
            if name not in values:
                near = difflib.get_close_matches(name, [*values, "output"], n=1, cutoff=0.5)
                use = (f"write {{{near[0]}}} (the nearest of those fields) in place of {{{name}}}, or another "
                       "of them" if near else f"use one of those fields in place of {{{name}}}")
                raise PlanError(
                    f"template fields that chunk {chunk.key!r} has "
                    f"({', '.join(sorted(values))}, output)",
                    f"{{{name}}} in target {self.template!r}",
                    f"{use}, or add {name!r} to the plan's chunks",
                    where=f"chunk {chunk.key}",
                )
            text = str(values[name])
            if not text or any(c in text for c in _UNSAFE) or text in (".", ".."):
                raise PlanError(
                    f"a value safe in one path segment for field {{{name}}} "
                    "(no '/', '\\', and not '.' or '..' or empty)",
                    repr(text),
                    "change the plan so this field holds a plain name, or use another "
                    "field (e.g. {index}) in the template",
                    where=f"chunk {chunk.key}",
                )
        values["output"] = output
        return self.template.format_map(values)

    def render_all(self, chunks: Iterable[Chunk], output: str) -> list[str]:
        """Render every chunk's target, checking the paths are distinct.

        The check keeps a set of the paths (not a path → chunk map): a second pass finds
        the first owner only when there is a duplicate.

        Raises:
            PlanError: On the first bad chunk, or if two chunks render the same path.
        """
        chunks = list(chunks) if not isinstance(chunks, list) else chunks
        paths: list[str] = []
        seen: set[str] = set()
        for chunk in chunks:
            path = self.render(chunk, output)
            if path in seen:
                first = next(c.key for c, p in zip(chunks, paths) if p == path)
                raise PlanError(
                    "one target path per chunk",
                    f"chunks {first!r} and {chunk.key!r} both rendering {path!r}",
                    "put a field that differs between chunks (e.g. {key} or {date}) "
                    "into the target template",
                )
            seen.add(path)
            paths.append(path)
        return paths
