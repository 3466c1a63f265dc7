"""Make DSPy's callback dispatch cheap while Geode is instrumented.

With any callback registered, DSPy's ``with_callbacks`` wrapper does two slow things on every module,
adapter, LM and tool call (``dspy/utils/callback.py``, dspy 3.4):

- ``inspect.getcallargs(fn, instance, *args, **kwargs)`` rebuilds the function's signature each time;
- ``_get_on_start_handler``/``_get_on_end_handler`` pick the handler with ``isinstance`` checks, one
  against ``dspy.CodeInterpreter``, a runtime-checkable ``Protocol`` whose check walks the protocol's
  members on every call (Python 3.11).

Together they cost more per ``Predict`` call than the spans Geode records. It also names each call
``uuid.uuid4().hex``: 16 bytes from ``os.urandom`` (a system call, which also hands the GIL to the
span export thread) for an id that only has to be unique among the calls in flight in this process.
:func:`install` replaces all three with cheaper equivalents (call ids count up from a random per-process
prefix, same 32 hex characters); the first two are memoized: each function's parameters are read once and calls are bound by a
small precomputed binder (falling back to ``getcallargs`` for anything unusual), and the handler
*name* is picked once per (instance class, function). Results are identical to DSPy's (the unit tests compare them), and
anything unexpected falls back to DSPy's own function. :func:`uninstall` restores DSPy's originals;
if a DSPy release renames these internals, :func:`install` does nothing.

The replacements are module-level functions that carry DSPy's names, and the ``inspect`` stand-in is a
module named ``inspect``, so pickling a DSPy class (whose wrapped methods ``cloudpickle`` copies by value,
with the globals they use) gives the same pickle as without Geode; see :func:`_set_address`.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import os
import threading
import types
import uuid
from collections.abc import Callable
from typing import Any, Final, cast

__all__ = ["install", "installed", "uninstall"]

_lock = threading.Lock()
_saved: dict[str, Any] | None = None

_MISSING: Final = object()


class _Probe:
    """Stands in for a callback to learn which handler DSPy would pick, by name."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        if not name.startswith("on_"):
            raise AttributeError(name)

        def handler(**_: Any) -> None:
            return None

        handler.__name__ = name
        return handler


_PROBE: Final = _Probe()


class _Binder:
    """Binds call arguments to one function's parameters as ``inspect.getcallargs`` does.

    Handles the plain shapes DSPy's wrapped methods have (positional-or-keyword, ``*args``,
    keyword-only, ``**kwargs``, defaults); returns ``None`` for anything else (positional-only
    parameters, a missing or duplicate argument), and the caller falls back to ``getcallargs``, which
    also produces DSPy's ``TypeError`` for bad calls.
    """

    __slots__ = ("defaults", "keyword", "names", "var_keyword", "var_positional")

    def __init__(self, signature: inspect.Signature) -> None:
        params = list(signature.parameters.values())
        kind = inspect.Parameter
        if any(p.kind is kind.POSITIONAL_ONLY for p in params):
            raise ValueError("positional-only parameters")
        self.names = tuple(p.name for p in params if p.kind is kind.POSITIONAL_OR_KEYWORD)
        self.keyword = frozenset(
            p.name for p in params if p.kind in (kind.POSITIONAL_OR_KEYWORD, kind.KEYWORD_ONLY)
        )
        self.defaults = {p.name: p.default for p in params if p.default is not kind.empty}
        self.var_positional = next((p.name for p in params if p.kind is kind.VAR_POSITIONAL), None)
        self.var_keyword = next((p.name for p in params if p.kind is kind.VAR_KEYWORD), None)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        names = self.names
        if len(args) > len(names) and self.var_positional is None:
            return None
        bound: dict[str, Any] = dict(zip(names, args, strict=False))
        if self.var_positional is not None:
            bound[self.var_positional] = args[len(names) :]
        extra: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in bound:
                return None
            if key in self.keyword:
                bound[key] = value
            elif self.var_keyword is not None:
                extra[key] = value
            else:
                return None
        if len(bound) < len(self.keyword) + (self.var_positional is not None):
            for name in self.keyword:
                if name not in bound:
                    if name not in self.defaults:
                        return None
                    bound[name] = self.defaults[name]
        if self.var_keyword is not None:
            bound[self.var_keyword] = extra
        return bound


_CACHE_LIMIT: Final = 4096
"""Entries per memo before it is emptied (classes and functions made at run time would pile up)."""

_binders: dict[Any, _Binder | None] = {}
_handler_names: dict[tuple[str, type, Any], str] = {}
_originals: dict[str, Callable[..., Any]] = {}
"""DSPy's handler pickers, kept after :func:`uninstall` for stand-ins still referenced elsewhere."""


def getcallargs(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``inspect.getcallargs`` with each function's parameters read once (same result, same errors)."""
    binder = _binders.get(func, _MISSING)
    if binder is _MISSING:
        binder = None
        if isinstance(func, types.FunctionType):
            try:
                # As getcallargs does: the function's own signature, not what it wraps.
                binder = _Binder(inspect.signature(func, follow_wrapped=False))
            except (TypeError, ValueError):
                binder = None
        if len(_binders) >= _CACHE_LIMIT:
            _binders.clear()
        _binders[func] = binder
    if binder is not None:
        assert isinstance(binder, _Binder)
        bound = binder.bind(args, kwargs)
        if bound is not None:
            return bound
    return inspect.getcallargs(func, *args, **kwargs)


def _pick(which: str, callback: Any, instance: Any, fn: Callable[..., Any]) -> Any:
    original = _originals[which]
    key = (which, type(instance), fn)
    name = _handler_names.get(key)
    if name is None:
        try:
            name = original(_PROBE, instance, fn).__name__
        except Exception:
            # Unsupported combinations raise in DSPy; let DSPy raise its own error.
            return original(callback, instance, fn)
        if len(_handler_names) >= _CACHE_LIMIT:
            _handler_names.clear()
        _handler_names[key] = name
    return getattr(callback, name)


def _get_on_start_handler(callback: Any, instance: Any, fn: Callable[..., Any]) -> Any:
    """DSPy's ``_get_on_start_handler``, with the handler name memoized per (class, function)."""
    return _pick("_get_on_start_handler", callback, instance, fn)


def _get_on_end_handler(callback: Any, instance: Any, fn: Callable[..., Any]) -> Any:
    """DSPy's ``_get_on_end_handler``, with the handler name memoized per (class, function)."""
    return _pick("_get_on_end_handler", callback, instance, fn)


_STAND_INS: Final = (_get_on_start_handler, _get_on_end_handler)


def _set_address(module: str) -> None:
    """Name the stand-ins as functions of ``module`` (their names are already DSPy's).

    ``cloudpickle`` pickles DSPy's wrapped methods (``with_callbacks``) *by value*, together with the
    module globals their code uses, so a Teleprompter or Module class shipped to a Ray worker carries
    whatever ``_get_on_start_handler`` is at that moment. Sitting at DSPy's address under DSPy's name
    (the very string object, so even pickle's memo matches), a stand-in is pickled by reference to
    DSPy's function, as ``pickle`` does: the same bytes as without Geode, no Geode object or memo
    travels, and the pickle loads where Geode is not installed. A closure, or a function named as
    Geode's, would be pickled by value, memo and all (classes and functions that may not pickle).
    """
    for function in _STAND_INS:
        function.__module__ = module


def _inspect_proxy() -> types.ModuleType:
    # Named "inspect", so cloudpickle pickles it by reference to the real ``inspect`` module.
    proxy = types.ModuleType("inspect")
    proxy.__dict__.update(inspect.__dict__)
    proxy.getcallargs = getcallargs  # type: ignore[attr-defined]
    return proxy


class _CallId:
    """What DSPy reads from ``uuid.uuid4()``: a ``hex`` string."""

    __slots__ = ("hex",)

    def __init__(self, value: str) -> None:
        self.hex = value


_prefix = os.urandom(8).hex()
_counter = itertools.count(1)


def uuid4() -> _CallId:
    """A call id unique in this process: a random per-process prefix, then a counter (32 hex characters)."""
    return _CallId(f"{_prefix}{next(_counter):016x}")


def _renew_prefix() -> None:
    # A forked child counts on from the parent's counter; a prefix of its own keeps ids apart anyway.
    global _prefix
    _prefix = os.urandom(8).hex()


os.register_at_fork(after_in_child=_renew_prefix)


def _uuid_proxy() -> types.ModuleType:
    # Named "uuid", so cloudpickle pickles it by reference to the real ``uuid`` module.
    proxy = types.ModuleType("uuid")
    proxy.__dict__.update(uuid.__dict__)
    proxy.uuid4 = uuid4  # type: ignore[attr-defined]
    return proxy


def install() -> None:
    """Swap in the memoized dispatch helpers (idempotent; a no-op if DSPy's internals moved)."""
    global _saved
    with _lock:
        if _saved is not None:
            return
        module = importlib.import_module("dspy.utils.callback")
        originals = {
            name: getattr(module, name, None)
            for name in ("inspect", "uuid", "_get_on_start_handler", "_get_on_end_handler")
        }
        if (
            originals["inspect"] is not inspect
            or originals["uuid"] is not uuid
            or not all(callable(v) for k, v in originals.items() if k not in ("inspect", "uuid"))
        ):
            return
        _saved = originals
        for name in ("_get_on_start_handler", "_get_on_end_handler"):
            _originals[name] = cast("Callable[..., Any]", originals[name])
        _set_address(module.__name__)
        module.inspect = _inspect_proxy()  # type: ignore[attr-defined]
        module.uuid = _uuid_proxy()  # type: ignore[attr-defined]
        module._get_on_start_handler = _get_on_start_handler  # type: ignore[attr-defined]
        module._get_on_end_handler = _get_on_end_handler  # type: ignore[attr-defined]


def uninstall() -> None:
    """Restore DSPy's own helpers."""
    global _saved
    with _lock:
        if _saved is None:
            return
        module = importlib.import_module("dspy.utils.callback")
        for name, value in _saved.items():
            setattr(module, name, value)
        _set_address(__name__)
        _saved = None


def installed() -> bool:
    """Whether the memoized helpers are in place."""
    return _saved is not None
