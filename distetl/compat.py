"""Old module paths: ``distetl.execute`` and friends keep importing after the move to layers.

distetl's modules used to sit in one flat folder; they now live in subpackages by layer
(:mod:`distetl.model`, :mod:`distetl.state`, :mod:`distetl.storage`, :mod:`distetl.engine`,
:mod:`distetl.ops`). Flow files and scripts that imported a module by its old path
(``from distetl.mappings import CalendarWindow``) keep working: a finder on
``sys.meta_path`` answers the old name with the new module itself (one module object,
not a copy). :data:`MOVED` also gives code versions their stable names (see
:func:`stable_module`), so moving a module changes no committed chunk's code version.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Optional, Sequence

__all__ = ["MOVED", "install", "stable_module"]

#: Old flat module name (under ``distetl.``) -> its module under a layer.
MOVED: dict[str, str] = {
    "listing": "storage.listing",
    "chunks": "model.chunks",
    "chunkseq": "model.chunkseq",
    "dates": "model.dates",
    "plans": "model.plans",
    "templates": "model.templates",
    "partitions": "model.partitions",
    "schema": "model.schema",
    "mappings": "model.mappings",
    "stages": "model.stages",
    "graph": "model.graph",
    "pipeline": "model.pipeline",
    "targets": "model.targets",
    "codeversion": "model.codeversion",
    "records": "state.records",
    "staleness": "state.staleness",
    "lease": "state.lease",
    "ledger": "state.ledger",
    "manifest": "state.manifest",
    "leftovers": "state.leftovers",
    "backfill": "engine.backfill",
    "flow": "engine.flow",
    "dispatch": "engine.dispatch",
    "execute": "engine.execute",
    "packing": "engine.packing",
    "stopping": "engine.stopping",
    "progress": "engine.progress",
    "runners": "engine.runners",
    "loader": "engine.loader",
    "quietclose": "engine.quietclose",
    "prefect_api": "engine.prefect_api",
    "watch": "engine.watch",
    "serve": "ops.serve",
    "_serve": "engine.uvicorn_child",
    "alerts": "ops.alerts",
    "ui": "ops.ui",
    "clusters": "ops.clusters",
    "cluster": "ops.up",
}
_BY_NEW = {f"distetl.{new}": f"distetl.{old}" for old, new in MOVED.items()}
_BY_NEW["distetl.state.results"] = "distetl.execute"  # ChunkResult and its statuses
_BY_NEW["distetl.engine.context"] = "distetl.execute"  # ChunkContext, InputFiles
_BY_NEW["distetl.engine.clusters"] = "distetl.clusters"  # what the engine needs of cluster classes
_BY_NEW["distetl.engine.servers"] = "distetl.ui"  # which Prefect servers are live on a database
_BY_NEW["distetl.ops.schedules"] = "distetl.serve"  # serve's command line and schedules
#: Modules that became packages of several modules.
_SPLIT = ("distetl.storage", "distetl.model.mappings")


def stable_module(name: str) -> str:
    """The name a distetl module had before the move (unchanged for any other module).

    Code versions hash references to library objects by module and name; using the old
    name keeps every committed chunk's code version as it was.
    """
    if name in _BY_NEW:
        return _BY_NEW[name]
    for package in _SPLIT:  # a module split into a package counts as the old module
        if name.startswith(package + "."):
            return stable_module(package)
    return name


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:  # the target is already executed
        return None


class _OldPaths(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        if not fullname.startswith("distetl."):
            return None
        new = MOVED.get(fullname[len("distetl."):])
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(f"distetl.{new}"))


def install() -> None:
    """Put the old-path finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
        sys.meta_path.append(_OldPaths())
