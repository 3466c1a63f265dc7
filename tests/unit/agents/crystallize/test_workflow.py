"""Running a crystallized workflow: fewer LM calls than the agent, the agent as guard, spans, loading."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import dspy
import pytest
from tests.unit.agents.crystallize.scenario import TRUSTED, Recorded, oracle, record_runs

import geode
from geode.agents.calculator import calculate
from geode.agents.crystallize import (
    Crystallization,
    CrystallizedWorkflow,
    WorkflowSpecError,
    crystallize,
    workflow_route,
)
from geode.errors import ConfigError
from geode.examples.inventory import build_agent, lookup_stock
from geode.runtime.instrumentation import instrument, uninstrument
from geode.runtime.programs import resolve
from geode.runtime.serving.schema import interface_of
from geode.runtime.settings import TracingSettings
from geode.testing import ScriptedLM, in_memory_tracing

NEW_QUESTIONS = {
    "How many sprockets are in stock?": ("27", "lookup_stock"),
    "What is 6 times 7?": ("42", "calculate"),
    "How many gizmos and sprockets are in stock together?": ("27", "lookup_stock_each_then_calculate"),
}


@pytest.fixture(scope="module")
def result(recorded: Recorded) -> Crystallization:
    return crystallize(
        recorded.agent, recorded.source, options=TRUSTED, agent_ref="geode.examples.inventory:agent"
    )


def _answers(program: dspy.Module, questions: list[str]) -> tuple[list[Any], int]:
    lm = ScriptedLM(oracle)
    with dspy.context(lm=lm):
        preds = [program(question=q) for q in questions]
    return preds, len(lm.calls)


def test_same_answers_as_the_agent_with_fewer_lm_calls(result: Crystallization) -> None:
    workflow = result.workflow()
    questions = list(NEW_QUESTIONS)
    agent_preds, agent_calls = _answers(build_agent(), questions)
    preds, calls = _answers(workflow, questions)
    assert (
        [p.answer for p in preds] == [p.answer for p in agent_preds] == [a for a, _ in NEW_QUESTIONS.values()]
    )
    assert [workflow_route(p) for p in preds] == [r for _, r in NEW_QUESTIONS.values()]
    assert [geode.fallback_choice(p).choice for p in preds] == ["primary"] * 3  # type: ignore[union-attr]
    # lookup: router only; calculate: router + answer; both: router + plan_2. The agent: 3 + 3 + 5.
    assert (calls, agent_calls) == (5, 11)


def test_router_other_goes_to_the_agent(result: Crystallization) -> None:
    (pred,), calls = _answers(result.workflow(), ["Tell me a joke"])
    choice = geode.fallback_choice(pred)
    assert choice is not None and choice.choice == "fallback"
    assert "the router chose 'other'" in str(choice.reason)
    assert workflow_route(pred) is None
    assert calls == 3  # the router, then the agent (finish at once, then extraction)


def _fallback_reason(workflow: CrystallizedWorkflow, question: str) -> str:
    (pred,), _ = _answers(workflow, [question])
    choice = geode.fallback_choice(pred)
    assert choice is not None and choice.choice == "fallback", choice
    assert pred.answer is not None  # the agent answered
    return str(choice.reason)


def test_a_failing_tool_sends_the_input_to_the_agent(result: Crystallization) -> None:
    @geode.tool
    def lookup_stock(item: str) -> str:
        """Stock of an item."""
        raise RuntimeError("database down at /srv/db.sqlite")

    reason = _fallback_reason(
        result.workflow(tools={"lookup_stock": lookup_stock}), "How many widgets are in stock?"
    )
    assert "a workflow step failed: ToolError: lookup_stock failed" in reason
    assert "/srv" not in reason  # scrubbed


def test_a_hanging_tool_times_out_and_the_agent_answers(result: Crystallization) -> None:
    @geode.tool(timeout_s=0.2)
    def calculate(expression: str) -> str:
        """Evaluate arithmetic."""
        time.sleep(3)
        return "0"

    started = time.monotonic()
    reason = _fallback_reason(result.workflow(tools={"calculate": calculate}), "What is 6 times 7?")
    assert "did not return within 0.2 s" in reason
    assert time.monotonic() - started < 2.5


def test_an_extraction_that_finds_nothing_sends_the_input_to_the_agent(result: Crystallization) -> None:
    def lm(messages: list[dict[str, str]]) -> dict[str, Any]:
        answer = oracle(messages)
        if "route" in answer:  # a router that takes an unknown item for a stock question
            answer.update(route="lookup_stock", lookup_stock_item="doohickey")
        return answer

    with dspy.context(lm=ScriptedLM(lm)):
        pred = result.workflow()(question="How many doohickeys are in stock?")
    choice = geode.fallback_choice(pred)
    assert choice is not None and choice.choice == "fallback"
    assert "found nothing in call_lookup_stock" in str(choice.reason)


def test_an_unparseable_router_reply_and_a_failed_validation(result: Crystallization) -> None:
    agent_script: Callable[[list[dict[str, str]]], dict[str, Any]] = oracle
    replies = iter([{"route": "lookup_stock"}])  # missing fields: the adapter cannot parse it

    def lm(messages: list[dict[str, str]]) -> dict[str, Any]:
        if "`route`" in messages[0]["content"]:
            return next(replies, {})
        return agent_script(messages)

    with dspy.context(lm=ScriptedLM(lm)):
        pred = result.workflow()(question="How many widgets are in stock?")
    choice = geode.fallback_choice(pred)
    assert choice is not None and choice.choice == "fallback" and "AdapterParseError" in str(choice.reason)
    assert pred.answer == "3"
    strict = result.workflow(validate=lambda p: p.answer != "3")
    reason = _fallback_reason(strict, "How many widgets are in stock?")
    assert reason == "primary's prediction failed validation"


def test_the_choice_route_and_lineage_are_on_the_trace(result: Crystallization) -> None:
    provider, exporter = in_memory_tracing()
    workflow = result.workflow()
    instrument(tracer_provider=provider)
    try:
        _answers(workflow, ["How many sprockets are in stock?", "Tell me a joke"])
    finally:
        uninstrument()
    spans = exporter.get_finished_spans()
    roots = [s for s in spans if s.name == "inventory-workflow"]
    assert len(roots) == 2
    answered, fell_back = (dict(s.attributes or {}) for s in sorted(roots, key=lambda s: s.start_time or 0))
    assert answered["geode.fallback.choice"] == "primary"
    assert answered["geode.workflow.route"] == "lookup_stock"
    assert fell_back["geode.fallback.choice"] == "fallback"
    assert "router chose 'other'" in str(fell_back["geode.fallback.reason"])
    steps = {str((s.attributes or {}).get("geode.workflow.step")): s for s in spans if s.attributes}
    assert {"router", "call_lookup_stock"} <= steps.keys()
    tool_step = dict(steps["call_lookup_stock"].attributes or {})
    lineage = tool_step["geode.workflow.source_spans"]
    assert isinstance(lineage, tuple)
    assert lineage == result.spec.route("lookup_stock").steps[0].lineage.span_ids
    assert any(
        s.name == "lookup_stock" and (s.attributes or {}).get("openinference.span.kind") == "TOOL"
        for s in spans
    )


def test_async_call(result: Crystallization) -> None:
    async def ask() -> Any:
        with dspy.context(lm=ScriptedLM(oracle)):
            return await result.workflow().acall(question="What is 6 times 7?")

    pred = asyncio.run(ask())
    assert pred.answer == "42" and workflow_route(pred) == "calculate"


def test_loading_from_a_file_and_as_a_program_reference(result: Crystallization, tmp_path: Path) -> None:
    path = str(result.save(tmp_path / "workflow.json"))
    loaded = CrystallizedWorkflow(path)  # the agent comes from the spec's agent_ref
    (pred,), _ = _answers(loaded, ["How many gadgets are in stock?"])
    assert pred.answer == "14"
    program = resolve(path)
    assert program.name == path and isinstance(program.module, CrystallizedWorkflow)
    interface = interface_of(program.module)  # what geode serve builds its request and response from
    assert [f.name for f in interface.inputs] == ["question"] and [f.name for f in interface.outputs] == [
        "answer"
    ]
    with geode.Runtime(
        lm=ScriptedLM(oracle), settings=geode.Settings(tracing=TracingSettings(enabled=False))
    ) as rt:
        assert rt.run(path, question="What is 6 times 7?").answer == "42"


def test_a_spec_without_an_agent_or_with_a_changed_tool(recorded: Recorded, result: Crystallization) -> None:
    spec = crystallize(recorded.agent, recorded.source, options=TRUSTED).spec
    with pytest.raises(ConfigError, match="names no agent_ref; pass agent="):
        CrystallizedWorkflow(spec)
    assert isinstance(CrystallizedWorkflow(spec, agent=recorded.agent).agent, geode.Agent)

    def lookup_stock(name: str) -> str:
        """Renamed argument."""
        return name

    with pytest.raises(WorkflowSpecError, match=r"no longer takes argument\(s\) item"):
        result.workflow(tools={"lookup_stock": lookup_stock})


def test_a_dspy_react_agent_crystallizes_and_guards_too() -> None:
    react = dspy.ReAct(cast(Any, "question -> answer"), tools=[lookup_stock, calculate], max_iters=4)
    recorded = record_runs(["How many widgets are in stock?", "How many gadgets do we have?"], agent=react)
    result = crystallize(react, recorded.source, options=TRUSTED)
    assert [r.label for r in result.spec.routes] == ["lookup_stock"]
    workflow = result.workflow()
    (found, fell_back), _ = _answers(workflow, ["How many sprockets are in stock?", "What is 2 plus 2?"])
    assert found.answer == "27" and workflow_route(found) == "lookup_stock"
    assert fell_back.answer == "4" and workflow_route(fell_back) is None  # dspy.ReAct answered
    choice = geode.fallback_choice(fell_back)
    assert choice is not None and choice.choice == "fallback"


def test_a_missing_spec_file_is_a_clear_program_error(tmp_path: Path) -> None:
    from geode.errors import ProgramNotFoundError

    with pytest.raises(ProgramNotFoundError, match="no such workflow spec file"):
        resolve(str(tmp_path / "nope.json"))
