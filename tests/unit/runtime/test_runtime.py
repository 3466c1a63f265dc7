from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dspy
import pytest
from pydantic import SecretStr

from geode.errors import InputError, LMError
from geode.runtime.runtime import Runtime
from geode.runtime.settings import LMSettings, Settings, TracingSettings
from geode.testing import ScriptedLM, isolated_response_cache, response_cache_dir
from geode.traces.context import RunIdentity, current_run


def _settings() -> Settings:
    return Settings(tracing=TracingSettings(enabled=False))


class Spy(dspy.Module):
    """Records what the runtime put in context while it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[RunIdentity | None, object]] = []
        self.predict = dspy.Predict("question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        self.seen.append((current_run(), dspy.settings.lm))
        return self.predict(question=question)


def test_run_uses_the_runtime_lm_and_sets_identity() -> None:
    lm = ScriptedLM([{"answer": "Paris"}])
    rt = Runtime(_settings(), lm=lm)
    spy = Spy()
    pred = rt.run(spy, session_id="s1", user_id="u1", metadata={"a": 1}, tags=["t"], question="Capital?")
    assert pred.answer == "Paris"
    identity, seen_lm = spy.seen[0]
    assert seen_lm is lm
    assert identity == RunIdentity(
        program="Spy", version=None, session_id="s1", user_id="u1", metadata={"a": 1}, tags=("t",)
    )
    # nothing leaks out of the call
    assert current_run() is None
    assert dspy.settings.lm is not lm


def test_arun_awaits_acall() -> None:
    rt = Runtime(_settings(), lm=ScriptedLM([{"answer": "4"}]))
    pred = asyncio.run(rt.arun(dspy.Predict("question -> answer"), question="2+2?"))
    assert pred.answer == "4"


def test_concurrent_calls_with_different_lms_do_not_cross() -> None:
    program = dspy.Predict("question -> answer")

    def call(i: int) -> str:
        rt = Runtime(_settings(), lm=ScriptedLM(lambda _messages, i=i: {"answer": f"lm-{i}"}))
        return rt.run(program, question=f"q{i}").answer

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(call, range(32)))
    assert answers == [f"lm-{i}" for i in range(32)]


def test_reference_is_resolved_once() -> None:
    rt = Runtime(_settings(), lm=ScriptedLM([{"answer": "a"}, {"answer": "b"}]))
    assert rt.resolve("geode.examples.qa:program") is rt.resolve("geode.examples.qa:program")


def test_no_inputs_is_an_input_error() -> None:
    rt = Runtime(_settings(), lm=ScriptedLM([]))
    with pytest.raises(InputError, match="no inputs"):
        rt.run(dspy.Predict("question -> answer"))


def test_lm_failures_become_lm_errors() -> None:
    rt = Runtime(_settings(), lm=ScriptedLM([]))  # the script is empty: the LM raises on first call
    with pytest.raises(LMError, match="failed while running"):
        rt.run(dspy.Predict("question -> answer"), question="?")


def test_example_program_answers_from_its_facts() -> None:
    lm = ScriptedLM([{"answer": "Paris"}])
    rt = Runtime(_settings(), lm=lm)
    pred = rt.run("geode.examples.qa:program", question="What is the capital of France?")
    assert pred.answer == "Paris"
    prompt = "\n".join(m["content"] for m in lm.calls[0].messages)
    assert "Paris is the capital of France." in prompt


def test_dspy_response_cache_lives_under_the_geode_home(tmp_path: Path) -> None:
    # DSPy's default cache is ~/.dspy_cache, shared by every home on the machine: an answer cached
    # for one project's runs would answer another's. LMs the runtime builds cache under its home.
    settings = Settings(
        home=tmp_path / "home",
        lm=LMSettings(model="openai/gpt-4o-mini", api_key=SecretStr("sk-test")),
        tracing=TracingSettings(enabled=False),
    )
    with isolated_response_cache(tmp_path / "before"):
        with Runtime(settings) as rt:
            assert rt.lm.cache is True
        assert response_cache_dir() == (tmp_path / "home" / "dspy-cache").resolve()
    # No cache wanted, nothing touched.
    other = settings.model_copy(
        update={"home": tmp_path / "other", "lm": settings.lm.model_copy(update={"cache": False})}
    )
    with Runtime(other) as rt:
        assert rt.lm.cache is False
    assert not (tmp_path / "other" / "dspy-cache").exists()
