"""Tracing never breaks the program: raising callbacks, odd values, repeated (un)instrumentation."""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dspy
import pytest
from dspy.utils.callback import BaseCallback
from opentelemetry.sdk.trace import SpanProcessor
from tests.unit.runtime.instrumentation.conftest import Traced

from geode.runtime.instrumentation import (
    GeodeCallback,
    active_callback,
    instrument,
    is_instrumented,
    uninstrument,
    with_callback,
)
from geode.testing import in_memory_tracing


def _geode_callbacks() -> list[Any]:
    return [cb for cb in dspy.settings.get("callbacks") or [] if isinstance(cb, GeodeCallback)]


class Exploding(BaseCallback):
    """Raises from every handler DSPy calls."""

    def __init__(self) -> None:
        self.raised: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_"):
            raised = super().__getattribute__("raised")

            def explode(*args: Any, **kwargs: Any) -> None:
                raised.append(name)
                raise RuntimeError(f"{name} exploded")

            return explode
        return super().__getattribute__(name)


def test_a_raising_callback_breaks_neither_the_program_nor_geode_spans(traced: Traced) -> None:
    exploding = Exploding()
    with dspy.context(
        lm=traced.lm([{"reasoning": "r", "answer": "4"}]), callbacks=with_callback([exploding])
    ):
        assert dspy.ChainOfThought("question -> answer")(question="2+2?").answer == "4"
    assert "on_lm_start" in exploding.raised and "on_module_end" in exploding.raised
    assert traced.shape() == [("ChainOfThought", "CHAIN", [("predict", "CHAIN", [("scripted", "LLM")])])]


class Unprintable:
    def __repr__(self) -> str:
        raise ValueError("no repr for you")


class Hostile(dspy.Module):
    """A module whose tracing hooks and values all misbehave."""

    def __init__(self) -> None:
        super().__init__()
        self.predict = dspy.Predict("question -> answer")

    def geode_span_name(self, inputs: dict[str, Any]) -> str:
        raise KeyError("no name")

    def geode_span_attributes(self, inputs: dict[str, Any], outputs: Any) -> dict[str, Any]:
        raise KeyError("no attributes")

    def forward(self, question: str, extra: Any = None) -> dspy.Prediction:
        return self.predict(question=question)


def test_misbehaving_hooks_and_values_still_give_a_span(traced: Traced) -> None:
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with dspy.context(lm=traced.lm([{"answer": "ok"}])):
        pred = Hostile()(
            question="q", extra={"odd": Unprintable(), "cyclic": cyclic, "bytes": b"\x00\x01", "set": {3}}
        )
    assert pred.answer == "ok"
    span = traced.one("Hostile")
    value = (span.attributes or {})["input.value"]
    assert isinstance(value, str) and json.loads(value) is not None


def test_instrument_is_idempotent_and_uninstrument_restores() -> None:
    provider, exporter = in_memory_tracing()
    try:
        instrument(tracer_provider=provider)
        first = active_callback()
        instrument(tracer_provider=provider)
        assert active_callback() is first
        assert len(_geode_callbacks()) == 1
        assert is_instrumented()

        other_provider, other_exporter = in_memory_tracing()
        instrument(tracer_provider=other_provider)
        assert active_callback() is first
        assert len(_geode_callbacks()) == 1
        with dspy.context(lm=Traced.lm([{"answer": "x"}])):
            dspy.Predict("question -> answer")(question="q")
        assert not exporter.get_finished_spans()
        assert len(other_exporter.get_finished_spans()) == 2
    finally:
        uninstrument()
    assert not is_instrumented()
    assert not _geode_callbacks()
    uninstrument()  # twice is fine


def test_user_callbacks_are_kept_and_dspy_configure_stays_with_the_application() -> None:
    mine = BaseCallback()
    config = __import__("dspy.dsp.utils.settings", fromlist=["main_thread_config"])
    previous = list(config.main_thread_config.get("callbacks") or [])
    config.main_thread_config["callbacks"] = [mine]
    owner_before = config.config_owner_thread_id
    provider, _ = in_memory_tracing()
    try:
        done = threading.Event()

        def from_another_thread() -> None:
            instrument(tracer_provider=provider)
            done.set()

        threading.Thread(target=from_another_thread).start()
        assert done.wait(5)
        assert config.config_owner_thread_id == owner_before, "instrument() must not claim dspy.configure"
        assert dspy.settings.callbacks[0] is mine
        assert len(_geode_callbacks()) == 1
    finally:
        uninstrument()
        assert dspy.settings.callbacks == [mine]
        config.main_thread_config["callbacks"] = previous


def test_with_callback_survives_a_dspy_context_that_replaces_callbacks(traced: Traced) -> None:
    other = BaseCallback()
    assert with_callback([other]) == [other, active_callback()]
    assert with_callback(with_callback([other])) == [other, active_callback()]
    with dspy.context(lm=traced.lm([{"answer": "x"}]), callbacks=with_callback([other])):
        dspy.Predict("question -> answer")(question="q")
    assert len(traced.spans) == 2


def test_thread_pools_are_restored_after_uninstrument() -> None:
    original = ThreadPoolExecutor.submit
    provider, _ = in_memory_tracing()
    instrument(tracer_provider=provider)
    assert ThreadPoolExecutor.submit is not original
    uninstrument()
    assert ThreadPoolExecutor.submit is original


def test_thread_pool_tasks_behave_the_same_when_instrumented(traced: Traced) -> None:
    def boom() -> None:
        raise ValueError("from the worker")

    with ThreadPoolExecutor(max_workers=2) as pool:
        assert pool.submit(lambda a, b=0: a + b, 1, b=2).result() == 3
        with pytest.raises(ValueError, match="from the worker"):
            pool.submit(boom).result()
        tracer = traced.provider.get_tracer("t")
        with tracer.start_as_current_span("outer"):
            assert pool.submit(lambda: 5).result() == 5


class FailingProcessor(SpanProcessor):
    """Makes every span start fail inside Geode's callback."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        raise RuntimeError("processor is broken")


def test_geode_internal_failures_are_logged_once_and_never_reach_the_program(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, _ = in_memory_tracing()
    provider.add_span_processor(FailingProcessor())
    instrument(tracer_provider=provider)
    try:
        with (
            caplog.at_level(logging.DEBUG, logger="geode.instrumentation"),
            dspy.context(lm=Traced.lm([{"answer": "a"}, {"answer": "b"}])),
        ):
            assert dspy.Predict("question -> answer")(question="q1").answer == "a"
            assert dspy.Predict("question -> answer")(question="q2").answer == "b"
    finally:
        uninstrument()
    warnings = [
        r for r in caplog.records if r.name == "geode.instrumentation" and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1
    assert "the program is unaffected" in warnings[0].getMessage()
