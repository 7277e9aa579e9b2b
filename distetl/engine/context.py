"""What a chunk's extract gets besides the chunk: its :class:`ChunkContext` (inputs,
declared sources, storage) and the :class:`InputFiles` of its inputs.

Plain Python: no Prefect, no Dask. Runs on the worker, inside :mod:`distetl.engine.execute`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from distetl.errors import ChunkError
from distetl.model.chunks import Chunk
from distetl.storage import Storage

__all__ = ["ChunkContext", "InputFiles"]


class InputFiles(list):
    """A chunk's committed input files: every file (a list, in input order), and each
    input's files by name (``ctx.inputs["orders"]``)."""

    def __init__(self, by_name: Any = ()):
        if isinstance(by_name, Mapping):
            self.by_name: dict[str, list[str]] = {k: list(v) for k, v in by_name.items()}
            super().__init__(path for paths in self.by_name.values() for path in paths)
        else:
            self.by_name = {}
            super().__init__(by_name)

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, str):
            if item not in self.by_name:
                raise ChunkError(f"an input name of this stage ({', '.join(self.by_name) or 'none'})", repr(item),
                                 "use one of the names given in inputs=... (ctx.inputs.by_name lists them)")
            return self.by_name[item]
        return super().__getitem__(item)


@dataclass
class ChunkContext:
    """What a chunk's extract may use besides the chunk itself.

    Attributes:
        chunk: The chunk being run.
        output: The run's output root.
        storage_options: fsspec options of the run (credentials included; do not log).
        inputs: The chunk's committed upstream files (:class:`InputFiles`: all of them as a
            list, each input's with ``ctx.inputs["name"]``).
        input_root: The first input's dataset root (for its partition columns).
        stage: The stage's name.
        input_roots: Each input's dataset root, by input name.
        sources: Each declared source's files, by source name (listed at plan time).
        pipeline: The pipeline's name.
    """

    chunk: Chunk
    output: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    inputs: Sequence[str] = ()
    input_root: Optional[str] = None
    stage: str = ""
    #: The record written with the chunk's file (set when it is produced).
    record: Optional[dict[str, Any]] = field(default=None, repr=False)
    input_roots: Mapping[str, str] = field(default_factory=dict)
    sources: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: The pipeline's name (where the stage's quarantined rows go).
    pipeline: str = ""

    def _input(self, name: Optional[str]) -> tuple[list[str], Optional[str]]:
        """The files and dataset root of input ``name`` (None: the only input)."""
        by_name = getattr(self.inputs, "by_name", None) or {}
        where = f"chunk {self.chunk.key}" + (f" of stage {self.stage}" if self.stage else "")
        if name is None:
            if len(by_name) > 1:
                raise ChunkError(f"an input name: this stage has several ({', '.join(by_name)})", "none",
                                 f"call ctx.read_inputs({next(iter(by_name))!r}) (one per input)", where=where)
            name = next(iter(by_name), None)
            files = list(self.inputs)
        else:
            if name not in by_name:
                raise ChunkError(f"an input of this stage ({', '.join(by_name) or 'none'})", repr(name),
                                 "use a name given in inputs=...", where=where)
            files = by_name[name]
        root = self.input_roots.get(name) if name is not None else None
        return files, root or self.input_root

    def read_inputs_table(self, name: Any = None, columns: Optional[Sequence[str]] = None) -> Any:
        """One input's committed upstream files as one Arrow table, partition columns
        (``name=value`` directories of the upstream target) restored from the paths.

        Args:
            name: The input's name (may be left out when the stage has one input).
            columns: Read only these columns (default: all).
        """
        import pyarrow.dataset as ds

        if name is not None and not isinstance(name, str) and columns is None:
            name, columns = None, list(name)  # read_inputs_table(["a", "b"]): columns, as before
        files, root = self._input(name)
        if not files:
            if not self.inputs and not getattr(self.inputs, "by_name", None):
                raise ChunkError(
                    "upstream input files for this chunk", "none",
                    "read inputs only in a downstream stage (one with upstream=... or inputs=...)",
                    where=f"chunk {self.chunk.key}",
                )
        storage = self.storage(files[0] if files else self.output)
        paths = [storage.strip(p) for p in files]
        options: dict[str, Any] = {"format": "parquet", "partitioning": "hive"}
        if root:
            options["partition_base_dir"] = storage.strip(root)
        if not storage.is_local:
            options["filesystem"] = storage.fs
        return ds.dataset(paths, **options).to_table(columns=list(columns) if columns else None)

    def read_inputs(self, name: Any = None, columns: Optional[Sequence[str]] = None) -> Any:
        """One input's committed upstream files as one pandas DataFrame (see
        :meth:`read_inputs_table`)."""
        return self.read_inputs_table(name, columns).to_pandas()

    def storage(self, url: str) -> Storage:
        """The storage for a source URL, with the run's storage options."""
        return Storage.for_url(url, self.storage_options)

    def open(self, url: str, mode: str = "rb", **kwargs: Any):
        """Open a source file through fsspec with the run's storage options."""
        return self.storage(url).open(url, mode, **kwargs)

    def filesystem(self, url: str):
        """The fsspec filesystem for a URL (e.g. to hand to pandas or pyarrow)."""
        return self.storage(url).fs
