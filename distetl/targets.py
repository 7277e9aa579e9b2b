"""Parquet targets: where each chunk's file goes, and which are already committed."""

from __future__ import annotations

import posixpath
import string
from typing import Any, Mapping, Sequence

from distetl.chunks import Chunk
from distetl.storage import Storage
from distetl.templates import TargetTemplate

__all__ = ["Targets"]


class Targets:
    """Rendered targets of one run.

    Args:
        template: The pipeline's target template.
        output: The output root (``{output}``), a local path or URL.
        storage_options: fsspec options for the output's filesystem.
    """

    def __init__(self, template: str, output: str, storage_options: Mapping[str, Any] | None = None):
        self.template = TargetTemplate(template)
        self.storage = Storage.for_url(output, storage_options)
        self.output = self.storage.normalize(output)
        #: Hidden files (``.``-names) seen by :meth:`committed`'s listing; None before it.
        self.hidden: set[str] | None = None
        #: Committed target → its listing stamp (size and mtime or ETag), from the same listing.
        self.stamps: dict[str, str] = {}

    def render(self, chunks: Sequence[Chunk]) -> list[str]:
        """Every chunk's target path, checked at plan time (see TargetTemplate)."""
        return self.template.render_all(chunks, self.output)

    def listing_root(self) -> str:
        """The deepest directory that holds every target: the template up to its first
        chunk field, cut back to a directory boundary."""
        literal = []
        for text, name, spec, conv in string.Formatter().parse(self.template.template):
            literal.append(text)
            if name and name != "output":
                break
            if name == "output":
                literal.append(self.output)
        prefix = "".join(literal)
        return posixpath.dirname(prefix) if not prefix.endswith("/") else prefix.rstrip("/")

    def committed(self, paths: Sequence[str]) -> set[str]:
        """Which of ``paths`` exist, found with one recursive listing of the common root
        (its hidden files are kept in :attr:`hidden`, for the leftovers of killed writes)."""
        present = self.storage.list_stamps(self.listing_root())
        self.hidden = {p for p in present if posixpath.basename(p).startswith(".")}
        self.stamps = {p: present[p] for p in paths if p in present}
        return set(self.stamps)
