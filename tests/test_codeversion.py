"""Code versions follow what the code does, not its text.

Every test writes flow-file-like modules into ``tmp_path`` as real ``.py`` files,
imports each under its own module name and compares the versions of two variants.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType

import pytest

from distetl.model.codeversion import code_version

_names = itertools.count()

BASE = '''
import functools

import pandas as pd

SCALE = 3
LABELS = {"b": 2, "a": 1}


def unused(x):
    return x * 100


def _factor(x):
    return x * SCALE


def helper(x, offset=1):
    if x is None:
        return None
    limit = 10
    return min(_factor(x) + offset, limit)


def transform(df):
    """Add a column."""
    # the derived column
    key = lambda v: v % 7
    def inner(v):
        return v - 2
    values = [helper(inner(key(v))) for v in df["x"]]
    return df.assign(y=values, label=LABELS["a"])
'''


@pytest.fixture
def load(tmp_path: Path):
    """Imports a source text as a fresh module; forgets the modules afterwards."""
    loaded: list[str] = []

    def _load(source: str, name: str | None = None, path_name: str | None = None) -> ModuleType:
        name = name or f"cv_flow_{os.getpid()}_{next(_names)}"
        path = tmp_path / f"{path_name or name}.py"
        path.write_text(textwrap.dedent(source))
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loaded.append(name)
        spec.loader.exec_module(module)
        return module

    yield _load
    for name in loaded:
        sys.modules.pop(name, None)


def variant(source: str, old: str, new: str) -> str:
    """``source`` with ``old`` replaced once; fails if ``old`` is not there."""
    assert source.count(old) == 1, old
    return source.replace(old, new)


@pytest.fixture
def version(load):
    """The version of ``transform`` (or another function) in a module made from source."""
    def _version(source: str, func: str = "transform") -> str:
        return code_version(getattr(load(source), func))
    return _version


def test_shape_and_sanity(load):
    module = load(BASE)
    v = code_version(module.transform)
    assert re.fullmatch(r"[0-9a-f]{16}", v)
    assert v == code_version(module.transform)  # stable within a process
    assert v != code_version(module.helper)
    assert code_version(None, module.transform) != code_version(module.transform, None)
    # The transform really runs: the versions below are of working code.
    import pandas as pd
    out = module.transform(pd.DataFrame({"x": [1, 2, 30]}))
    assert list(out["y"]) == [-2, 1, 1] and list(out["label"]) == [1, 1, 1]


# -- edits that change nothing -------------------------------------------------------

@pytest.mark.parametrize("edit", [
    pytest.param(lambda s: variant(s, "    # the derived column\n",
                                   "    # a much longer comment\n    # on two lines\n"), id="comment"),
    pytest.param(lambda s: variant(s, "    return x * SCALE\n", "    return x * SCALE  # scaled\n"),
                 id="trailing-comment"),
    pytest.param(lambda s: variant(s, '"""Add a column."""', '"""Add y.\n\n    Args:\n        df: rows.\n    """'),
                 id="docstring-edited"),
    pytest.param(lambda s: variant(s, '    """Add a column."""\n', ""), id="docstring-removed"),
    pytest.param(lambda s: variant(s, "def helper(x, offset=1):\n",
                                   'def helper(x, offset=1):\n    """Now with a docstring."""\n'),
                 id="docstring-added-to-helper"),
    pytest.param(lambda s: variant(s, "    return min(_factor(x) + offset, limit)\n",
                                   "    return min(\n        _factor(x)   +   offset,\n\n        limit,\n    )\n"),
                 id="reformatted"),
    pytest.param(lambda s: variant(s, "    values = [", "\n\n\n    values = ["), id="blank-lines"),
    pytest.param(lambda s: "\n" * 40 + "# header\n\ndef extra_unrelated():\n    return 1\n" + s,
                 id="moved-down"),
    pytest.param(lambda s: s.replace("def unused", "def _moved").split("\ndef _factor")[0]
                 + "\n\ndef transform_first():\n    pass\n" + "\ndef _factor" + s.split("\ndef _factor")[1],
                 id="unrelated-function-inserted-between"),
    pytest.param(lambda s: variant(s, "    return x * 100\n", "    return x * 200 + 1\n"),
                 id="unused-function-changed"),
    pytest.param(lambda s: variant(s, "    limit = 10\n    return min(_factor(x) + offset, limit)",
                                   "    cap = 10\n    return min(_factor(x) + offset, cap)"),
                 id="local-variable-renamed"),
    pytest.param(lambda s: variant(s, 'LABELS = {"b": 2, "a": 1}', 'LABELS = {"a": 1, "b": 2}'),
                 id="dict-constant-key-order"),
])
def test_edits_that_change_nothing(version, edit):
    edited = edit(BASE)
    assert edited != BASE
    assert version(edited) == version(BASE)


def test_reordered_definitions_keep_the_version(version):
    # The transform first, its helpers below it: every line number differs.
    head, transform = BASE.split("\ndef transform(df):")
    reordered = "\ndef transform(df):" + transform + "\n" + head
    assert version(reordered) == version(BASE)


@pytest.mark.parametrize("compact,spread,old,new", [
    pytest.param("def transform(a):\n    try: return a\n    except ValueError: return 1\n",
                 "def transform(a):\n    try:\n        return a\n    except ValueError:\n        return 1\n",
                 "ValueError", "KeyError", id="one-line-try"),
    pytest.param("def transform(a):\n    with a as b: pass\n",
                 "def transform(a):\n    with (\n        a as b\n    ):\n        pass\n",
                 "pass", "return b", id="parenthesised-with"),
])
def test_line_tracing_nops_do_not_count(load, compact, spread, old, new):
    # The compiler keeps NOPs only so that tracing can report a line: the raw
    # bytecode differs between these layouts, the version does not.
    one, two = load(compact).transform, load(spread).transform
    assert one.__code__.co_code != two.__code__.co_code
    assert code_version(one) == code_version(two)
    assert code_version(one) != code_version(load(variant(compact, old, new)).transform)


# -- edits that change the version ---------------------------------------------------

@pytest.mark.parametrize("old,new", [
    pytest.param("    limit = 10\n", "    limit = 11\n", id="constant-in-helper"),
    pytest.param("SCALE = 3\n", "SCALE = 4\n", id="module-constant-used-by-helper-of-helper"),
    pytest.param('LABELS = {"b": 2, "a": 1}', 'LABELS = {"b": 2, "a": 5}', id="dict-constant-value"),
    pytest.param("def helper(x, offset=1):", "def helper(x, offset=2):", id="default-argument"),
    pytest.param("        return v - 2\n", "        return v - 3\n", id="nested-function-body"),
    pytest.param("lambda v: v % 7", "lambda v: v % 8", id="lambda-body"),
    pytest.param("    return x * SCALE\n", "    return x + SCALE\n", id="operator-in-helper"),
    pytest.param("df.assign(y=values", "df.assign(z=values", id="keyword-name"),
    pytest.param('df["x"]', 'df["w"]', id="string-constant"),
    pytest.param("def helper(x, offset=1):", "def helper(value, offset=1):\n    x = value", id="argument-name"),
    pytest.param("    if x is None:\n        return None\n", "", id="statement-removed"),
])
def test_edits_that_change_the_version(version, old, new):
    assert version(variant(BASE, old, new)) != version(BASE)


def test_keyword_default_and_closure_values_count(version):
    source = '''
    def make(step):
        def add(x, *, by=1):
            return x + step * by
        return add

    transform = make(2)
    '''
    assert version(source) != version(variant(source, "make(2)", "make(3)"))  # closure cell
    assert version(source) != version(variant(source, "by=1", "by=2"))  # __kwdefaults__
    assert version(source) == version(source.replace("    def make", "    # comment\n    def make"))


def test_partial_lru_cache_class_and_instances(version):
    source = '''
    import functools
    from dataclasses import dataclass

    def scale(x, factor):
        return x * factor

    triple = functools.partial(scale, factor=3)

    @functools.lru_cache(maxsize=None)
    def lookup(key):
        return {"a": 1}.get(key, 0)

    class Rounder:
        def __init__(self, digits):
            self.digits = digits

        def __call__(self, x):
            return round(x, self.digits)

    ROUND = Rounder(2)

    @dataclass
    class Options:
        margin: int = 5

    OPTIONS = Options()

    def transform(x):
        return ROUND(triple(x) + lookup("a") + OPTIONS.margin)
    '''
    base = version(source)
    assert version(variant(source, "factor=3", "factor=4")) != base  # partial arguments
    assert version(variant(source, '{"a": 1}', '{"a": 2}')) != base  # lru_cache-wrapped body
    assert version(variant(source, "round(x, self.digits)", "round(x, self.digits + 1)")) != base  # method
    assert version(variant(source, "Rounder(2)", "Rounder(3)")) != base  # instance state
    assert version(variant(source, "margin: int = 5", "margin: int = 6")) != base  # dataclass default
    assert version(variant(source, "class Rounder:", "class Rounder:\n        '''Rounds.'''")) == base


def test_mutual_recursion_terminates_and_is_followed(version):
    source = '''
    def is_even(n):
        return True if n == 0 else is_odd(n - 1)

    def is_odd(n):
        return False if n == 0 else is_even(n - 1)

    def countdown(n):
        return 0 if n <= 0 else countdown(n - 1)

    def transform(n):
        return is_even(n), countdown(n)
    '''
    started = time.perf_counter()
    base = version(source)
    assert time.perf_counter() - started < 5
    # is_odd is reached only through is_even, and still counts.
    assert version(variant(source, "return False if n == 0", "return None if n == 0")) != base
    assert version(variant(source, "countdown(n - 1)", "countdown(n - 2)")) != base


def test_library_code_counts_by_name_only(load, version, monkeypatch):
    import pandas as pd

    source = '''
    import pandas as pd
    from pandas import DataFrame

    make = DataFrame

    def transform(rows):
        return pd.concat([pd.DataFrame(rows), make(rows)])
    '''
    module = load(source)
    before = code_version(module.transform)

    def patched_init(self, *args, **kwargs):  # a "library upgrade" of DataFrame
        raise AssertionError("not called")

    monkeypatch.setattr(pd.DataFrame, "__init__", patched_init)
    monkeypatch.setattr(pd, "concat", lambda objs: objs)
    assert code_version(module.transform) == before
    # Whereas the same kind of change in the flow file's own code does count.
    assert version(variant(source, "make = DataFrame", "make = list")) != before


def test_other_modules_count_by_name_only(load):
    helper_v1 = "def compute(x):\n    return x + 1\n"
    helper_v2 = "def compute(x):\n    return x * 1000 - 7\n"
    flow = '''
    from cv_external_helpers import compute

    def transform(x):
        return compute(x)
    '''
    load(helper_v1, name="cv_external_helpers", path_name="helpers_v1")
    first = load(flow)
    load(helper_v2, name="cv_external_helpers", path_name="helpers_v2")
    second = load(flow)
    assert first.compute is not second.compute and first.compute(1) != second.compute(1)
    assert code_version(first.transform) == code_version(second.transform)


def test_unhashable_objects_count_by_type_without_addresses(version, load):
    source = '''
    import threading
    import pandas as pd

    FRAME = pd.DataFrame({"a": [1, 2]})
    LOCK = threading.Lock()
    SENTINEL = object()

    def transform(df):
        with LOCK:
            return df if df is SENTINEL else pd.concat([df, FRAME])
    '''
    base = version(source)
    # Different objects at different addresses, different frame contents: same version.
    assert version(variant(source, '{"a": [1, 2]}', '{"a": [3]}')) == base
    # But the type of such an object counts.
    assert version(variant(source, "LOCK = threading.Lock()", "LOCK = threading.RLock()")) != base


def test_roots_that_are_library_functions_count_by_name(load):
    import pandas as pd

    assert code_version(pd.read_parquet) == code_version(pd.read_parquet)
    assert code_version(pd.read_parquet) != code_version(pd.read_csv)
    flow = load("def transform(x):\n    return x\n")
    assert code_version(flow.transform) != code_version(pd.read_parquet)


def test_extra_is_mixed_in(load):
    module = load(BASE)
    v = code_version(module.transform, extra={"compression": "zstd", "target": "{output}/t.parquet"})
    assert v == code_version(module.transform, extra={"target": "{output}/t.parquet", "compression": "zstd"})
    assert v != code_version(module.transform, extra={"compression": "snappy", "target": "{output}/t.parquet"})
    assert v != code_version(module.transform)
    # Not JSON-able: hashed like a constant, still deterministic.
    assert code_version(extra={1: "a", "b": 2}) == code_version(extra={"b": 2, 1: "a"})


_CHILD = '''
import importlib.util, sys
spec = importlib.util.spec_from_file_location(sys.argv[2], sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[sys.argv[2]] = module
spec.loader.exec_module(module)
from distetl.model.codeversion import code_version
print(code_version(module.transform, module.helper, extra={"s": "x"}))
'''


def test_stable_across_processes_and_hash_seeds(tmp_path, load):
    source = BASE + '''

KINDS = frozenset({"alpha", "beta", "gamma", "delta", "epsilon"})
TABLE = {("k", 1): {"x", "y", "z"}, ("j", 2): {"u", "v", "w"}}

def classify(word):
    if word in {"red", "green", "blue", "cyan"}:
        return "colour"
    return sorted(KINDS | TABLE[("k", 1)])
'''
    source = variant(source, "    return df.assign(", "    classify('red')\n    return df.assign(")
    module = load(source)
    here = code_version(module.transform, module.helper, extra={"s": "x"})
    path = module.__file__
    repo = Path(__file__).resolve().parents[1]
    seen = set()
    for seed, name in (("1", "flow_in_child"), ("987654", "another_name")):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONDONTWRITEBYTECODE": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
        out = subprocess.run([sys.executable, "-c", _CHILD, path, name], capture_output=True, text=True,
                             env=env, cwd=str(tmp_path), check=True, timeout=120)
        seen.add(out.stdout.strip())
    assert seen == {here}


def test_fast_for_a_flow_file(load):
    module = load(BASE)
    started = time.perf_counter()
    for _ in range(20):
        code_version(module.transform, module.helper)
    assert (time.perf_counter() - started) / 20 < 0.05
