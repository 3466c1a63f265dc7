"""What agents and workflows look like as real spans on a traced runtime (in-memory exporter).

``test_agent.py`` and ``test_fallback.py`` check the hooks and the callback tree spans are built from;
these run the same programs through ``Runtime.run`` with tracing on and read the exported spans: a
failing tool's error is on its TOOL span, scrubbed; a refused tool runs no TOOL span; the agent's
termination and a ``Fallback``'s choice are attributes of their own spans.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dspy
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from geode.agents import Agent, Budget, Fallback
from geode.runtime.runtime import Runtime
from geode.runtime.settings import Settings
from geode.testing import ScriptedLM, in_memory_tracing
from geode.traces.vocab import GeodeAttributes, SpanAttributes

SECRET = "hunter2"
KIND = SpanAttributes.OPENINFERENCE_SPAN_KIND


def query_db(sql: str) -> str:
    """Run a read-only query."""
    raise RuntimeError(f"connect failed: postgres://app:{SECRET}@db/prod (config /srv/app/settings.py)")


def lookup_stock(item: str) -> int:
    """Units of an item in stock."""
    return {"widget": 3}[item]


def step(tool: str, **args: Any) -> dict[str, Any]:
    return {"next_thought": f"use {tool}", "next_tool_name": tool, "next_tool_args": args}


FINISH = step("finish")


def answer(text: str) -> dict[str, Any]:
    return {"reasoning": "from the trajectory", "answer": text}


@pytest.fixture
def tracing() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    provider, exporter = in_memory_tracing()
    yield provider, exporter
    provider.shutdown()


def traced_run(
    tracing: tuple[TracerProvider, InMemorySpanExporter], program: dspy.Module, lm: ScriptedLM, **inputs: Any
) -> tuple[Any, list[ReadableSpan]]:
    provider, exporter = tracing
    with Runtime(Settings(), lm=lm, adapter=dspy.ChatAdapter(), tracer_provider=provider) as rt:
        pred = rt.run(program, **inputs)
    return pred, list(exporter.get_finished_spans())


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _of_kind(spans: list[ReadableSpan], kind: str) -> list[ReadableSpan]:
    return [s for s in spans if _attrs(s).get(KIND) == kind]


def test_a_failing_tool_is_an_error_tool_span_with_the_secret_scrubbed(
    tracing: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    agent = Agent("question -> answer", tools=[query_db], name="db-agent")
    lm = ScriptedLM([step("query_db", sql="select 1"), FINISH, answer("unknown")])
    pred, spans = traced_run(tracing, agent, lm, question="How many orders?")
    assert pred.answer == "unknown"

    (tool_span,) = _of_kind(spans, "TOOL")
    assert tool_span.name == "query_db"
    assert tool_span.status.status_code is StatusCode.ERROR
    assert _attrs(tool_span)[GeodeAttributes.TOOL_ERROR] is True
    assert "connect failed" in (tool_span.status.description or "")
    # Nothing exported carries the secret or the server's file path: not the status, events or attributes.
    for span in spans:
        exported = [span.status.description, *map(str, _attrs(span).values())]
        exported += [str(dict(e.attributes or {})) for e in span.events]
        text = " ".join(str(x) for x in exported)
        assert SECRET not in text and "/srv/app" not in text, span.name
    # The agent handled the error: its own span ends normally and says how the run ended.
    (agent_span,) = _of_kind(spans, "AGENT")
    assert agent_span.name == "db-agent" and agent_span.status.status_code is not StatusCode.ERROR
    assert _attrs(agent_span)[GeodeAttributes.AGENT_TERMINATION] == "finish"


def test_a_tool_off_the_allow_list_runs_no_tool_span(
    tracing: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    def delete_everything() -> str:
        """Not for this agent."""
        raise AssertionError("must never run")

    agent = Agent("question -> answer", tools=[lookup_stock, delete_everything], allow=["lookup_stock"])
    lm = ScriptedLM([step("delete_everything"), step("lookup_stock", item="widget"), FINISH, answer("3")])
    pred, spans = traced_run(tracing, agent, lm, question="Widgets?")
    assert pred.answer == "3"
    assert [s.name for s in _of_kind(spans, "TOOL")] == ["lookup_stock"]


def test_the_fallback_choice_and_reason_are_on_the_fallback_span(
    tracing: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    # The primary agent runs out of iterations without an answer; validation sends the input on.
    primary = Agent("question -> answer", tools=[lookup_stock], name="primary", budget=Budget(max_iters=1))
    fallback = dspy.Predict("question -> answer")
    program = Fallback(primary, fallback, validate=lambda p: p.answer is not None and p.answer != "")
    lm = ScriptedLM(
        [
            step("lookup_stock", item="widget"),
            {"reasoning": "r", "answer": ""},  # the primary's extraction: empty, fails validation
            {"answer": "3"},  # the fallback
        ]
    )
    pred, spans = traced_run(tracing, program, lm, question="Widgets?")
    assert pred.answer == "3"
    (span,) = [s for s in spans if GeodeAttributes.FALLBACK_CHOICE in _attrs(s)]
    assert _attrs(span)[GeodeAttributes.FALLBACK_CHOICE] == "fallback"
    assert _attrs(span)[GeodeAttributes.FALLBACK_REASON] == "primary's prediction failed validation"
    # Both attempts are visible under it: the primary agent's span and the fallback's predictor.
    assert span.context is not None
    children = {s.name: s for s in spans if s.parent is not None and s.parent.span_id == span.context.span_id}
    assert "primary" in children, sorted(children)
    assert _attrs(children["primary"])[GeodeAttributes.AGENT_TERMINATION] == "max_iters"
    assert len(children) == 2, sorted(children)
