"""``module:attr`` references: how a spec names its tools and agent without holding any code."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from typing import Any, Final, get_args, get_origin

import dspy

from geode.agents.crystallize.spec import TYPE_NAMES, WorkflowSpecError
from geode.agents.tools import GuardedTool
from geode.errors import ConfigError
from geode.refs import import_ref as import_any

__all__ = ["agent_parts", "import_ref", "list_of", "ref_of", "tool_timeout", "type_name"]


def import_ref(ref: str, *, what: str = "reference") -> Any:
    """The object ``package.module:attribute`` (or ``file.py:attribute``) names; nothing but an import runs.

    Raises:
        WorkflowSpecError: The reference is malformed, or its module or attribute does not exist.
    """
    return import_any(ref, what=what, error=WorkflowSpecError)


def ref_of(func: Any) -> str | None:
    """The ``module:attr`` under which ``func`` (or a tool wrapping it) can be imported, if any."""
    module_name = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        return None
    if "<locals>" in qualname or module_name == "__main__" or module_name.startswith("_geode_"):
        return None
    module = sys.modules.get(module_name)
    target: Any = module
    for attr in qualname.split("."):
        target = getattr(target, attr, None)
        if target is None:
            return None
    if target is func or getattr(target, "func", None) is func:
        return f"{module_name}:{qualname}"
    return None


def agent_parts(agent: Any) -> tuple[type[dspy.Signature], dict[str, dspy.Tool]]:
    """The signature and tools (``finish`` left out) of a ``geode.Agent`` or ``dspy.ReAct``.

    Raises:
        ConfigError: ``agent`` is neither.
    """
    signature = getattr(agent, "signature", None)
    tools = getattr(agent, "tools", None)
    if not (
        isinstance(agent, dspy.Module)
        and inspect.isclass(signature)
        and issubclass(signature, dspy.Signature)
        and isinstance(tools, Mapping)
    ):
        raise ConfigError(
            f"crystallization needs a geode.Agent or dspy.ReAct, got {type(agent).__name__}",
            hint="point REF at the agent whose runs were recorded",
        )
    found = {
        str(name): tool
        for name, tool in tools.items()
        if name not in ("finish", "submit") and isinstance(tool, dspy.Tool)
    }
    return signature, found


def tool_timeout(tool: dspy.Tool) -> float | None:
    """The timeout a tool runs with in its agent (``GuardedTool.timeout_s``, else Geode's default)."""
    if isinstance(tool, GuardedTool):
        return tool.timeout_s
    from geode.agents.tools import DEFAULT_TOOL_TIMEOUT_S

    return DEFAULT_TOOL_TIMEOUT_S


_SCALARS: Final[dict[Any, str]] = {str: "str", int: "int", float: "float", bool: "bool"}


def type_name(annotation: Any) -> tuple[str, tuple[str, ...] | None]:
    """A spec type name for a Python annotation, and its choices for a ``Literal`` of strings.

    Types a spec cannot name (pydantic models, unions) become ``str``: the LM answers in text.
    """
    if annotation in _SCALARS:
        return _SCALARS[annotation], None
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is not None and str(origin) == "typing.Literal" and all(isinstance(a, str) for a in args):
        return "str", tuple(args)
    if origin in (list, tuple) and args and args[0] in (str, int, float):
        name = f"list[{_SCALARS[args[0]]}]"
        return (name, None) if name in TYPE_NAMES else ("list[str]", None)
    if annotation is dict or origin is dict:
        return "dict", None
    return "str", None


def list_of(name: str) -> str:
    """The list type of a scalar spec type (``int`` → ``list[int]``)."""
    candidate = f"list[{name}]"
    return candidate if candidate in TYPE_NAMES else "list[str]"
