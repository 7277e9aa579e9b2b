"""The package's layers, read from the imports: lower layers never import upper ones.

Layers, lowest first: the foundation (``errors``, ``compat``, ``version``), ``storage``, ``model``,
``state``, ``engine``, ``ops``, then the CLI and the public ``distetl`` namespace. Every
import counts, at module level or inside a function: a function-level import of an
upper layer is the same dependency, only hidden.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "distetl"
LAYERS = ["foundation", "storage", "model", "state", "engine", "ops", "top"]
FOUNDATION = {"distetl.errors", "distetl.compat", "distetl.version"}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return parts[1]
    return "top"


def _imports(path: pathlib.Path) -> list[tuple[str, int, bool]]:
    """(imported distetl module, line, at module level) for every import in a file."""
    tree = ast.parse(path.read_text())
    found = []
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.split(".")[0] == "distetl"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "distetl":
            names = [node.module]
            if node.module == "distetl" or _is_package(node.module):
                names += [f"{node.module}.{a.name}" for a in node.names
                          if _exists(f"{node.module}.{a.name}")]
        for name in names:
            found.append((name, node.lineno, id(node) in top_level))
    return found


def _is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()


def _exists(module: str) -> bool:
    base = PACKAGE.parent / module.replace(".", "/")
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_layer_and_the_top_stays_small():
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= 8, f"Expected at most 8 modules directly in distetl/; got {len(top)}: {sorted(top)}"
    for sub in PACKAGE.iterdir():
        if sub.is_dir() and not sub.name.startswith("__"):
            assert sub.name in LAYERS, f"Expected every subpackage to be a layer {LAYERS}; got {sub.name}"
            doc = ast.get_docstring(ast.parse((sub / "__init__.py").read_text()))
            assert doc and "import" in doc, f"Expected {sub.name}/__init__.py to say what it owns and may import"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_an_upper_layer(path):
    module = _module_name(path)
    mine = LAYERS.index(_layer(module))
    upward = [f"line {line}: {name} ({_layer(name)})" for name, line, _ in _imports(path)
              if LAYERS.index(_layer(name)) > mine]
    assert not upward, f"Expected {module} ({_layer(module)}) to import no upper layer; got {upward}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_800_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= 800, f"Expected at most 800 lines in {path.relative_to(PACKAGE)}; got {lines}"


def test_no_import_cycle_at_module_level():
    graph = {}
    for path in MODULES:
        graph[_module_name(path)] = {name for name, _, top in _imports(path) if top and name != _module_name(path)}
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if seen.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError(f"Expected no import cycle at module level; got {' -> '.join(cycle)}")
            if nxt not in seen:
                visit(nxt)
        stack.pop()
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node)


def test_the_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from distetl.ops.ui import running_ui\n")
    assert [(n, top) for n, _, top in _imports(bad)] == [("distetl.ops.ui", False)]
    assert LAYERS.index(_layer("distetl.ops.ui")) > LAYERS.index(_layer("distetl.model.plans"))
