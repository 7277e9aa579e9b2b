"""Parquet targets: where each chunk's file goes, and which are already committed."""

from __future__ import annotations

import posixpath
import string
from array import array
from collections.abc import Sequence as SequenceABC
from typing import Any, Iterator, Mapping, Sequence

from distetl.chunks import Chunk
from distetl.chunkseq import IndexSet
from distetl.errors import PlanError
from distetl.storage import Storage
from distetl.templates import TargetTemplate

__all__ = ["Targets", "TargetPaths"]


class TargetPaths(SequenceABC):
    """Every chunk's target path, rendered on demand from the template (checked once at
    plan time by :meth:`Targets.plan`), so a plan holds no string per chunk.

    Args:
        template: The target template.
        chunks: The stage's chunks.
        output: The output root the paths are rendered with.
    """

    def __init__(self, template: TargetTemplate, chunks: Sequence[Chunk], output: str):
        self.template = template
        self.chunks = chunks
        self.output = output

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self.template.render(c, self.output) for c in self.chunks[i]]
        return self.template.render(self.chunks[i], self.output)

    def __iter__(self) -> Iterator[str]:
        render, output = self.template.render, self.output
        for chunk in self.chunks:
            yield render(chunk, output)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, TargetPaths)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"TargetPaths({len(self)} from {self.template.template!r})"


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

    def plan(self, chunks: Sequence[Chunk]) -> tuple[TargetPaths, IndexSet]:
        """Render and check every chunk's target and find the committed ones, in one pass
        over the chunks and one recursive listing of the common root.

        Keeps a 64-bit hash per path for the duplicate check (not the paths), the
        listing's stamps of the committed targets in :attr:`stamps` and its hidden files
        in :attr:`hidden`.

        Returns:
            The paths (rendered on demand from now on) and the committed chunk indexes.

        Raises:
            PlanError: On the first chunk whose path cannot be rendered, or two chunks
                rendering one path.
        """
        present = self.storage.list_stamps(self.listing_root())
        self.hidden = {p for p in present if posixpath.basename(p).startswith(".")}
        committed = IndexSet(len(chunks))
        stamps: dict[str, str] = {}
        hashes = array("q")
        render, output, get = self.template.render, self.output, present.get
        for i, chunk in enumerate(chunks):
            path = render(chunk, output)
            hashes.append(hash(path))
            stamp = get(path)
            if stamp is not None:
                committed.add(i)
                stamps[path] = stamp
        del present
        self.stamps = stamps
        paths = TargetPaths(self.template, chunks, self.output)
        _check_distinct(hashes, chunks, paths)
        return paths, committed

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


def _check_distinct(hashes: array, chunks: Sequence[Chunk], paths: TargetPaths) -> None:
    """Fail when two chunks render one path. Equal hashes are confirmed on the paths
    themselves (a second pass, only when some hash repeats)."""
    import numpy as np

    values = np.frombuffer(hashes, dtype=np.int64) if len(hashes) else np.empty(0, np.int64)
    ordered = np.sort(values)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(repeated):
        return
    suspects = set(repeated.tolist())
    owner: dict[str, str] = {}
    for i in np.flatnonzero(np.isin(values, list(suspects))).tolist():
        path, key = paths[i], chunks[i].key
        if path in owner:
            raise PlanError(
                "one target path per chunk",
                f"chunks {owner[path]!r} and {key!r} both rendering {path!r}",
                "put a field that differs between chunks (e.g. {key} or {date}) into the target template",
            )
        owner[path] = key
