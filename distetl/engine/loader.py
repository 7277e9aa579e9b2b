"""Loading a pipeline from a flow file, so its code can travel to workers that never saw it;
reading its plan parameters from the command line."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import sys
from types import ModuleType
from typing import Any, Sequence

from dataclasses import dataclass

from distetl.errors import ConfigError, DistetlError
from distetl.model.pipeline import Pipeline

__all__ = ["FlowSource", "load_pipeline", "plan_params", "loaded_sources", "sources_for", "ensure_modules"]


@dataclass(frozen=True)
class FlowSource:
    """The source of a flow file loaded by path: shipped to workers that lack it."""

    module: str
    path: str
    source: str


_SOURCES: dict[str, FlowSource] = {}
#: Flow module → the modules from its own folder it imported (shipped with it, first).
_BESIDE: dict[str, list[str]] = {}


def loaded_sources() -> list[FlowSource]:
    """Flow files loaded by path in this process."""
    return list(_SOURCES.values())


def sources_for(blob: bytes) -> list[FlowSource]:
    """The flow files a pickled pipeline refers to (by module name), among those loaded.

    Only these travel with its batches: another flow file loaded in the same process
    (a notebook, a test session) is not shipped, so a broken one cannot fail this run.
    """
    import pickletools

    names: set[str] = set()
    try:
        for _, arg, _ in pickletools.genops(blob):
            if isinstance(arg, str) and arg in _SOURCES:
                names.add(arg)
    except Exception:  # noqa: BLE001 - unreadable pickle: ship every loaded flow file
        return loaded_sources()
    for name in list(names):
        names.update(_BESIDE.get(name, ()))
    return [src for name, src in _SOURCES.items() if name in names]


def ensure_modules(sources: list[FlowSource]) -> None:
    """Make shipped flow modules importable in this (worker) process.

    A module shipped earlier with other source (the flow file was edited between two
    runs on a long-lived cluster) is executed again, so workers never run stale code.
    A module this process loaded from the file itself (or installed) is left alone.
    Modules from the flow's folder come before the flow that imports them; a package's
    ``__init__`` becomes a package (its submodules, shipped too, import from it).
    """
    for src in sources:
        previous = sys.modules.get(src.module)
        if previous is not None and getattr(previous, "__distetl_source__", src.source) == src.source:
            continue
        module = ModuleType(src.module)
        module.__file__ = src.path
        if os.path.basename(src.path) == "__init__.py":
            module.__path__ = []  # type: ignore[attr-defined]
        module.__distetl_source__ = src.source  # type: ignore[attr-defined]
        sys.modules[src.module] = module
        try:
            exec(compile(src.source, src.path, "exec"), module.__dict__)
        except BaseException:
            if previous is not None:
                sys.modules[src.module] = previous
            else:
                del sys.modules[src.module]
            raise


def _module_from_path(path: str) -> ModuleType:
    full = os.path.abspath(path)
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(full))[0])
    name = f"distetl_flow_{stem}"
    shipped = sys.modules.get(name)
    if shipped is not None and getattr(shipped, "__distetl_source__", None) is not None:
        # On a worker: a flow file that loads a sibling flow file (a multi-stage flow
        # reusing another's stage) finds the sibling already shipped with the batch.
        return shipped
    if not os.path.isfile(full):
        raise ConfigError(
            "a flow file (e.g. flows/nycflights.py) or module:attribute",
            f"{path!r}, which does not exist",
            "pass the path of a .py file that defines a distetl Pipeline",
        )
    spec = importlib.util.spec_from_file_location(name, full)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    directory = os.path.dirname(full)
    added = directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    before = set(sys.modules)
    try:
        spec.loader.exec_module(module)
    except DistetlError:
        sys.modules.pop(name, None)
        raise
    except Exception as exc:  # the flow file's own error: its frames only, exit 2
        sys.modules.pop(name, None)
        raise _load_error(path, full, directory, exc) from None
    finally:
        if added:
            sys.path.remove(directory)
    beside = _ship_beside(directory, [m for m in sys.modules if m not in before and m != name])
    _BESIDE[name] = list(dict.fromkeys([*_BESIDE.get(name, ()), *beside]))  # a reload imports nothing new
    with open(full, encoding="utf-8") as handle:
        _SOURCES[name] = FlowSource(name, full, handle.read())
    return module


def _load_error(path: str, full: str, directory: str, exc: BaseException) -> ConfigError:
    """A flow file that raises while it is imported, as a ConfigError naming the line,
    with the frames of the flow's own files only (not distetl's or importlib's)."""
    import traceback

    root = os.path.join(directory, "")
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.abspath(f.filename).startswith(root)]
    where = f" ({path}:{frames[-1].lineno})" if frames else ""
    shown = "".join(f"\n  File {f.filename!r}, line {f.lineno}: {f.line}" for f in frames[-5:])
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return ConfigError(
        f"the flow file {path} to load",
        f"loading {path} raised {type(exc).__name__}: {text}{where}{shown}",
        "fix the flow file at that line (or set what it reads there, e.g. an environment variable)",
    )


def _ship_beside(directory: str, imported: Sequence[str]) -> list[str]:
    """Keep the source of the modules the flow file imported from its own folder (a
    ``helpers.py`` beside it, a package under it) so they travel with it: a worker on
    another host has the flow's folder neither on disk nor on its path. Returns their
    names, in import order (a package before its submodules)."""
    root = os.path.join(os.path.abspath(directory), "")
    out = []
    for module_name in imported:
        path = getattr(sys.modules.get(module_name), "__file__", None)
        if not path or not path.endswith(".py") or not os.path.abspath(path).startswith(root):
            continue
        if module_name not in _SOURCES:
            with open(path, encoding="utf-8") as handle:
                _SOURCES[module_name] = FlowSource(module_name, os.path.abspath(path), handle.read())
        out.append(module_name)
    return out


def load_pipeline(ref: str) -> Pipeline:
    """Load the Pipeline a flow file (or ``package.module:attr``) defines.

    A flow file's source is kept (:func:`loaded_sources`) and shipped with every task, so
    Dask workers that never saw the file run it (:func:`ensure_modules`), with the
    modules it imports from its own folder (a ``helpers.py`` beside it, a package under
    it). Code the file imports from elsewhere must be installed on the workers.

    Raises:
        ConfigError: If the file is missing or defines no (or several) pipelines.
    """
    attr = None
    if ref.endswith(".py") or os.path.sep in ref or os.path.isfile(ref):
        module = _module_from_path(ref)
    else:
        mod_name, _, attr = ref.partition(":")
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise ConfigError(
                "an importable flow module or a .py path", f"{ref!r} ({exc})",
                "pass a path like flows/nycflights.py",
            ) from None
    if attr:
        found = getattr(module, attr, None)
        candidates = {attr: found} if isinstance(found, Pipeline) else {}
    elif isinstance(getattr(module, "pipeline", None), Pipeline):
        candidates = {"pipeline": module.pipeline}
    else:
        candidates = {k: v for k, v in vars(module).items() if isinstance(v, Pipeline)}
    if len(candidates) != 1:
        raise ConfigError(
            f"one distetl Pipeline in {ref} (named `pipeline`, or pick one with module:attr)",
            f"{len(candidates)} ({', '.join(candidates) or 'none'})",
            "define `pipeline = Pipeline(...)` at module level",
        )
    return next(iter(candidates.values()))


def plan_params(pipeline: Any, extra: Sequence[str]) -> dict[str, str]:
    """The plan parameters given on the command line after distetl's own options
    (``--start 2024-01-01``), for ``distetl run`` and ``distetl serve``.

    Args:
        pipeline: The loaded pipeline; its plans name the parameters they take.
        extra: The arguments distetl's own parser did not know.

    Returns:
        Parameter name -> value (text), for the parameters given.

    Raises:
        DistetlError: On an argument that is neither distetl's nor a plan parameter.
    """
    plans = [s.plan for s in pipeline.all_stages if s.plan is not None]
    names = list(dict.fromkeys(n for p in plans for n in p.param_names()))
    group = argparse.ArgumentParser(prog="distetl run FLOW (plan parameters)", add_help=False)
    for name in names:
        default = next(getattr(p, name) for p in plans if name in p.param_names())
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                           help=f"plan parameter (default {default!r})")
    known, unknown = group.parse_known_args(list(extra))
    if unknown:
        options = ", ".join(f"--{n.replace('_', '-')}" for n in names)
        raise DistetlError(
            f"options of distetl or of the plan ({options})", " ".join(unknown),
            "check the spelling; `distetl run --help` lists distetl's options",
        )
    return {k: v for k, v in vars(known).items() if v is not None}
