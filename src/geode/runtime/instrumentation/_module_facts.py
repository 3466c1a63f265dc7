"""Per-class and per-program facts the callback needs, computed once and cached.

A module class's span kind and hooks, a predictor's signature text, and the names of a program's
sub-modules are the same on every call; finding them once keeps the callback cheap on the
application's thread.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import dspy

from geode.runtime.instrumentation._span_attributes import _AGENT, _CACHE_LIMIT, _CHAIN, _RETRIEVER
from geode.traces.vocab import GEODE_SPAN_KIND_ATTR


@dataclass(frozen=True, slots=True)
class _ModuleClass:
    kind: str
    class_name: str
    is_react: bool
    span_name: bool
    """The class defines ``geode_span_name(inputs)``."""
    span_attributes: bool
    """The class defines ``geode_span_attributes(inputs, outputs)``."""


def _describe_class(cls: type) -> _ModuleClass:
    declared = getattr(cls, GEODE_SPAN_KIND_ATTR, None)
    is_react = issubclass(cls, dspy.ReAct) or _is_react_v2(cls)
    if isinstance(declared, str) and declared:
        kind = declared.upper()
    elif is_react:
        kind = _AGENT
    elif issubclass(cls, dspy.Retrieve):
        kind = _RETRIEVER
    else:
        kind = _CHAIN
    return _ModuleClass(
        kind=kind,
        class_name=cls.__name__,
        is_react=is_react,
        span_name=callable(getattr(cls, "geode_span_name", None)),
        span_attributes=callable(getattr(cls, "geode_span_attributes", None)),
    )


def _is_react_v2(cls: type) -> bool:
    react_v2 = getattr(dspy, "ReActV2", None)
    return isinstance(react_v2, type) and issubclass(cls, react_v2)


_signatures: dict[int, tuple[Any, str | None]] = {}


def _signature_text(instance: Any) -> str | None:
    """``"question -> answer"`` for a predictor's signature (cached per signature class)."""
    signature = getattr(instance, "signature", None)
    if signature is None:
        return None
    cached = _signatures.get(id(signature))
    if cached is not None and cached[0] is signature:
        return cached[1]
    text = getattr(signature, "signature", None)
    text = text if isinstance(text, str) else None
    if len(_signatures) >= _CACHE_LIMIT:
        _signatures.clear()
    _signatures[id(signature)] = (signature, text)
    return text


def _module_names(module: Any) -> dict[int, str]:
    """``id(submodule) -> name``, named as ``named_predictors()`` names predictors.

    DSPy's ``named_sub_modules()`` walks every attribute, a module's whole call history included,
    which grows with each call; this walks modules and the lists and dicts holding them only.
    """
    names: dict[int, str] = {}
    if isinstance(module, dspy.Predict):
        names[id(module)] = "self"
    seen = {id(module)}
    pending: list[tuple[str, Any]] = [("", module)]
    while pending:
        prefix, parent = pending.pop()
        attributes = getattr(parent, "__dict__", None)
        if not isinstance(attributes, dict):
            continue
        for attr, value in attributes.items():
            children: list[tuple[str, Any]]
            if isinstance(value, dspy.Module):
                children = [(f"{prefix}{attr}", value)]
            elif isinstance(value, list | tuple):
                children = [
                    (f"{prefix}{attr}[{i}]", v) for i, v in enumerate(value) if isinstance(v, dspy.Module)
                ]
            elif isinstance(value, dict) and attr not in ("history", "callbacks"):
                children = [
                    (f"{prefix}{attr}['{k}']", v) for k, v in value.items() if isinstance(v, dspy.Module)
                ]
            else:
                continue
            for name, child in children:
                if id(child) in seen:
                    continue
                seen.add(id(child))
                names[id(child)] = name
                pending.append((f"{name}.", child))
    return names


class _Names:
    """Sub-module names of a program root, cached per root instance (weakly)."""

    def __init__(self) -> None:
        self._by_root: weakref.WeakKeyDictionary[Any, dict[int, str]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def of(self, root: Any, *, refresh: bool = False) -> dict[int, str]:
        try:
            names = None if refresh else self._by_root.get(root)
        except TypeError:  # unhashable module
            return _module_names(root)
        if names is None:
            names = _module_names(root)
            with self._lock:
                try:
                    self._by_root[root] = names
                except TypeError:
                    pass
        return names
