"""The callback's records of open spans: one per DSPy call in flight, plus a ReAct loop's state.

Also the stand-in for DSPy's usage tracker that gives each LLM span exactly its own call's usage.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import Token
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import Span, Tracer

from geode.runtime.instrumentation._module_facts import _ModuleClass
from geode.traces.context import RunIdentity


@dataclass(slots=True)
class _Agent:
    react: Any = None
    """The ReAct loop's step predictor; its calls delimit iterations."""
    iteration: Span | None = None
    iterations: int = 0
    finished: bool = False


@dataclass(slots=True)
class _Open:
    span: Span
    token: Token[Context] | None
    identity_attrs: Mapping[str, Any]
    identity: RunIdentity | None
    tracer: Tracer | None = None
    """The tracer this call's span came from; its children use it too (worker threads included)."""
    root: Any = None
    """The program instance whose sub-module names apply below this span."""
    names: dict[int, str] = field(default_factory=dict[int, str])
    predictor: str | None = None
    agent: _Agent | None = None
    module: Any = None
    info: _ModuleClass | None = None
    inputs: Mapping[str, Any] | None = None
    lm: _LMCapture | None = None
    lm_token: Token[Any] | None = None

    def parent_span(self) -> Span:
        """Where a child opened directly under this call belongs (the open ReAct iteration, if any)."""
        agent = self.agent
        if agent is not None and agent.iteration is not None:
            return agent.iteration
        return self.span


class _LMCapture:
    """Stands in for DSPy's usage tracker and history owner during one LM call.

    DSPy hands each call's usage to ``settings.usage_tracker`` (except on cache hits) and its history
    entry (usage, cost, response model) to every module in ``settings.caller_modules``; installing this
    object in both for the duration of the call gives the span exactly its own call's numbers, even
    when threads share one LM. Usage is forwarded to the tracker it replaced.
    """

    __slots__ = ("history", "outer", "tracked", "usage")

    def __init__(self, outer: Any) -> None:
        self.outer = outer
        self.usage: Mapping[str, Any] | None = None
        self.tracked = False
        self.history: list[dict[str, Any]] = []

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        self.tracked = True
        self.usage = usage_entry
        if self.outer is not None:
            self.outer.add_usage(lm, usage_entry)

    def __getattr__(self, name: str) -> Any:
        # Any other tracker method (get_total_tokens...) answers from the tracker this one wraps.
        outer = object.__getattribute__(self, "outer")
        if outer is None:
            raise AttributeError(name)
        return getattr(outer, name)
