"""One request's run as the server tracks it, and the values it hands back.

:class:`Call` is everything about one run (which module and version answer, the inputs, the caller,
its span), filled in as the request goes; :class:`Outcome` is what the run produced. The helpers turn
program values into JSON and read token usage off a prediction.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dspy
from opentelemetry.trace import Span
from pydantic import BaseModel

from geode.runtime.registry import RoutedVersion
from geode.runtime.serving.abandon import Abandonment
from geode.runtime.serving.hosting import Hosted
from geode.runtime.serving.traffic import Candidate

__all__ = [
    "REQUEST_HEADER",
    "TRACE_HEADER",
    "VERSION_HEADER",
    "Call",
    "Outcome",
    "RecentRun",
    "hex_trace",
    "jsonable",
    "response_headers",
    "usage_of",
    "visible_inputs",
]

TRACE_HEADER = "X-Trace-Id"
VERSION_HEADER = "X-Geode-Version"
REQUEST_HEADER = "X-Request-Id"


@dataclass
class RecentRun:
    """A run this server (or a replica on the state database) answered: what feedback on it refers to."""

    span_id: str
    program: str
    version: str | None
    caller: str
    """Who ran it: only that API key may send feedback on it."""


@dataclass
class Outcome:
    """What a run produced: its outputs as JSON values, and the tokens and cost it used."""

    outputs: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


@dataclass
class Call:
    """Everything about one request's run, filled in as it goes."""

    hosted: Hosted
    module: dspy.Module
    version: str | None
    role: str
    inputs: dict[str, Any]
    session_id: str | None
    user_id: str | None
    request_id: str
    caller: str
    lm_overrides: dict[str, Any] = field(default_factory=dict[str, Any])
    background: bool = False
    """A shadow run the server started itself (not charged to the caller)."""
    shadow: Candidate | RoutedVersion | None = None
    """The shadow candidate to run on a copy of this call once it answered, if any."""
    abandoned: Abandonment = field(default_factory=Abandonment)
    span: Span | None = None
    trace_id: str | None = None
    started: float = field(default_factory=time.perf_counter)


def jsonable(value: Any) -> Any:
    """``value`` as JSON-ready data: models dumped, mappings and sequences walked, the rest as text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        with contextlib.suppress(Exception):
            return jsonable(to_dict())
    return str(value)


def usage_of(prediction: Any) -> tuple[int, int, float | None]:
    """Prompt tokens, completion tokens and cost (if the LM priced it) summed over a prediction's LMs."""
    getter = getattr(prediction, "get_lm_usage", None)
    usage: Any = getter() if callable(getter) else None
    prompt = completion = 0
    cost: float | None = None
    for entry in (usage or {}).values():
        if not isinstance(entry, Mapping):
            continue
        prompt += int(entry.get("prompt_tokens") or 0)
        completion += int(entry.get("completion_tokens") or 0)
        value = entry.get("cost")
        if isinstance(value, int | float):
            cost = (cost or 0.0) + float(value)
    return prompt, completion, cost


def hex_trace(span: Span) -> str | None:
    """The span's trace id as 32 hex digits, or None for a span that is not recorded anywhere."""
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def visible_inputs(call: Call) -> dict[str, Any]:
    """The call's inputs without the history the server filled in from the session."""
    history = call.hosted.interface.history_field
    return {k: v for k, v in call.inputs.items() if k != history}


def response_headers(call: Call) -> dict[str, str]:
    """The request id, the version that answered and the trace id, as response headers."""
    headers = {REQUEST_HEADER: call.request_id, VERSION_HEADER: call.version or "base"}
    if call.trace_id:
        headers[TRACE_HEADER] = call.trace_id
    return headers
