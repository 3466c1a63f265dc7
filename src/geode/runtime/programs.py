"""Resolve program references to DSPy modules.

A reference is either a name registered in code (:func:`register_program`) or ``module.path:attribute``
like uvicorn apps, where the attribute is a ``dspy.Module`` instance, a ``dspy.Module`` subclass or a
zero-argument factory. ``path/to/file.py:attribute`` works too, for programs that are not installed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

import dspy

from geode.errors import ProgramNotFoundError
from geode.refs import import_ref

__all__ = ["Program", "ProgramRef", "ResolvedProgram", "register_program", "registered_programs", "resolve"]

Program: TypeAlias = dspy.Module
ProgramRef: TypeAlias = "str | dspy.Module"
ProgramFactory: TypeAlias = Callable[[], dspy.Module]

_REGISTRY: dict[str, dspy.Module | ProgramFactory] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class ResolvedProgram:
    """A program and the name its spans and versions are filed under."""

    name: str
    module: dspy.Module


def register_program(name: str, program: dspy.Module | ProgramFactory) -> None:
    """Register a program (or a zero-argument factory) under a short name.

    Args:
        name: The name used on the CLI, in HTTP routes and as ``geode.program.name`` on spans.
        program: A ``dspy.Module`` instance or a callable that builds one.
    """
    if not name or ":" in name:
        raise ValueError(f"program names must be non-empty and contain no ':' (got {name!r})")
    with _LOCK:
        _REGISTRY[name] = program


def registered_programs() -> list[str]:
    """Names registered with :func:`register_program`, sorted."""
    with _LOCK:
        return sorted(_REGISTRY)


def _instantiate(obj: object, ref: str) -> dspy.Module:
    if isinstance(obj, dspy.Module):
        return obj
    if isinstance(obj, type) and issubclass(obj, dspy.Module):
        return obj()
    if callable(obj):
        try:
            built = obj()
        except TypeError as err:
            raise ProgramNotFoundError(
                f"{ref!r} is callable but could not be called with no arguments: {err}",
                hint="point the reference at a dspy.Module instance or a zero-argument factory",
            ) from err
        if isinstance(built, dspy.Module):
            return built
        raise ProgramNotFoundError(f"{ref!r} returned {type(built).__name__}, not a dspy.Module")
    raise ProgramNotFoundError(
        f"{ref!r} is a {type(obj).__name__}, not a dspy.Module",
        hint="point the reference at a dspy.Module instance, subclass or zero-argument factory",
    )


def resolve(ref: ProgramRef, *, name: str | None = None) -> ResolvedProgram:
    """Turn a reference into a module and its name.

    Args:
        ref: A ``dspy.Module``, a registered name, or ``module:attribute`` / ``file.py:attribute``.
        name: Override the name spans and versions use (defaults to the reference, or the class name
            for a module passed directly).

    Returns:
        The resolved program.

    Raises:
        ProgramNotFoundError: The reference names nothing usable; the message says why.
    """
    if isinstance(ref, dspy.Module):
        return ResolvedProgram(name or type(ref).__name__, ref)
    if not isinstance(ref, str) or not ref:
        raise ProgramNotFoundError(f"a program reference must be a dspy.Module or a string, got {ref!r}")
    with _LOCK:
        registered = _REGISTRY.get(ref)
    if registered is not None:
        return ResolvedProgram(name or ref, _instantiate(registered, ref))
    if ":" not in ref:
        known = ", ".join(registered_programs()) or "none"
        raise ProgramNotFoundError(
            f"unknown program {ref!r} (registered: {known})",
            hint="use 'package.module:attribute' or register it with geode.register_program",
        )
    obj = import_ref(ref, what="program", error=ProgramNotFoundError)
    return ResolvedProgram(name or ref, _instantiate(obj, ref))
