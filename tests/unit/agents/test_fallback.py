from __future__ import annotations

import asyncio
from typing import Any

import dspy
import pytest

from geode.agents import Agent, Budget, Fallback, FallbackChoice, fallback_choice
from geode.errors import ConfigError, LMError
from geode.testing import ScriptedLM
from geode.traces.vocab import GeodeAttributes


class Failing(dspy.Module):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.calls = 0

    def forward(self, question: str) -> dspy.Prediction:
        self.calls += 1
        raise self.error

    async def aforward(self, question: str) -> dspy.Prediction:
        self.calls += 1
        raise self.error


class Fixed(dspy.Module):
    def __init__(self, answer: str) -> None:
        super().__init__()
        self.answer = answer
        self.calls = 0

    def forward(self, question: str) -> dspy.Prediction:
        self.calls += 1
        return dspy.Prediction(answer=self.answer)

    async def aforward(self, question: str) -> dspy.Prediction:
        return self.forward(question=question)


def test_primary_answers_when_it_succeeds_and_validates() -> None:
    fallback = Fixed("fallback")
    program = Fallback(Fixed("primary"), fallback, validate=lambda p: p.answer != "")
    pred = program(question="?")
    assert pred.answer == "primary" and fallback.calls == 0
    assert fallback_choice(pred) == FallbackChoice("primary")
    assert set(pred.keys()) == {"answer"}  # the choice is not added to the outputs
    assert program.geode_span_attributes({}, pred) == {GeodeAttributes.FALLBACK_CHOICE: "primary"}


def test_fallback_answers_when_the_primary_raises_with_a_scrubbed_reason() -> None:
    program = Fallback(Failing(LMError("upstream refused: api_key=sk-abcdefghijklmnopqrstu")), Fixed("safe"))
    pred = program(question="?")
    assert pred.answer == "safe"
    choice = fallback_choice(pred)
    assert choice is not None and choice.choice == "fallback"
    assert choice.reason == "primary raised LMError: upstream refused: api_key=[REDACTED]"
    assert program.geode_span_attributes({}, pred) == {
        GeodeAttributes.FALLBACK_CHOICE: "fallback",
        GeodeAttributes.FALLBACK_REASON: choice.reason,
    }


def test_fallback_answers_when_validation_fails_or_raises() -> None:
    pred = Fallback(Fixed(""), Fixed("safe"), validate=lambda p: bool(p.answer))(question="?")
    assert pred.answer == "safe"
    assert fallback_choice(pred) == FallbackChoice("fallback", "primary's prediction failed validation")

    def broken(pred: dspy.Prediction) -> bool:
        raise KeyError("confidence")

    pred = Fallback(Fixed("x"), Fixed("safe"), validate=broken)(question="?")
    assert fallback_choice(pred) == FallbackChoice("fallback", "validation raised KeyError: 'confidence'")


def test_only_the_listed_exceptions_trigger_the_fallback() -> None:
    program = Fallback(Failing(ValueError("bug")), Fixed("safe"), catch=(LMError,))
    with pytest.raises(ValueError, match="bug"):
        program(question="?")


def test_errors_of_the_fallback_propagate() -> None:
    with pytest.raises(RuntimeError, match="both down"):
        Fallback(Failing(LMError("down")), Failing(RuntimeError("both down")))(question="?")


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="catch"):
        Fallback(Fixed("a"), Fixed("b"), catch=())
    with pytest.raises(ConfigError, match="callable"):
        Fallback(Fixed("a"), "b")  # type: ignore[arg-type]


def test_async() -> None:
    program = Fallback(Failing(LMError("down")), Fixed("safe"))
    pred = asyncio.run(program.acall(question="?"))
    assert pred.answer == "safe"
    assert fallback_choice(pred) == FallbackChoice("fallback", "primary raised LMError: down")
    pred = asyncio.run(Fallback(Fixed("primary"), Fixed("safe")).acall(question="?"))
    assert fallback_choice(pred) == FallbackChoice("primary")


def test_an_agent_that_runs_out_of_budget_degrades_to_a_workflow() -> None:
    def lookup(item: str) -> int:
        """Units in stock."""
        return 3

    agent = Agent("question -> answer", tools=[lookup], budget=Budget(max_iters=1))
    workflow = dspy.Predict("question -> answer")
    program = Fallback(agent, workflow, validate=lambda p: p.termination.reason == "finish")
    script: list[dict[str, Any]] = [
        {"next_thought": "t", "next_tool_name": "lookup", "next_tool_args": {"item": "a"}},
        {"reasoning": "r", "answer": "maybe 3"},
        {"answer": "3"},
    ]
    with dspy.context(lm=ScriptedLM(script)):
        pred = program(question="Widgets?")
    assert pred.answer == "3"
    assert fallback_choice(pred) == FallbackChoice("fallback", "primary's prediction failed validation")
    assert program.named_predictors()[0][0] == "primary.react"
