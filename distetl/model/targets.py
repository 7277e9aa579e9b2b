"""Parquet targets: where each chunk's file goes, and which are already committed."""

from __future__ import annotations

import posixpath
import string
from array import array
from collections.abc import Sequence as SequenceABC
from typing import Any, Iterator, Mapping, Optional, Sequence

from distetl.model.chunks import Chunk
from distetl.model.chunkseq import ChunkSeq, IndexSet
from distetl.errors import PlanError
from distetl.storage import Storage
from distetl.model.templates import TargetTemplate

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
        self._stamps: Optional[dict[str, str]] = {}
        #: After :meth:`plan`: the hash of each committed chunk's listing stamp (NumPy,
        #: in chunk order) and every chunk's two path hash keys.
        self.committed_stamps: Any = None
        self.keys: Any = None
        self._planned: Optional[tuple[TargetPaths, IndexSet]] = None

    def render(self, chunks: Sequence[Chunk]) -> list[str]:
        """Every chunk's target path, checked at plan time (see TargetTemplate)."""
        return self.template.render_all(chunks, self.output)

    def plan(self, chunks: Sequence[Chunk]) -> tuple[TargetPaths, IndexSet]:
        """Render and check every chunk's target and find the committed ones, in one pass
        over the chunks and one recursive listing of the common root, held as columns.

        Keeps two 64-bit hash keys per path (for the duplicate check, the committed
        check and the records' lookup: :attr:`keys`), the hash of each committed
        chunk's stamp (:attr:`committed_stamps`, in chunk order) and the listing's hidden files
        (:attr:`hidden`) -- never a string per chunk; the listing itself is dropped.

        Returns:
            The paths (rendered on demand from now on) and the committed chunk indexes.

        Raises:
            PlanError: On the first chunk whose path cannot be rendered, or two chunks
                rendering one path.
        """
        import numpy as np

        listing = self.storage.list_table(self.listing_root())
        self.hidden = listing.hidden()
        first, second = array("q"), array("q")
        for path in self._render_all(chunks):
            first.append(hash(path))
            second.append(hash(path + "\x00"))
        keys = (np.frombuffer(first, dtype=np.int64) if len(first) else np.empty(0, np.int64),
                np.frombuffer(second, dtype=np.int64) if len(second) else np.empty(0, np.int64))
        self.keys = keys
        paths = TargetPaths(self.template, chunks, self.output)
        _check_distinct(keys, chunks, paths)
        rows = listing.find(*keys) if len(listing) else np.full(len(chunks), -1, dtype=np.int64)
        found = rows >= 0
        committed = IndexSet.from_mask(found)
        self.committed_stamps = listing.stamp_keys(rows[found])
        self._planned = (paths, committed)
        self._stamps = None
        return paths, committed

    def _render_all(self, chunks: Sequence[Chunk]) -> Iterator[str]:
        """Every chunk's path, checked. A generated plan whose values are safe by
        construction is checked on its first chunk and formatted directly after it."""
        render, output = self.template.render, self.output
        if isinstance(chunks, ChunkSeq) and chunks.safe_values and len(chunks):
            yield render(chunks[0], output)  # raises for a field the chunks lack
            values_of, fmt = chunks.template_values, self.template.template.format_map
            for i in range(1, len(chunks)):
                values = values_of(i)
                values["output"] = output
                yield fmt(values)
            return
        for chunk in chunks:
            yield render(chunk, output)

    @property
    def stamps(self) -> dict[str, str]:
        """Committed target → its listing stamp (built on first use after :meth:`plan`:
        a dict of every committed file; planning itself never needs it)."""
        if self._stamps is None:
            if self._planned is None:
                return {}
            paths, committed = self._planned
            present = self.storage.list_stamps(self.listing_root())
            self._stamps = {path: present[path] for path in (paths[i] for i in committed) if path in present}
        return self._stamps

    @stamps.setter
    def stamps(self, value: dict[str, str]) -> None:
        self._stamps = value

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


def _check_distinct(keys: tuple[Any, Any], chunks: Sequence[Chunk], paths: TargetPaths) -> None:
    """Fail when two chunks render one path. Repeated first hash keys are confirmed on
    the paths themselves (a second pass, only when some key repeats)."""
    import numpy as np

    values = keys[0]
    ordered = np.sort(values)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(repeated):
        return
    owner: dict[str, str] = {}
    for i in np.flatnonzero(np.isin(values, repeated)).tolist():
        path, key = paths[i], chunks[i].key
        if path in owner:
            raise PlanError(
                "one target path per chunk",
                f"chunks {owner[path]!r} and {key!r} both rendering {path!r}",
                "put a field that differs between chunks (e.g. {key} or {date}) into the target template",
            )
        owner[path] = key
