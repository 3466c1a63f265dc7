"""Resolve program references to DSPy modules.

A reference is either a name registered in code (:func:`register_program`) or ``module.path:attribute``
like uvicorn apps, where the attribute is a ``dspy.Module`` instance, a ``dspy.Module`` subclass or a
zero-argument factory. ``path/to/file.py:attribute`` works too, for programs that are not installed, and
``path/to/workflow.json`` loads a crystallized workflow spec (``geode crystallize``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import dspy

from geode.errors import ProgramNotFoundError
from geode.refs import import_ref

__all__ = [
    "Program",
    "ProgramRef",
    "ResolvedProgram",
    "declared_name",
    "register_program",
    "registered_programs",
    "resolve",
]

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
    aliases: tuple[str, ...] = ()
    """Other names the same program answers to (the reference it was loaded by, its class name);
    recorded on spans so filters find the program by any of them."""


def declared_name(module: object) -> str | None:
    """The name a module gives itself: ``geode_program_name`` (``geode.Agent(name=...)`` sets it).

    Example:
        >>> import geode
        >>> declared_name(geode.Agent("q -> a", tools=[], name="helper")), declared_name(dspy.Predict("q -> a"))
        ('helper', None)
    """
    value = getattr(module, "geode_program_name", None)
    return value if isinstance(value, str) and value else None


def _named(name: str | None, module: dspy.Module, *fallbacks: str) -> ResolvedProgram:
    """The program's one name: given > declared by the module > the first fallback; the rest are aliases."""
    chosen = name or declared_name(module) or fallbacks[0]
    aliases = tuple(dict.fromkeys(a for a in (*fallbacks, declared_name(module) or "") if a and a != chosen))
    return ResolvedProgram(chosen, module, aliases)


def _registered_name(module: dspy.Module) -> str | None:
    """The name an instance was registered under (the same object), if any."""
    with _LOCK:
        return next((n for n, p in _REGISTRY.items() if p is module), None)


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


def _workflow_spec(ref: str) -> dspy.Module:
    """A crystallized workflow from its spec file; the guard agent is resolved like any reference.

    The spec is JSON checked against its schema, content hash and signature; its agent is imported
    only if the spec is signed with the operator's key, allow-listed, or a registered program name,
    and its tools only if they are the agent's own or allow-listed (see ``geode.agents.crystallize.trust``).
    """
    from geode.agents.crystallize import CrystallizedWorkflow, WorkflowSpec
    from geode.agents.crystallize.workflow import check_agent_ref

    path = Path(ref)
    if not path.is_file():
        raise ProgramNotFoundError(f"no such workflow spec file {ref!r}")
    spec = WorkflowSpec.load(path)
    if spec.agent_ref is None:
        raise ProgramNotFoundError(
            f"workflow spec {ref!r} names no agent_ref, so it has no agent to fall back to",
            hint="re-create it with `geode crystallize REF`, which records the agent's reference",
        )
    if spec.agent_ref not in registered_programs():
        check_agent_ref(spec)
    agent = resolve(spec.agent_ref).module
    return CrystallizedWorkflow(spec, agent=agent)


def resolve(ref: ProgramRef, *, name: str | None = None) -> ResolvedProgram:
    """Turn a reference into a module and its name.

    Args:
        ref: A ``dspy.Module``, a registered name, or ``module:attribute`` / ``file.py:attribute``.
        name: Override the name spans and versions use. Default, the program's one name wherever it
            is run from: its registered name, else the name the module declares
            (``geode.Agent(name=...)``), else the reference (the class name for a module passed
            directly). The other names become :attr:`ResolvedProgram.aliases`.

    Returns:
        The resolved program.

    Raises:
        ProgramNotFoundError: The reference names nothing usable; the message says why.
    """
    if isinstance(ref, dspy.Module):
        return _named(name or _registered_name(ref), ref, type(ref).__name__)
    if not isinstance(ref, str) or not ref:
        raise ProgramNotFoundError(f"a program reference must be a dspy.Module or a string, got {ref!r}")
    with _LOCK:
        registered = _REGISTRY.get(ref)
    if registered is not None:
        # A registered name is given explicitly: it wins over the module's own.
        module = _instantiate(registered, ref)
        return _named(name or ref, module, type(module).__name__)
    if ref.endswith(".json"):
        return ResolvedProgram(name or ref, _workflow_spec(ref))
    if ":" not in ref:
        known = ", ".join(registered_programs()) or "none"
        raise ProgramNotFoundError(
            f"unknown program {ref!r} (registered: {known})",
            hint="use 'package.module:attribute' or register it with geode.register_program",
        )
    obj = import_ref(ref, what="program", error=ProgramNotFoundError)
    module = _instantiate(obj, ref)
    return _named(name or _registered_name(module), module, ref, type(module).__name__)
