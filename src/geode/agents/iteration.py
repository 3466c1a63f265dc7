"""One ReAct iteration of :class:`~geode.agents.agent.Agent` as a DSPy module of its own (its own span).

The iteration asks the model for a step, runs the chosen tool (or not: finish, a refused or repeated
call, an unparsed reply) and records the step on the run, however it ends.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError
from dspy.utils.usage_tracker import UsageTracker

from geode.agents.run import _Plan, _Run
from geode.agents.scrub import scrub
from geode.agents.steps import StepOutcome
from geode.agents.tools import ToolArgumentError
from geode.errors import BudgetExceededError, ToolTimeoutError
from geode.traces.vocab import GeodeAttributes

_INDEX_ARG = "iteration_index"
_REPEATED_NOTE = "Not executed: identical to an earlier call, so the run stops here."


def _call_kwargs(inputs: Mapping[str, Any]) -> Mapping[str, Any]:
    # DSPy passes callbacks the bound arguments of Module.__call__: {"args": (...), "kwargs": {...}}.
    nested = inputs.get("kwargs")
    return nested if isinstance(nested, Mapping) else inputs


class _StepBuilder:
    """Measures one iteration and records it as an :class:`AgentStep`, however it ends."""

    def __init__(self, run: _Run, index: int, usage: UsageTracker) -> None:
        self.run = run
        self.index = index
        self.usage = usage
        self.started = time.perf_counter()
        self.calls_before = run.counter.count
        self.tool_started: float | None = None

    def record(
        self, plan: _Plan, outcome: StepOutcome, observation: str | None, error: str | None
    ) -> dspy.Prediction:
        tool_latency_ms = (
            None if self.tool_started is None else (time.perf_counter() - self.tool_started) * 1000
        )
        step = self.run.record(
            self.index,
            plan,
            outcome=outcome,
            observation=observation,
            error=error,
            started=self.started,
            tool_latency_ms=tool_latency_ms,
            usage=self.usage,
            calls_before=self.calls_before,
        )
        return dspy.Prediction(**step.to_dict())

    def cut(self, err: BudgetExceededError) -> None:
        """Record a step the time budget stopped before the model answered."""
        self.record(_Plan("cut", "", None, {}), StepOutcome.BUDGET, None, scrub(str(err)))

    def without_tool(self, plan: _Plan) -> dspy.Prediction | None:
        """Record every plan that runs no tool; ``None`` for a tool call."""
        if plan.kind == "finish":
            return self.record(plan, StepOutcome.FINISH, "Completed.", None)
        if plan.kind == "repeat":
            return self.record(plan, StepOutcome.REPEATED, _REPEATED_NOTE, "repeated an identical tool call")
        if plan.kind == "refuse":
            return self.record(plan, StepOutcome.NOT_ALLOWED, plan.message, plan.message)
        if plan.kind == "unparsed":
            return self.record(plan, StepOutcome.UNPARSED, plan.message, plan.message)
        self.tool_started = time.perf_counter()
        return None

    def tool_returned(self, plan: _Plan, value: Any) -> dspy.Prediction:
        return self.record(plan, StepOutcome.OK, self.run.observation_text(value), None)

    def tool_failed(self, plan: _Plan, err: Exception) -> dspy.Prediction:
        """Record a failed tool call; a run-budget failure is re-raised to end the run."""
        message = self.run.tool_failure(err)
        if isinstance(err, BudgetExceededError):
            self.record(plan, StepOutcome.BUDGET, None, message)
            raise err
        if isinstance(err, ToolArgumentError):
            outcome = StepOutcome.INVALID_ARGS
        elif isinstance(err, ToolTimeoutError):
            outcome = StepOutcome.TIMEOUT
        else:
            outcome = StepOutcome.TOOL_ERROR
        return self.record(plan, outcome, f"Error: {message}", message)


class _Iteration(dspy.Module):
    """One ReAct iteration: an LM call choosing a tool, then that tool's call. Its own span."""

    def __init__(self, react: dspy.Predict) -> None:
        super().__init__()
        self.react = react

    def geode_span_name(self, inputs: Mapping[str, Any]) -> str:
        index = _call_kwargs(inputs).get(_INDEX_ARG)
        return f"iteration {index + 1}" if isinstance(index, int) else "iteration"

    def geode_span_attributes(self, inputs: Mapping[str, Any], outputs: Any) -> dict[str, Any]:
        index = _call_kwargs(inputs).get(_INDEX_ARG)
        # Numbered from 1, like the span name and dspy.ReAct's iterations.
        return {GeodeAttributes.AGENT_ITERATION: index + 1} if isinstance(index, int) else {}

    def forward(self, iteration_index: int, **inputs: Any) -> dspy.Prediction:
        run = _Run.current()
        with dspy.track_usage() as usage:
            step = _StepBuilder(run, iteration_index, usage)
            try:
                with run.agent.grammar_adapter(no_finish=run.finish_barred()):
                    plan = run.plan(run.call_lm(lambda t: self.react(**inputs, trajectory=t)))
            except AdapterParseError as err:
                plan = run.unparsed_from(err)
            except BudgetExceededError as err:
                step.cut(err)
                raise
            done = step.without_tool(plan)
            if done is not None:
                return done
            try:
                value = run.agent.tools[str(plan.tool)](**plan.args)
            except Exception as err:
                return step.tool_failed(plan, err)
            return step.tool_returned(plan, value)

    async def aforward(self, iteration_index: int, **inputs: Any) -> dspy.Prediction:
        run = _Run.current()
        with dspy.track_usage() as usage:
            step = _StepBuilder(run, iteration_index, usage)
            try:
                with run.agent.grammar_adapter(no_finish=run.finish_barred()):
                    pred = await run.acall_lm(lambda t: self.react.acall(**inputs, trajectory=t))
                plan = run.plan(pred)
            except AdapterParseError as err:
                plan = run.unparsed_from(err)
            except BudgetExceededError as err:
                step.cut(err)
                raise
            done = step.without_tool(plan)
            if done is not None:
                return done
            try:
                value = await run.agent.tools[str(plan.tool)].acall(**plan.args)
            except Exception as err:
                return step.tool_failed(plan, err)
            return step.tool_returned(plan, value)
