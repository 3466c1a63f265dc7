"""Make DSPy's callback dispatch cheap while Geode is instrumented.

With any callback registered, DSPy's ``with_callbacks`` wrapper does two slow things on every module,
adapter, LM and tool call (``dspy/utils/callback.py``, dspy 3.4):

- ``inspect.getcallargs(fn, instance, *args, **kwargs)`` rebuilds the function's signature each time;
- ``_get_on_start_handler``/``_get_on_end_handler`` pick the handler with ``isinstance`` checks, one
  against ``dspy.CodeInterpreter``, a runtime-checkable ``Protocol`` whose check walks the protocol's
  members on every call (Python 3.11).

Together they cost more per ``Predict`` call than the spans Geode records. :func:`install` replaces
both with memoized equivalents: each function's parameters are read once and calls are bound by a
small precomputed binder (falling back to ``getcallargs`` for anything unusual), and the handler
*name* is picked once per (instance class, function). Results are identical to DSPy's (the unit tests compare them), and
anything unexpected falls back to DSPy's own function. :func:`uninstall` restores DSPy's originals;
if a DSPy release renames these internals, :func:`install` does nothing.
"""

from __future__ import annotations

import importlib
import inspect
import threading
import types
from collections.abc import Callable
from typing import Any, Final

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


def _memo_getcallargs() -> Callable[..., dict[str, Any]]:
    binders: dict[Any, _Binder | None] = {}

    def getcallargs(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> dict[str, Any]:
        binder = binders.get(func, _MISSING)
        if binder is _MISSING:
            binder = None
            if isinstance(func, types.FunctionType):
                try:
                    # As getcallargs does: the function's own signature, not what it wraps.
                    binder = _Binder(inspect.signature(func, follow_wrapped=False))
                except (TypeError, ValueError):
                    binder = None
            binders[func] = binder
        if binder is not None:
            assert isinstance(binder, _Binder)
            bound = binder.bind(args, kwargs)
            if bound is not None:
                return bound
        return inspect.getcallargs(func, *args, **kwargs)

    return getcallargs


def _memo_handler(original: Callable[..., Any]) -> Callable[..., Any]:
    names: dict[tuple[type, Any], str] = {}

    def pick(callback: Any, instance: Any, fn: Callable[..., Any]) -> Any:
        key = (type(instance), fn)
        name = names.get(key)
        if name is None:
            try:
                name = original(_PROBE, instance, fn).__name__
            except Exception:
                # Unsupported combinations raise in DSPy; let DSPy raise its own error.
                return original(callback, instance, fn)
            names[key] = name
        return getattr(callback, name)

    return pick


def _inspect_proxy(getcallargs: Callable[..., dict[str, Any]]) -> types.ModuleType:
    proxy = types.ModuleType("inspect")
    proxy.__dict__.update(inspect.__dict__)
    proxy.getcallargs = getcallargs  # type: ignore[attr-defined]
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
            for name in ("inspect", "_get_on_start_handler", "_get_on_end_handler")
        }
        if originals["inspect"] is not inspect or not all(
            callable(v) for k, v in originals.items() if k != "inspect"
        ):
            return
        _saved = originals
        module.inspect = _inspect_proxy(_memo_getcallargs())  # type: ignore[attr-defined]
        module._get_on_start_handler = _memo_handler(originals["_get_on_start_handler"])  # type: ignore[attr-defined]
        module._get_on_end_handler = _memo_handler(originals["_get_on_end_handler"])  # type: ignore[attr-defined]


def uninstall() -> None:
    """Restore DSPy's own helpers."""
    global _saved
    with _lock:
        if _saved is None:
            return
        module = importlib.import_module("dspy.utils.callback")
        for name, value in _saved.items():
            setattr(module, name, value)
        _saved = None


def installed() -> bool:
    """Whether the memoized helpers are in place."""
    return _saved is not None
