"""geode.Agent driven by the real embedded model (SmolLM2-135M on llama.cpp).

Marked ``localmodel`` and ``slow``: an agent run makes several LM calls with ~1,000-token prompts, which
takes a minute or more on a busy 2-core machine. Run with ``pytest -m localmodel tests/integration``.

What is asserted is what Geode guarantees, not what a 135M model knows: every step the model produces is
well-formed (constrained decoding against the step schema), the run ends cleanly with a recorded reason,
and a time budget cuts a real LM call off. Task success is measured by ``benchmarks/bench_agent.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import dspy
import pytest
from dspy.utils.callback import BaseCallback
from tests.tiers import require_tier

import geode
from geode.agents.steps import Budget, TerminationReason
from geode.examples.inventory import TASKS, build_agent
from geode.runtime.settings import TracingSettings

pytestmark = [pytest.mark.localmodel, pytest.mark.slow]

require_tier("localmodel", import_name="llama_cpp")


class ResponseFormats(BaseCallback):
    def __init__(self) -> None:
        self.formats: list[Any] = []

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.formats.append(inputs.get("kwargs", {}).get("response_format"))


@pytest.fixture(scope="module")
def lm() -> Iterator[geode.LocalLM]:
    yield geode.LocalLM(cache=False, max_tokens=128)


@pytest.fixture
def runtime(lm: geode.LocalLM) -> geode.Runtime:
    return geode.Runtime(lm=lm, settings=geode.Settings(tracing=TracingSettings(enabled=False)))


def test_every_step_of_the_local_model_is_well_formed(runtime: geode.Runtime) -> None:
    agent = build_agent(Budget(max_iters=3))
    formats = ResponseFormats()
    with dspy.context(callbacks=[formats]):
        pred = runtime.run(agent, question=TASKS[0].question)

    steps = pred.steps
    assert 1 <= len(steps) <= 3
    assert all(step.well_formed for step in steps), [step.to_dict() for step in steps]
    assert all(step.tool in ("lookup_stock", "calculate", "finish") for step in steps)
    assert pred.termination.reason in {
        TerminationReason.FINISH,
        TerminationReason.MAX_ITERS,
        TerminationReason.REPEATED_CALL,
    }
    assert pred.termination.extracted and pred.answer is not None
    # The LM received the step schema (not plain JSON mode): that is what made every step parse. For a
    # local model it is one alternative per tool, each with that tool's own arguments.
    assert isinstance(runtime.adapter, geode.SmallModelAdapter)
    schema = formats.formats[0].model_json_schema()
    alternatives = schema["anyOf"]
    assert [a["properties"]["next_tool_name"]["enum"] for a in alternatives] == [
        ["lookup_stock"],
        ["calculate"],
        ["finish"],
    ]
    assert all(a["required"] == ["next_thought", "next_tool_name", "next_tool_args"] for a in alternatives)


def test_a_time_budget_cuts_off_a_real_lm_call(runtime: geode.Runtime) -> None:
    agent = build_agent(Budget(max_iters=5, max_seconds=1.0))
    started = time.perf_counter()
    pred = runtime.run(agent, question=TASKS[6].question)
    elapsed = time.perf_counter() - started
    assert pred.termination.reason is TerminationReason.BUDGET
    assert pred.answer is None and not pred.termination.extracted
    assert elapsed < 5, "the run must stop waiting at the deadline, not when the LM call ends"
