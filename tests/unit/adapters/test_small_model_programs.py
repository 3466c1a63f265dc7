"""SmallModelAdapter under real programs: optimizers, geode.Agent, crystallized workflows, the runtime."""

from __future__ import annotations

import re
import threading
from typing import Any

import dspy
import pytest
from dspy.teleprompt import BootstrapFewShot, KNNFewShot, LabeledFewShot
from dspy.utils.callback import BaseCallback

import geode
from geode.adapters import SmallModelAdapter
from geode.agents import Agent
from geode.evals.compile import compile_program, demo_count
from geode.evals.dataset import Dataset
from geode.evals.metrics import exact_match
from geode.runtime.runtime import Runtime
from geode.runtime.settings import LMSettings, Settings, TracingSettings
from geode.testing import ScriptedLM

ADAPTER = SmallModelAdapter()
NO_TRACING = TracingSettings(enabled=False)


class LMCalls(BaseCallback):
    """The keyword arguments of every LM call as DSPy passes them."""

    def __init__(self) -> None:
        self.kwargs: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with self._lock:
            self.kwargs.append(dict(inputs.get("kwargs") or {}))


def _plus_one(n: int) -> list[dspy.Example]:
    return [
        dspy.Example(question=f"What is {i} plus one?", answer=str(i + 1)).with_inputs("question")
        for i in range(n)
    ]


def _needs_demos(messages: list[dict[str, str]]) -> dict[str, str]:
    """Right on odd numbers only with demos before the question (or an instruction saying how)."""
    n = int(re.findall(r"What is (\d+) plus one", messages[-1]["content"])[-1])
    has_demo = len(messages) > 2 or "Add one" in messages[0]["content"]
    return {"answer": str(n + 1) if has_demo or n % 2 == 0 else "?"}


def _demo_turns(messages: list[dict[str, str]]) -> list[tuple[str, str]]:
    turns = messages[1:-1]
    return [(u["content"], a["content"]) for u, a in zip(turns[::2], turns[1::2], strict=True)]


# -- optimizers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("local", [False, True], ids=["hosted", "local"])
def test_labeled_few_shot_demos_become_turns(local: bool) -> None:
    program = LabeledFewShot(k=2).compile(
        dspy.Predict("question -> answer"), trainset=_plus_one(2), sample=False
    )
    lm = ScriptedLM(_needs_demos, adapter=ADAPTER, local=local)
    with dspy.context(lm=lm, adapter=ADAPTER):
        assert program(question="What is 7 plus one?").answer == "8"
    assert _demo_turns(lm.calls[0].messages) == [
        ("Question: What is 0 plus one?", "1"),
        ("Question: What is 1 plus one?", "2"),
    ]


@pytest.mark.parametrize("local", [False, True], ids=["hosted", "local"])
def test_bootstrap_few_shot_through_the_adapter(local: bool) -> None:
    lm = ScriptedLM(_needs_demos, adapter=ADAPTER, local=local)
    with dspy.context(lm=lm, adapter=ADAPTER):
        compiled = BootstrapFewShot(
            metric=exact_match, max_bootstrapped_demos=2, max_labeled_demos=0
        ).compile(dspy.Predict("question -> answer"), trainset=_plus_one(4))
        assert compiled(question="What is 9 plus one?").answer == "10"
    assert demo_count(compiled) == 2
    assert _demo_turns(lm.calls[-1].messages) == [
        ("Question: What is 0 plus one?", "1"),
        ("Question: What is 2 plus one?", "3"),
    ]


@pytest.mark.parametrize("local", [False, True], ids=["hosted", "local"])
def test_compile_program_bootstrap_lifts_the_score_through_the_adapter(local: bool) -> None:
    records = [
        {"inputs": {"question": f"What is {i} plus one?"}, "outputs": {"answer": str(i + 1)}}
        for i in range(17)
    ]
    lm = ScriptedLM(_needs_demos, adapter=ADAPTER, local=local)
    with dspy.context(lm=lm, adapter=ADAPTER):
        result = compile_program(
            dspy.Predict("question -> answer"), Dataset.from_records(records, name="plus-one"), exact_match
        )
    assert result.candidate.score == 1.0 > result.baseline.score
    assert all("[[ ##" not in m["content"] for call in lm.calls for m in call.messages)


@pytest.mark.parametrize("local", [False, True], ids=["hosted", "local"])
def test_knn_few_shot_picks_the_nearest_demos_as_turns(local: bool) -> None:
    def embed(texts: list[str]) -> Any:
        import numpy as np

        # One dimension per keyword: the nearest training example shares the question's animal.
        return np.array([[t.count("cat"), t.count("dog"), t.count("owl")] for t in texts], dtype=float)

    trainset = [
        dspy.Example(question=f"What does a {animal} say?", answer=sound).with_inputs("question")
        for animal, sound in (("cat", "meow"), ("dog", "woof"), ("owl", "hoot"))
    ]
    program = KNNFewShot(k=1, trainset=trainset, vectorizer=dspy.Embedder(embed)).compile(
        dspy.Predict("question -> answer")
    )
    sounds = {"cat": "meow", "dog": "woof", "owl": "hoot"}

    def lm_fn(messages: list[dict[str, str]]) -> dict[str, str]:
        return {"answer": next(v for k, v in sounds.items() if k in messages[-1]["content"])}

    lm = ScriptedLM(lm_fn, adapter=ADAPTER, local=local)
    with dspy.context(lm=lm, adapter=ADAPTER):
        assert program(question="Which sound does a dog make?").answer == "woof"
    # KNNFewShot bootstraps on the nearest example, then answers with it as a demo turn.
    assert _demo_turns(lm.calls[-1].messages) == [("Question: What does a dog say?", "woof")]


@pytest.mark.parametrize("local", [False, True], ids=["hosted", "local"])
def test_gepa_rewrites_the_system_message(local: bool) -> None:
    # GEPA's reflection runs with its own adapter (JSON), on the reflection LM.
    reflection_lm = ScriptedLM(
        lambda messages: {"new_instruction": "Add one to the number in the question."},
        adapter=dspy.JSONAdapter(),
    )

    records = [
        {"inputs": {"question": f"What is {i} plus one?"}, "outputs": {"answer": str(i + 1)}}
        for i in range(12)
    ]
    lm = ScriptedLM(_needs_demos, adapter=ADAPTER, local=local)
    with dspy.context(lm=lm, adapter=ADAPTER):
        result = compile_program(
            dspy.Predict("question -> answer"),
            Dataset.from_records(records, name="plus-one"),
            exact_match,
            optimizer="gepa",
            min_heldout=3,
            reflection_lm=reflection_lm,
        )
    assert result.candidate_program.dump_state()["signature"]["instructions"].startswith("Add one")
    assert result.candidate.score == 1.0 > result.baseline.score
    task_calls = [c for c in lm.calls if c.messages[0]["content"].startswith("Add one")]
    assert task_calls and task_calls[-1].messages[0] == {
        "role": "system",
        "content": "Add one to the number in the question.",
    }


@pytest.mark.parametrize("local", [False, True], ids=["hosted", "local"])
def test_mipro_runs_through_the_adapter(local: bool) -> None:
    def lm_fn(messages: list[dict[str, str]]) -> dict[str, Any]:
        system = messages[0]["content"]
        if re.fullmatch(r"Question: What is \d+ plus one\?", messages[-1]["content"]):
            return _needs_demos(messages)
        keys = re.findall(r'"(\w+)" \(', system.split("Reply with a JSON object with the keys", 1)[-1])
        if "Reply with a JSON object" not in system:
            keys = ["text"]
        return {k: ("Add one to the number." if "instruction" in k or k == "text" else "x") for k in keys}

    records = [
        {"inputs": {"question": f"What is {i} plus one?"}, "outputs": {"answer": str(i + 1)}}
        for i in range(16)
    ]
    lm = ScriptedLM(lm_fn, adapter=ADAPTER, local=local)
    with dspy.context(lm=lm, adapter=ADAPTER):
        result = compile_program(
            dspy.Predict("question -> answer"),
            Dataset.from_records(records, name="plus-one"),
            exact_match,
            optimizer="mipro",
        )
        assert result.candidate.score >= result.baseline.score
        # Whatever instruction MIPROv2 chose, the program is prompted with it as the system message.
        instructions = result.candidate_program.dump_state()["signature"]["instructions"]
        result.candidate_program(question="What is 41 plus one?")
    assert lm.calls[-1].messages[0] == {"role": "system", "content": instructions.strip()}
    assert lm.calls[-1].messages[-1] == {"role": "user", "content": "Question: What is 41 plus one?"}


# -- geode.Agent -----------------------------------------------------------------------------------


STOCK = {"widget": 3}


def lookup_stock(item: str) -> int:
    """Units of an item in stock."""
    return STOCK[item]


def step(tool: str, **args: Any) -> dict[str, Any]:
    return {"next_thought": f"use {tool}", "next_tool_name": tool, "next_tool_args": args}


@pytest.mark.parametrize("local", [False, True], ids=["hosted", "local"])
def test_agent_steps_and_extraction_go_through_the_adapter(local: bool) -> None:
    agent = Agent("question -> answer", tools=[lookup_stock])
    # The extraction is a ChainOfThought: on a small local model its rationale is left out.
    extraction = {"answer": "3"} if local else {"reasoning": "The tool said 3.", "answer": "3"}
    script = [step("lookup_stock", item="widget"), step("finish"), extraction]
    lm = ScriptedLM(script, adapter=ADAPTER, local=local)
    calls = LMCalls()
    with dspy.context(lm=lm, adapter=ADAPTER, callbacks=[calls]):
        pred = agent(question="How many widgets?")
    assert pred.answer == "3" and pred.termination.reason.value == "finish"
    assert pred.steps[0].observation == "3"
    second = lm.calls[1].messages
    assert "[[ ##" not in "".join(m["content"] for m in second)
    # The trajectory is labelled blocks too.
    assert (
        "Tool Name 0: lookup_stock" in second[-1]["content"] and "Observation 0: 3" in second[-1]["content"]
    )
    assert '"next_tool_name" (text)' in second[0]["content"]
    if not local:
        assert all("response_format" not in k for k in calls.kwargs)
        return
    step_schema = calls.kwargs[0]["response_format"].model_json_schema()
    # Each tool is paired with its own arguments and the thought is capped (the agent's tightening).
    alternatives = step_schema["anyOf"]
    assert [a["properties"]["next_tool_name"]["enum"] for a in alternatives] == [["lookup_stock"], ["finish"]]
    assert alternatives[0]["properties"]["next_thought"]["maxLength"] == agent.max_thought_chars
    # The extraction's single text answer is a plain-text reply (no schema), its rationale left out.
    assert "response_format" not in calls.kwargs[-1]
    assert lm.calls[-1].messages[0]["content"] == agent.signature.instructions.strip()


def test_the_agent_keeps_the_adapters_reasoning_choice() -> None:
    agent = Agent("question -> answer", tools=[lookup_stock])
    keep = SmallModelAdapter(reasoning="keep")
    script = [step("finish"), {"reasoning": "Nothing to look up.", "answer": "3"}]
    lm = ScriptedLM(script, adapter=keep, local=True)
    calls = LMCalls()
    with dspy.context(lm=lm, adapter=keep, callbacks=[calls]):
        pred = agent(question="How many widgets?")
    assert pred.answer == "3"
    extract_schema = calls.kwargs[-1]["response_format"].model_json_schema()
    assert extract_schema["properties"]["reasoning"]["maxLength"] == agent.max_thought_chars


def test_an_unparseable_step_becomes_a_corrective_observation() -> None:
    agent = Agent("question -> answer", tools=[lookup_stock], max_parse_failures=1)
    lm = ScriptedLM(
        [{"next_thought": "hmm", "next_tool_args": {}}, {"reasoning": "none", "answer": "unknown"}],
        adapter=ADAPTER,
    )
    with dspy.context(lm=lm, adapter=ADAPTER):
        pred = agent(question="?")
    assert pred.steps[0].outcome.value == "unparsed"
    assert "lacks `next_tool_name`" in str(pred.steps[0].error)


# -- crystallized workflows ------------------------------------------------------------------------


@pytest.mark.parametrize("local", [False, True], ids=["hosted", "local"])
def test_a_crystallized_workflow_runs_its_lm_steps_through_the_adapter(local: bool) -> None:
    from tests.unit.agents.crystallize.scenario import TRUSTED, oracle, record_runs

    from geode.agents.crystallize import crystallize, workflow_route

    recorded = record_runs()
    workflow = crystallize(
        recorded.agent, recorded.source, agent_ref="geode.examples.inventory:agent", options=TRUSTED
    ).workflow()
    lm = ScriptedLM(oracle, adapter=ADAPTER, local=local)
    with dspy.context(lm=lm, adapter=ADAPTER):
        pred = workflow(question="What is 6 times 7?")
    assert pred.answer == "42" and workflow_route(pred) == "calculate"
    assert geode.fallback_choice(pred).choice == "primary"  # type: ignore[union-attr]
    assert len(lm.calls) == 2  # the router, then the answer step
    assert all("[[ ##" not in m["content"] for call in lm.calls for m in call.messages)


# -- the runtime's choice --------------------------------------------------------------------------


def test_the_runtime_uses_the_adapter_for_local_lms_and_dspys_default_otherwise() -> None:
    local = Runtime(
        Settings(tracing=NO_TRACING), lm=ScriptedLM([{"answer": "Paris"}], adapter=ADAPTER, local=True)
    )
    assert isinstance(local.adapter, SmallModelAdapter)
    assert local.run(dspy.Predict("question -> answer"), question="Capital?").answer == "Paris"
    assert Runtime(Settings(tracing=NO_TRACING), lm=ScriptedLM([])).adapter is None


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("small", SmallModelAdapter), ("json", dspy.JSONAdapter), ("chat", dspy.ChatAdapter)],
)
def test_the_adapter_setting_chooses_for_any_lm(choice: str, expected: type) -> None:
    settings = Settings(lm=LMSettings(adapter=choice), tracing=NO_TRACING)  # type: ignore[arg-type]
    adapter = Runtime(settings, lm=ScriptedLM([])).adapter
    assert type(adapter) is expected


def test_an_explicit_adapter_wins_over_the_setting() -> None:
    json_adapter = dspy.JSONAdapter()
    rt = Runtime(Settings(tracing=NO_TRACING), lm=ScriptedLM([], local=True), adapter=json_adapter)
    assert rt.adapter is json_adapter
