"""Code versions: a short digest of what a stage's functions do, not of their text.

A stage may set ``version="…"`` explicitly. Without it, distetl derives one with
:func:`code_version` from the stage's functions and from what they use in the flow
file: other functions, constants, classes. The digest follows the *compiled* code, so
editing a comment, a docstring, blank lines or the formatting, moving a function
down the file or renaming a local variable changes nothing, while changing a constant
in a helper the transform calls, a default argument or the body of a lambda does.

What counts, for a function defined in the flow file (recursively, once per object):

* its bytecode, normalised: constants are taken by value (never by their index in
  ``co_consts``, which a docstring shifts), jumps by target instruction, and the
  ``NOP`` instructions the compiler keeps only for line tracing are dropped;
* the constants it loads (nested code objects — lambdas, inner functions,
  comprehensions — by the same rules), the names it uses (``co_names``), its
  argument names, flags (generator, coroutine, ``*args``, ``**kwargs``), exception
  table, default values (``__defaults__``, ``__kwdefaults__``), closure cells and
  attributes set on the function;
* every global it (or a nested function) loads, looked up in the function's module:
  functions and classes of that same module by their code (methods, class attributes,
  bases), plain data (``None``, numbers, strings, bytes, tuples, lists, dicts, sets,
  frozensets, ranges, enums, dates, decimals, paths, compiled regexes, numpy arrays of
  non-object dtype …) by value, instances of the module's own classes by class and
  attributes, ``functools.partial`` by function and arguments, and wrappers such as
  ``functools.lru_cache`` or ``functools.wraps`` decorators by what they wrap
  (``__wrapped__``).

What does *not* count:

* line numbers, file paths, comments, formatting, docstrings, local variable names,
  annotations of functions, and the module's name (a flow file imported under two
  names gives one version);
* code in other modules — pandas, numpy, pyarrow, the standard library, distetl
  itself, and your own helper modules imported from elsewhere: a function, class or
  module from another module contributes its qualified name (module + name) only, so
  a library upgrade is not a code change of the flow. Set ``version=`` on the stage
  (or change it) to force a rerun after such a change;
* objects that cannot be hashed meaningfully (a module-level DataFrame, an open
  connection, a client): they contribute their type's qualified name only, never a
  ``repr`` that could carry a memory address or vary between processes. Mix anything
  such an object stands for into ``extra`` if it should count.

A stage's root function that itself lives in a library (e.g. ``pd.read_parquet``
passed as the extract) counts by name too. The Python minor version is part of the
digest (bytecode differs between versions anyway). The digest is deterministic
across processes: nothing goes through :func:`hash`, ``id()`` or memory addresses,
and sets and dict keys are sorted by a stable representation.
"""

from __future__ import annotations


import builtins
import dataclasses
import datetime
import decimal
import dis
import enum
import fractions
import functools
import hashlib
import inspect
import json
import os
import pathlib
import re
import sys
import sysconfig
import types
import uuid
from typing import Any, Callable, Optional

from distetl.compat import stable_module

__all__ = ["code_version"]

_SCHEME = "distetl.codeversion/1"
_DIGEST_CHARS = 16

# Flags that change behaviour; CO_NESTED, CO_OPTIMIZED, CO_NEWLOCALS, CO_NOFREE and
# (3.14) CO_HAS_DOCSTRING are bookkeeping.
_FLAG_MASK = (
    inspect.CO_VARARGS | inspect.CO_VARKEYWORDS | inspect.CO_GENERATOR | inspect.CO_COROUTINE
    | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE
)
_CONST_OPS = frozenset(dis.hasconst)
_JUMP_OPS = frozenset(dis.hasjrel) | frozenset(dis.hasjabs) | frozenset(getattr(dis, "hasjump", ()))
_NAME_OPS = frozenset(dis.hasname)
_SKIPPED_OPS = frozenset(op for op in ("NOP", "EXTENDED_ARG", "CACHE") if op in dis.opmap)
_GLOBAL_LOADS = frozenset(("LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"))

# Class-dict entries that are bookkeeping, not behaviour.
_CLASS_SKIP = frozenset((
    "__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__firstlineno__",
    "__static_attributes__", "_abc_impl",
))
_ADDRESS = re.compile(r"\s*\bat 0x[0-9a-fA-F]+|0x[0-9a-fA-F]{6,}")
# Types whose repr is their value and the same in every process.
_REPR_TYPES = (
    datetime.date, datetime.time, datetime.timedelta, datetime.tzinfo, decimal.Decimal,
    fractions.Fraction, uuid.UUID,
)
_TYPING_MODULES = frozenset(("typing", "typing_extensions"))
_LIBRARY_DIRS = tuple(
    os.path.normcase(os.path.realpath(p))
    for p in {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    if p
)
_MISSING = object()


def code_version(*funcs: Optional[Callable[..., Any]], extra: Any = None) -> str:
    """A short, stable digest of what ``funcs`` do and of ``extra``.

    Args:
        *funcs: The stage's functions (extract, transform, …), in a fixed order; None
            where a stage has none (None counts, so ``(None, f)`` and ``(f, None)``
            differ). Any callable works: functions, lambdas, nested functions,
            ``functools.partial`` objects, callable instances.
        extra: Any JSON-able value mixed in (schema text, target template, compression,
            …); dict keys are sorted. A value JSON cannot encode is hashed with the
            same rules as a global constant.

    Returns:
        16 hexadecimal characters (the start of a SHA-256 digest). Equal for code that
        compiles to the same thing; see the module docstring for what counts.
    """
    hasher = _Hasher()
    roots = tuple(hasher.token(func, None) for func in funcs)
    try:
        extra_token: Any = ("json", json.dumps(extra, sort_keys=True, separators=(",", ":"), allow_nan=True))
    except (TypeError, ValueError):
        extra_token = ("value", hasher.token(extra, None))
    payload = (_SCHEME, "%d.%d" % sys.version_info[:2], roots, extra_token)
    return _digest(payload)[:_DIGEST_CHARS]


def _digest(token: Any) -> str:
    """SHA-256 of a token: nested tuples of strings, whose ``repr`` is canonical."""
    return hashlib.sha256(repr(token).encode("utf-8", "surrogatepass")).hexdigest()


def _qualname(obj: Any) -> str:
    """A function's or class's qualified name; for other objects, their type's.

    Never calls ``getattr`` on arbitrary objects (a proxy's ``__getattr__`` could do
    anything).
    """
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type)):
        name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
        if isinstance(name, str):
            return name
    return type(obj).__qualname__


def _strip_addresses(text: str) -> str:
    return _ADDRESS.sub("", text)


def _is_library(module: Optional[str]) -> bool:
    """Whether a module is a library's (stdlib, site-packages, distetl): counts by name.

    Decided by where the module's file lives, so a flow file that happens to share a
    name with a stdlib module still counts by content; by name only for modules
    without a file (built-in and frozen ones).
    """
    if not module or module == "__main__":
        return False
    top = module.split(".")[0]
    if top == "distetl":
        return True
    path = getattr(sys.modules.get(module), "__file__", None)
    if not isinstance(path, str):
        return top in sys.builtin_module_names or top in getattr(sys, "stdlib_module_names", ())
    real = os.path.normcase(os.path.realpath(path))
    parts = real.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return True
    return any(real.startswith(d + os.sep) for d in _LIBRARY_DIRS)


def _func_module(func: types.FunctionType) -> Optional[str]:
    """The module a function really lives in (``functools.wraps`` rewrites ``__module__``)."""
    name = func.__globals__.get("__name__") if isinstance(func.__globals__, dict) else None
    return name if isinstance(name, str) else func.__module__


class _Hasher:
    """Turns objects into tokens (nested tuples of strings), memoised per call.

    ``home`` is the module whose objects are hashed by content: the module of the
    function being hashed, or None at a root (then anything that is not a library's
    counts by content).
    """

    def __init__(self) -> None:
        self._memo: dict[tuple[int, Optional[str]], tuple[Any, Any]] = {}
        self._code_memo: dict[int, tuple[types.CodeType, Any, frozenset[str]]] = {}
        self._active: dict[int, str] = {}

    # -- dispatch -------------------------------------------------------------------

    def token(self, obj: Any, home: Optional[str]) -> Any:
        """The token of any object, as seen from module ``home``."""
        if obj is None or obj is Ellipsis or obj is NotImplemented:
            return repr(obj)
        kind = type(obj)
        if kind is bool:
            return ("bool", repr(obj))
        if kind is str:
            return ("str", obj)
        if kind is int or kind is float or kind is complex:
            return (kind.__name__, repr(obj))
        if kind is bytes or kind is bytearray:
            return (kind.__name__, obj.hex())
        key = (id(obj), home)
        hit = self._memo.get(key)
        if hit is not None:
            return hit[1]
        if id(obj) in self._active:
            return ("cycle", self._active[id(obj)])
        self._active[id(obj)] = _qualname(obj)
        try:
            result = self._compound(obj, home)
        finally:
            del self._active[id(obj)]
        self._memo[key] = (obj, result)  # keeps obj alive so its id is not reused
        return result

    def _compound(self, obj: Any, home: Optional[str]) -> Any:
        if isinstance(obj, enum.Enum):
            return ("enum", self._class_name(type(obj), home), obj.name, self.token(obj.value, home))
        if isinstance(obj, types.FunctionType):
            return self._function(obj, home)
        if isinstance(obj, type):
            return self._class(obj, home)
        if isinstance(obj, types.CodeType):
            return self._code(obj)[0]
        if isinstance(obj, types.ModuleType):
            return ("module", stable_module(obj.__name__))
        if isinstance(obj, functools.partial):
            return ("partial", self.token(obj.func, home), self.token(obj.args, home),
                    self.token(obj.keywords, home))
        if isinstance(obj, types.MethodType):
            return ("method", self.token(obj.__func__, home), self.token(obj.__self__, home))
        if isinstance(obj, (staticmethod, classmethod)):
            return (type(obj).__name__, self.token(obj.__func__, home))
        if isinstance(obj, property):
            return ("property", self.token(obj.fget, home), self.token(obj.fset, home),
                    self.token(obj.fdel, home))
        if isinstance(obj, (types.BuiltinFunctionType, types.WrapperDescriptorType,
                            types.MethodDescriptorType, types.MethodWrapperType)):
            owner = getattr(obj, "__self__", None)
            module = getattr(obj, "__module__", None) or getattr(type(owner), "__module__", "")
            return ("ref", stable_module(str(module)), _qualname(obj))
        if isinstance(obj, (tuple, list, dict, set, frozenset, range, slice, types.MappingProxyType,
                            types.SimpleNamespace)):
            return self._container(obj, home)
        if isinstance(obj, (bool, int, float, complex, str, bytes, bytearray)):
            # Subclasses (numpy.float64, str enums without Enum, …): type and value.
            base = next(b for b in (bool, int, float, complex, str, bytes, bytearray) if isinstance(obj, b))
            return ("subclass", self._class_name(type(obj), home), self.token(base(obj), home))
        return self._other(obj, home)

    # -- functions and code ----------------------------------------------------------

    def _function(self, func: types.FunctionType, home: Optional[str]) -> Any:
        module = _func_module(func)
        if not self._owned(module, home):
            ref: Any = ("ref", stable_module(str(module)), _qualname(func))
            wrapped = func.__dict__.get("__wrapped__", _MISSING)
            if wrapped is not _MISSING:
                return ref + ("wraps", self.token(wrapped, home))
            return ref
        code_token, global_names = self._code(func.__code__)
        namespace = func.__globals__
        builtin_ns = getattr(func, "__builtins__", None)
        if not isinstance(builtin_ns, dict):
            builtin_ns = builtins.__dict__
        used = []
        for name in sorted(global_names):
            value = namespace.get(name, _MISSING)
            if value is not _MISSING:
                used.append((name, self.token(value, module)))
            elif name in builtin_ns:
                used.append((name, "builtin"))
            else:
                used.append((name, "unbound"))
        cells = []
        for cell in func.__closure__ or ():
            try:
                cells.append(self.token(cell.cell_contents, module))
            except ValueError:  # an empty cell: a variable not yet assigned
                cells.append("empty-cell")
        attrs = tuple(sorted(((k, self.token(v, module)) for k, v in func.__dict__.items()
                              if isinstance(k, str)), key=repr))
        content = (
            "function", func.__qualname__, code_token,
            self.token(func.__defaults__, module), self.token(func.__kwdefaults__, module),
            tuple(cells), tuple(used), attrs,
        )
        return ("function", _digest(content))

    def _code(self, code: types.CodeType) -> tuple[Any, frozenset[str]]:
        """A code object's token and the global names it (or nested code) loads."""
        hit = self._code_memo.get(id(code))
        if hit is not None:
            return hit[1], hit[2]
        consts = code.co_consts
        instructions = [i for i in dis.get_instructions(code) if i.opname not in _SKIPPED_OPS]
        offsets = [i.offset for i in instructions]

        def index_of(offset: int) -> int:
            # First kept instruction at or after ``offset`` (a dropped NOP's target).
            lo, hi = 0, len(offsets)
            while lo < hi:
                mid = (lo + hi) // 2
                if offsets[mid] < offset:
                    lo = mid + 1
                else:
                    hi = mid
            return lo

        global_names: set[str] = set()
        stream = []
        for ins in instructions:
            if ins.opcode in _CONST_OPS:
                value = consts[ins.arg] if ins.arg is not None and ins.arg < len(consts) else ins.argval
                if isinstance(value, types.CodeType):
                    nested_token, nested_globals = self._code(value)
                    global_names |= nested_globals
                    stream.append((ins.opname, nested_token))
                else:
                    stream.append((ins.opname, self.token(value, None)))
            elif ins.opcode in _JUMP_OPS and isinstance(ins.argval, int):
                stream.append((ins.opname, "->%d" % index_of(ins.argval)))
            elif ins.opcode in _NAME_OPS:
                if ins.opname in _GLOBAL_LOADS and isinstance(ins.argval, str):
                    global_names.add(ins.argval)
                stream.append((ins.opname, str(ins.arg), str(ins.argval)))
            else:
                stream.append((ins.opname, str(ins.arg)))
        exceptions: Any
        parse = getattr(dis, "_parse_exception_table", None)
        if parse is not None and hasattr(code, "co_exceptiontable"):
            exceptions = tuple(
                (index_of(e.start), index_of(e.end), index_of(e.target), str(e.depth), str(e.lasti))
                for e in parse(code)
            )
        else:
            exceptions = getattr(code, "co_exceptiontable", b"").hex()
        n_args = code.co_argcount + code.co_kwonlyargcount
        n_args += bool(code.co_flags & inspect.CO_VARARGS) + bool(code.co_flags & inspect.CO_VARKEYWORDS)
        content = (
            "code", getattr(code, "co_qualname", code.co_name),
            str(code.co_argcount), str(code.co_posonlyargcount), str(code.co_kwonlyargcount),
            code.co_varnames[:n_args], str(code.co_flags & _FLAG_MASK),
            code.co_names, code.co_freevars, tuple(stream), exceptions,
        )
        token = ("code", _digest(content))
        names = frozenset(global_names)
        self._code_memo[id(code)] = (code, token, names)
        return token, names

    # -- classes and instances -------------------------------------------------------

    def _owned(self, module: Optional[str], home: Optional[str]) -> bool:
        """Whether objects of ``module`` count by content when seen from ``home``."""
        if home is None:
            return not _is_library(module)
        return module == home

    def _class_name(self, cls: type, home: Optional[str]) -> Any:
        module = getattr(cls, "__module__", None)
        if self._owned(module, home):
            return cls.__qualname__
        return ("ref", stable_module(str(module)), cls.__qualname__)

    def _class(self, cls: type, home: Optional[str]) -> Any:
        module = getattr(cls, "__module__", None)
        if not self._owned(module, home):
            return ("ref", stable_module(str(module)), cls.__qualname__)
        module = str(module)
        attrs = []
        for name, value in vars(cls).items():
            if name in _CLASS_SKIP or not isinstance(name, str):
                continue
            if name in ("__dataclass_fields__", "__dataclass_params__"):
                value = self._dataclass_meta(value)
            attrs.append((name, self.token(value, module)))
        attrs.sort(key=repr)
        meta = type(cls)
        content = (
            "class", cls.__qualname__, tuple(self.token(b, module) for b in cls.__bases__),
            self.token(meta, module) if meta is not type else "type", tuple(attrs),
        )
        return ("class", _digest(content))

    @staticmethod
    def _dataclass_meta(value: Any) -> Any:
        """Dataclass bookkeeping, reduced to plain values (field names, defaults, flags)."""
        if isinstance(value, dict):
            return {
                name: (fld.default, fld.default_factory, fld.init, fld.repr, fld.compare, fld.kw_only)
                for name, fld in value.items() if isinstance(fld, dataclasses.Field)
            }
        slots = getattr(type(value), "__slots__", ())
        return {k: getattr(value, k) for k in slots if isinstance(getattr(value, k, None), bool)}

    def _instance_state(self, obj: Any, home: Optional[str]) -> Any:
        state: list[Any] = []
        data = getattr(obj, "__dict__", None)
        if isinstance(data, dict):
            state.extend((k, self.token(v, home)) for k, v in data.items() if isinstance(k, str))
        for klass in type(obj).__mro__:
            slots = klass.__dict__.get("__slots__", ())
            for slot in (slots,) if isinstance(slots, str) else slots:
                if slot in ("__dict__", "__weakref__"):
                    continue
                try:
                    state.append((slot, self.token(getattr(obj, slot), home)))
                except AttributeError:
                    state.append((slot, "unset"))
        state.sort(key=repr)
        return tuple(state)

    # -- data ------------------------------------------------------------------------

    def _container(self, obj: Any, home: Optional[str]) -> Any:
        kind = type(obj)
        tag = kind.__name__ if kind.__module__ == "builtins" or kind is types.SimpleNamespace \
            else self._class_name(kind, home)
        if isinstance(obj, (dict, types.MappingProxyType)):
            items = [(self.token(k, home), self.token(v, home)) for k, v in obj.items()]
            return ("dict", tag, tuple(sorted(items, key=repr)))
        if isinstance(obj, types.SimpleNamespace):
            return ("namespace", self._container(vars(obj), home))
        if isinstance(obj, (set, frozenset)):
            return ("set", tag, tuple(sorted((self.token(x, home) for x in obj), key=repr)))
        if isinstance(obj, range):
            return ("range", str(obj.start), str(obj.stop), str(obj.step))
        if isinstance(obj, slice):
            return ("slice", self.token(obj.start, home), self.token(obj.stop, home),
                    self.token(obj.step, home))
        return ("seq", tag, tuple(self.token(x, home) for x in obj))

    def _other(self, obj: Any, home: Optional[str]) -> Any:
        kind = type(obj)
        kind_name = self._class_name(kind, home)
        wrapped = inspect.getattr_static(obj, "__wrapped__", _MISSING)
        if wrapped is not _MISSING and not isinstance(wrapped, (property, types.MemberDescriptorType,
                                                                 types.GetSetDescriptorType)):
            # functools.lru_cache, a Prefect task, any functools.update_wrapper wrapper.
            return ("wrapper", kind_name, self.token(wrapped, home))
        if self._owned(getattr(kind, "__module__", None), home):
            return ("instance", self.token(kind, home), self._instance_state(obj, home))
        if isinstance(obj, re.Pattern):
            return ("re", self.token(obj.pattern, home), str(obj.flags))
        if isinstance(obj, pathlib.PurePath):
            return ("path", kind_name, str(obj))
        if isinstance(obj, _REPR_TYPES):
            return ("repr", kind_name, _strip_addresses(repr(obj)))
        if dataclasses.is_dataclass(obj):
            return ("dataclass", kind_name, tuple(
                (f.name, self.token(getattr(obj, f.name, None), home)) for f in dataclasses.fields(obj)
                if not _added_and_default(obj, f)))
        module = getattr(kind, "__module__", "") or ""
        if module in _TYPING_MODULES or isinstance(obj, (types.GenericAlias, getattr(types, "UnionType", ()))):
            return ("repr", kind_name, _strip_addresses(repr(obj)))
        library_value = _library_value(obj, module)
        if library_value is not None:
            return ("value", kind_name, library_value)
        if callable(obj):
            # A ufunc, a C function, a callable object of a library: its name.
            name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
            if isinstance(name, str):
                return ("object", kind_name, _strip_addresses(name))
        # A DataFrame, a connection, a client …: its type only (see module docstring).
        return ("object", kind_name)


def _added_and_default(obj: Any, f: Any) -> bool:
    """A field added to a distetl class later, at its default: left out of the token, so
    code that references such an object keeps its code version across the upgrade."""
    if not f.metadata.get("distetl_added"):
        return False
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    try:
        return bool(getattr(obj, f.name, default) == default)
    except Exception:  # noqa: BLE001 - an odd value: count it
        return False


def _library_value(obj: Any, module: str) -> Optional[str]:
    """A stable value for a few well-known library types (numpy, pyarrow, pandas scalars).

    Found by the type's module and duck typing, without importing those libraries.
    """
    top = module.split(".")[0]
    try:
        if top == "numpy":
            dtype = getattr(obj, "dtype", None)
            if module == "numpy" and type(obj).__name__.startswith("dtype"):
                return str(obj.str) + ("|" + repr(obj.descr) if getattr(obj, "fields", None) else "")
            if dtype is not None and not getattr(dtype, "hasobject", True) and hasattr(obj, "tobytes"):
                digest = hashlib.sha256(obj.tobytes()).hexdigest()
                return "%s|%s|%s" % (dtype.str, tuple(getattr(obj, "shape", ())), digest)
        elif top == "pyarrow":
            names = {klass.__name__ for klass in type(obj).__mro__}
            if names & {"DataType", "Field", "Schema"}:
                return _strip_addresses(str(obj))
        elif module.startswith("pandas._libs.tslibs"):
            # Timestamp, Timedelta, Period, DateOffset: value reprs.
            return _strip_addresses(repr(obj))
    except Exception:  # a duck that does not quack: fall back to the type only
        return None
    return None
