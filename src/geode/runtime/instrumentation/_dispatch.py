"""Make DSPy's callback dispatch cheap while Geode is instrumented.

With any callback registered, DSPy's ``with_callbacks`` wrapper does two slow things on every module,
adapter, LM and tool call (``dspy/utils/callback.py``, dspy 3.4):

- ``inspect.getcallargs(fn, instance, *args, **kwargs)`` rebuilds the function's signature each time;
- ``_get_on_start_handler``/``_get_on_end_handler`` pick the handler with ``isinstance`` checks, one
  against ``dspy.CodeInterpreter``, a runtime-checkable ``Protocol`` whose check walks the protocol's
  members on every call (Python 3.11).

Together they cost more per ``Predict`` call than the spans Geode records. :func:`install` replaces
both with memoized equivalents: the signature is computed once per function (with a direct path for
the ``(self, *args, **kwargs)`` signature of ``Module.__call__``), and the handler *name* once per
(instance class, function). Results are identical to DSPy's (the unit tests compare them), and
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

_FAST_PARAMS: Final = (
    ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ("args", inspect.Parameter.VAR_POSITIONAL),
    ("kwargs", inspect.Parameter.VAR_KEYWORD),
)
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


def _memo_getcallargs() -> Callable[..., dict[str, Any]]:
    signatures: dict[Any, inspect.Signature | None] = {}

    def getcallargs(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> dict[str, Any]:
        signature = signatures.get(func, _MISSING)
        if signature is _MISSING:
            if not isinstance(func, types.FunctionType):
                return inspect.getcallargs(func, *args, **kwargs)
            try:
                # As getcallargs does: the function's own signature, not what it wraps.
                sig = inspect.signature(func, follow_wrapped=False)
                shape = tuple((p.name, p.kind) for p in sig.parameters.values())
                signature = None if shape == _FAST_PARAMS else sig
            except (TypeError, ValueError):
                return inspect.getcallargs(func, *args, **kwargs)
            signatures[func] = signature
        if signature is None:
            # Module.__call__(self, *args, **kwargs), Predict.__call__: no binding to do.
            if not args:
                return inspect.getcallargs(func, *args, **kwargs)
            return {"self": args[0], "args": args[1:], "kwargs": kwargs}
        assert isinstance(signature, inspect.Signature)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

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
