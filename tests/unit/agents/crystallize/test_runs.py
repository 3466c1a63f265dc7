"""Reading agent runs back from traces: geode.Agent and dspy.ReAct, tool errors, scores, filters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import dspy
import pytest
from tests.unit.agents.crystallize.scenario import oracle, record_runs

import geode
from geode.agents.crystallize import AgentRun, RunScore, read_runs, runs_from_traces
from geode.evals.dataset import Dataset
from geode.evals.evaluate import evaluate
from geode.examples.inventory import lookup_stock
from geode.runtime.instrumentation import instrument, uninstrument
from geode.testing import ScriptedLM, in_memory_tracing
from geode.traces.sources import InMemoryTraceSource, TraceFilter


def test_one_run_per_agent_trace_with_inputs_calls_and_outputs(recorded_runs: list[AgentRun]) -> None:
    assert len(recorded_runs) == 14
    run = next(r for r in recorded_runs if r.inputs["question"].startswith("How many widgets and gadgets"))
    assert [(c.tool, dict(c.args)) for c in run.calls] == [
        ("lookup_stock", {"item": "widget"}),
        ("lookup_stock", {"item": "gadget"}),
        ("calculate", {"expression": "3 + 14"}),
    ]
    assert [c.observation for c in run.calls] == [
        "widget: 3 units in stock",
        "gadget: 14 units in stock",
        "17",
    ]
    assert run.outputs == {"answer": "17"}
    assert run.termination == "finish" and run.completed and run.succeeded(unscored_ok=True)
    assert run.agent == "inventory" and run.program == "Agent"
    assert run.lm_calls == 5 and run.tokens > 0
    assert len(run.trace_id) == 32 and len(run.span_id) == 16
    assert all(len(c.span_id) == 16 for c in run.calls)


def test_failed_tool_calls_and_failed_runs(recorded_runs: list[AgentRun]) -> None:
    retry = next(r for r in recorded_runs if "(retry)" in r.inputs["question"])
    first, second = retry.calls
    assert not first.ok and first.error is not None and "nine" in str(first.args["expression"])
    assert second.ok and second.observation == "81"
    assert retry.ok_calls == (second,)
    looping = next(r for r in recorded_runs if "(loop)" in r.inputs["question"])
    assert looping.termination == "max_iters"
    assert not looping.completed and looping.failure() == "max_iters"


def test_scores_mark_runs_that_completed_but_were_judged_wrong(recorded_runs: list[AgentRun]) -> None:
    recorded = record_runs(["What is 3 times 3? (wrong)", "What is 12 times 7?"])
    traces = list(recorded.source.traces())
    wrong = next(t for t in traces if "wrong" in str(t.root.input_value if t.root else ""))
    runs = runs_from_traces(traces, scores={wrong.trace_id: RunScore(0.0, "3 x 3 is 9")})
    judged = {r.inputs["question"]: r for r in runs}
    bad = judged["What is 3 times 3? (wrong)"]
    assert bad.completed and not bad.succeeded() and bad.failure() == "low score"
    assert bad.feedback == "3 x 3 is 9"
    good = judged["What is 12 times 7?"]
    # Completed but unscored: unknown, not a success, unless unscored runs are trusted.
    assert not good.succeeded() and good.failure() == "unscored" and good.kind == "unscored"
    assert good.succeeded(unscored_ok=True) and good.failure(unscored_ok=True) is None
    assert bad.kind == "feedback"


def test_score_of_the_evaluation_span_around_a_run() -> None:
    provider, exporter = in_memory_tracing()
    agent = geode.Agent("question -> answer", tools=[lookup_stock], name="stock")
    data = Dataset.from_records(
        [
            {"inputs": {"question": "How many widgets are in stock?"}, "outputs": {"answer": "3"}},
            {"inputs": {"question": "How many gadgets are in stock?"}, "outputs": {"answer": "99"}},
        ]
    )
    instrument(tracer_provider=provider)
    try:
        with dspy.context(lm=ScriptedLM(oracle)):
            evaluate(agent, data, _exact, tracer=provider.get_tracer("test"))
    finally:
        uninstrument()
    runs = runs_from_traces(InMemoryTraceSource(exporter).traces())
    assert sorted((r.inputs["question"][9:16], r.score) for r in runs) == [("gadgets", 0.0), ("widgets", 1.0)]
    assert {r.kind for r in runs} == {"eval"}


def _exact(example: dspy.Example, pred: dspy.Prediction, trace: object = None) -> bool:
    return str(pred.answer) == str(example.answer)


def test_dspy_react_runs_read_the_same_way() -> None:
    react = dspy.ReAct(cast(Any, "question -> answer"), tools=[lookup_stock], max_iters=3)
    recorded = record_runs(["How many gadgets are in stock?"], agent=react)
    (run,) = runs_from_traces(recorded.source.traces())
    assert run.agent == "ReAct"
    assert [(c.tool, dict(c.args), c.observation) for c in run.calls] == [
        ("lookup_stock", {"item": "gadget"}, "gadget: 14 units in stock")
    ]
    assert run.outputs == {"answer": "14"} and run.termination == "finish" and run.succeeded(unscored_ok=True)


def test_read_runs_filters_by_program_and_only_counts_the_outermost_agent() -> None:
    recorded = record_runs(["How many widgets are in stock?"])
    source = recorded.source
    assert len(read_runs(source, TraceFilter(program="Agent"))) == 1
    assert read_runs(source, TraceFilter(program="something-else")) == []


@pytest.fixture
def nested_agents() -> Iterator[InMemoryTraceSource]:
    provider, exporter = in_memory_tracing()
    inner = geode.Agent("question -> answer", tools=[lookup_stock], name="inner")

    def ask_expert(question: str) -> str:
        """Ask another agent."""
        return str(inner(question=question).answer)

    outer = geode.Agent("question -> answer", tools=[ask_expert], name="outer")
    script = ScriptedLM(
        [
            {
                "next_thought": "Ask.",
                "next_tool_name": "ask_expert",
                "next_tool_args": {"question": "widgets?"},
            },
            {"next_thought": "Look.", "next_tool_name": "lookup_stock", "next_tool_args": {"item": "widget"}},
            {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}},
            {"reasoning": "3", "answer": "3"},
            {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}},
            {"reasoning": "3", "answer": "3"},
        ]
    )
    instrument(tracer_provider=provider)
    try:
        with dspy.context(lm=script):
            outer(question="How many widgets?")
    finally:
        uninstrument()
    yield InMemoryTraceSource(exporter)


def test_a_sub_agent_called_as_a_tool_is_part_of_its_parents_run(nested_agents: InMemoryTraceSource) -> None:
    (run,) = read_runs(nested_agents)
    assert run.agent == "outer"
    assert [c.tool for c in run.calls] == ["ask_expert"]
    assert run.calls[0].observation == "3"
    assert run.lm_calls == 3  # two steps and the extraction; the inner agent's calls belong to the tool


def test_truncated_or_undecodable_runs_are_not_successes() -> None:
    from datetime import UTC, datetime

    from geode.traces.records import SpanRecord

    now = datetime.now(UTC)
    span = SpanRecord(
        "a" * 32,
        "1" * 16,
        None,
        "agent",
        "AGENT",
        now,
        now,
        attributes={
            "input.value": '{"question": "q"}',
            "output.value": '{"answer": "x',
            "geode.truncated": True,
        },
    )
    (run,) = runs_from_traces(InMemoryTraceSource([span]).traces())
    assert run.problems and not run.completed and run.failure() == "unreadable"
