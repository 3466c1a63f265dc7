from __future__ import annotations

import re

import dspy
import pytest

from geode.errors import ConfigError, DatasetError
from geode.evals.compile import compile_program, demo_count
from geode.evals.dataset import Dataset
from geode.evals.metrics import exact_match
from geode.testing import ScriptedLM


def _plus_one(n: int, feedback_on: int | None = None) -> Dataset:
    return Dataset.from_records(
        [
            {
                "inputs": {"question": f"What is {i} plus one?"},
                "outputs": {"answer": str(i + 1)},
                **({"feedback": "answer with digits only"} if i == feedback_on else {}),
            }
            for i in range(n)
        ],
        name="plus-one",
    )


def _needs_demos(messages: list[dict[str, str]]) -> dict[str, str]:
    """Answers odd numbers right only when the prompt carries demos (or the instruction says how)."""
    n = int(re.findall(r"What is (\d+) plus one", messages[-1]["content"])[-1])
    has_demo = len(messages) > 2 or "Add one" in messages[0]["content"]
    return {"answer": str(n + 1) if has_demo or n % 2 == 0 else "?"}


def test_bootstrap_produces_demos_and_scores_both_programs_on_the_same_heldout_split() -> None:
    program = dspy.Predict("question -> answer")
    dataset = _plus_one(17)
    versions = {"calls": 0}

    def version_of(module: dspy.Module) -> str:
        versions["calls"] += 1
        return f"v{demo_count(module)}"

    with dspy.context(lm=ScriptedLM(_needs_demos)):
        result = compile_program(program, dataset, exact_match, optimizer="bootstrap", version_of=version_of)
    assert demo_count(program) == 0  # the baseline is left alone
    assert result.candidate_demos > 0
    demos = result.candidate_program.dump_state()["demos"]
    assert all({"question", "answer"} <= set(d) for d in demos)
    assert len(result.heldout_ids) == 5 and len(result.train_ids) == 12
    assert not set(result.heldout_ids) & set(result.train_ids)
    # Both programs were scored on the same held-out examples.
    assert [e.example_id for e in result.baseline.examples] == list(result.heldout_ids)
    assert [e.example_id for e in result.candidate.examples] == list(result.heldout_ids)
    assert result.baseline.score < 1.0
    assert result.candidate.score == 1.0
    assert result.delta == pytest.approx(result.candidate.score - result.baseline.score)
    assert result.passes_gate(0.05) is (result.delta >= 0.05)
    assert result.baseline.version == "v0" and result.candidate.version == f"v{result.candidate_demos}"
    assert result.compile_lm_calls > 0 and result.compile_prompt_tokens > 0
    data = result.to_dict()
    assert data["optimizer"]["name"] == "bootstrap" and data["dataset_id"] == dataset.id
    assert data["heldout_size"] == 5 and "examples" not in data["baseline"]


def test_the_gate_catches_a_candidate_that_is_worse() -> None:
    def demos_hurt(messages: list[dict[str, str]]) -> dict[str, str]:
        n = int(re.findall(r"What is (\d+) plus one", messages[-1]["content"])[-1])
        return {"answer": "?" if len(messages) > 2 else str(n + 1)}

    with dspy.context(lm=ScriptedLM(demos_hurt)):
        result = compile_program(
            dspy.Predict("question -> answer"), _plus_one(17), exact_match, max_bootstrapped_demos=0
        )
    assert result.candidate_demos > 0  # labelled demos were added...
    assert result.candidate.score < result.baseline.score  # ...and hurt
    assert not result.passes_gate(0.05)


def test_too_small_or_empty_datasets_are_refused_before_any_lm_call() -> None:
    lm = ScriptedLM([])
    with dspy.context(lm=lm):
        with pytest.raises(DatasetError, match="no examples"):
            compile_program(dspy.Predict("question -> answer"), Dataset(()), exact_match)
        with pytest.raises(DatasetError, match=r"held-out example\(s\) \(need 5\)"):
            compile_program(dspy.Predict("question -> answer"), _plus_one(8), exact_match)
    assert lm.calls == []


def test_unknown_optimizer_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown optimizer 'simba'"):
        compile_program(dspy.Predict("question -> answer"), _plus_one(17), exact_match, optimizer="simba")  # type: ignore[arg-type]


@pytest.mark.slow
def test_gepa_reflects_with_annotation_feedback() -> None:
    reflections: list[str] = []

    def reflect(messages: list[dict[str, str]]) -> dict[str, str]:
        reflections.append(messages[-1]["content"])
        return {"new_instruction": "Add one to the number in the question."}

    reflection_lm = ScriptedLM(reflect, adapter=dspy.JSONAdapter())
    with dspy.context(lm=ScriptedLM(_needs_demos)):
        result = compile_program(
            dspy.Predict("question -> answer"),
            _plus_one(12, feedback_on=3),
            exact_match,
            optimizer="gepa",
            min_heldout=3,
            reflection_lm=reflection_lm,
        )
    assert result.candidate_program.dump_state()["signature"]["instructions"].startswith("Add one")
    assert result.candidate.score == 1.0 > result.baseline.score
    assert any("answer with digits only" in r for r in reflections)


@pytest.mark.slow
def test_mipro_runs_with_its_auto_budget() -> None:
    def lm_fn(messages: list[dict[str, str]]) -> dict[str, str]:
        system = messages[0]["content"]
        wanted = re.findall(
            r"\d+\. `(\w+)`", system.split("Your output fields are:")[1].split("All interactions")[0]
        )
        if wanted == ["answer"]:
            return _needs_demos(messages)
        return {f: ("Add one to the number." if "instruction" in f else "x") for f in wanted}

    with dspy.context(lm=ScriptedLM(lm_fn)):
        result = compile_program(
            dspy.Predict("question -> answer"), _plus_one(16), exact_match, optimizer="mipro"
        )
    assert result.optimizer.auto == "light" and result.optimizer.val_size > 0
    assert result.candidate.score >= result.baseline.score
