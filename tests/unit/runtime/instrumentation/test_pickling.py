"""Instrumentation leaves every DSPy object exactly as picklable as it was without it.

Ray ships classes and functions to its workers with cloudpickle, which copies DSPy's wrapped methods
(``with_callbacks``) by value together with the module globals they use; Geode swaps two of those
globals for memoized stand-ins (``_dispatch``). These tests pickle a Teleprompter subclass, a program, a
compiled program and optimizer classes with Geode's instrumentation on, after calls have filled its memos
with classes that cannot be pickled, and compare with the same objects pickled without it.
"""

# Pickle is imported here only to prove picklability; Geode's artifacts are JSON.
from __future__ import annotations

import pickle  # noqa: TID251  (the test is about pickle itself; nothing is stored)
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import cloudpickle
import dspy
import pytest
from dspy.teleprompt import LabeledFewShot
from dspy.teleprompt.teleprompt import Teleprompter
from dspy.utils.callback import BaseCallback

from geode.runtime.instrumentation import active_callback, instrument, is_instrumented, uninstrument
from geode.testing import ScriptedLM, in_memory_tracing

Dumps = Callable[[Any], bytes]
PICKLERS: dict[str, tuple[Dumps, Callable[[bytes], Any]]] = {
    "cloudpickle": (cloudpickle.dumps, cloudpickle.loads),
    "pickle": (pickle.dumps, pickle.loads),
}


class QA(dspy.Module):
    """A program defined at module level, so plain pickle can reference its class."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        return self.answer(question=question)


class EchoOptimizer(Teleprompter):
    """A Teleprompter subclass importable by name (plain pickle pickles classes by reference)."""

    def compile(self, student: dspy.Module, *, trainset: list[dspy.Example], **_: Any) -> dspy.Module:
        return student


def _local_optimizer() -> type[Teleprompter]:
    # Defined in a function, as in DSPy's own test: cloudpickle must copy this class by value.
    class Optimizer(Teleprompter):
        def compile(self, student: dspy.Module, *, trainset: list[dspy.Example]) -> dspy.Module:  # pyright: ignore[reportIncompatibleMethodOverride]
            return student

    return Optimizer


def _unpicklable_module() -> type[dspy.Module]:
    # Made at run time (so cloudpickle must copy it by value) and holding a weak reference and a lock,
    # which no pickler copies: a memo that keeps this class makes every later pickle of DSPy code fail.
    class Unpicklable(dspy.Module):
        lock: ClassVar[threading.Lock] = threading.Lock()
        registry: ClassVar[weakref.WeakValueDictionary[str, Any]] = weakref.WeakValueDictionary()

        def forward(self, question: str) -> dspy.Prediction:
            return dspy.Prediction(answer=question)

    return Unpicklable


class _Recording(BaseCallback):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_compile_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.events.append("compile_start")

    def on_compile_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        self.events.append("compile_end")


@pytest.fixture
def instrumented() -> Iterator[None]:
    provider, _ = in_memory_tracing()
    instrument(tracer_provider=provider)
    try:
        _exercise()
        yield
    finally:
        uninstrument()


def _exercise() -> None:
    """Calls that fill the instrumentation's memos with classes and functions cloudpickle cannot copy."""
    _unpicklable_module()()(question="q")
    with dspy.context(lm=ScriptedLM([{"answer": "4"}])):
        QA()(question="2+2?")
    EchoOptimizer().compile(QA(), trainset=[])


def _outcome(obj: Any, pickler: str) -> tuple[str, Any]:
    dumps, loads = PICKLERS[pickler]
    try:
        data = dumps(obj)
    except Exception as exc:
        return "fails", type(exc)
    return "ok", loads(data)


def test_local_teleprompter_subclass_round_trips_through_cloudpickle(instrumented: None) -> None:
    # DSPy's tests/callback/test_optimizer_callback.py::test_compile_callback_wrapper_round_trips_...
    optimizer = cloudpickle.loads(cloudpickle.dumps(_local_optimizer()))()
    callback = _Recording()
    student = dspy.Module()
    with dspy.context(callbacks=[callback]):
        assert optimizer.compile(student, trainset=[]) is student
    assert callback.events == ["compile_start", "compile_end"]


def test_cloudpickle_of_a_class_is_the_same_bytes_as_without_instrumentation() -> None:
    optimizer = _local_optimizer()
    program = type("Program", (QA,), {})
    before = [cloudpickle.dumps(optimizer), cloudpickle.dumps(program)]
    provider, _ = in_memory_tracing()
    instrument(tracer_provider=provider)
    try:
        _exercise()
        after = [cloudpickle.dumps(optimizer), cloudpickle.dumps(program)]
    finally:
        uninstrument()
    # Nothing of Geode travels: the pickle loads in a process without Geode.
    assert after == before
    assert all(b"geode" not in data for data in after)


@pytest.mark.parametrize("pickler", PICKLERS)
def test_a_program_pickles_as_without_instrumentation(pickler: str) -> None:
    def run_and_pickle() -> tuple[tuple[str, Any], tuple[str, Any]]:
        program = QA()
        with dspy.context(lm=ScriptedLM([{"answer": "4"}])):
            program(question="2+2?")
        return _outcome(program, pickler), _outcome(QA, pickler)

    plain = run_and_pickle()
    provider, _ = in_memory_tracing()
    instrument(tracer_provider=provider)
    try:
        _exercise()
        traced = run_and_pickle()
    finally:
        uninstrument()
    for (status, value), (plain_status, plain_value) in zip(traced, plain, strict=True):
        assert status == plain_status
        if status == "fails":
            assert value is plain_value
    if pickler == "cloudpickle":
        program_status, copy = traced[0]
        assert program_status == "ok"
        with dspy.context(lm=ScriptedLM([{"answer": "5"}])):
            assert copy(question="2+3?").answer == "5"


@pytest.mark.parametrize("pickler", PICKLERS)
def test_a_compiled_program_round_trips(instrumented: None, pickler: str) -> None:
    trainset = [
        dspy.Example(question=f"{i}+{i}?", answer=str(2 * i)).with_inputs("question") for i in range(3)
    ]
    compiled = LabeledFewShot(k=2).compile(QA(), trainset=trainset)
    status, copy = _outcome(compiled, pickler)
    if pickler == "pickle":
        # A signature made from a string is a class created at run time: plain pickle cannot reference
        # it, with or without Geode. Compare with the uninstrumented outcome instead.
        uninstrument()
        assert (status, copy) == _outcome(compiled, pickler)
        return
    assert status == "ok"
    assert [demo.answer for demo in copy.answer.demos] == [demo.answer for demo in compiled.answer.demos]
    with dspy.context(lm=ScriptedLM([{"answer": "8"}])):
        assert copy(question="4+4?").answer == "8"


@pytest.mark.parametrize("pickler", PICKLERS)
@pytest.mark.parametrize("optimizer", [EchoOptimizer, LabeledFewShot, dspy.BootstrapFewShot])
def test_optimizer_classes_and_instances_round_trip(pickler: str, optimizer: type[Teleprompter]) -> None:
    dumps, loads = PICKLERS[pickler]
    plain_status, _ = _outcome(optimizer(), pickler)
    provider, _ = in_memory_tracing()
    instrument(tracer_provider=provider)
    try:
        _exercise()
        assert loads(dumps(optimizer)) is optimizer  # importable classes travel by reference
        status, copy = _outcome(optimizer(), pickler)
        # BootstrapFewShot holds a lock: DSPy's own instance never pickles; the others must.
        assert status == plain_status == ("fails" if optimizer is dspy.BootstrapFewShot else "ok")
        if status == "fails":
            return
        assert type(copy) is optimizer
        student = QA()
        callback = _Recording()
        with dspy.context(callbacks=[callback]):
            compiled = copy.compile(student, trainset=[])
        assert callback.events == ["compile_start", "compile_end"]
        assert isinstance(compiled, QA)
        assert is_instrumented()
    finally:
        uninstrument()


@pytest.mark.parametrize("pickler", PICKLERS)
def test_geode_callback_pickles_as_the_loading_process_instrumentation(pickler: str) -> None:
    dumps, loads = PICKLERS[pickler]
    provider, _ = in_memory_tracing()
    instrument(tracer_provider=provider)
    try:
        callback = active_callback()
        assert callback is not None
        _exercise()  # open-span tables, caches, a tracer with locks: none of it travels
        data = dumps({"callbacks": [callback]})
        assert loads(data)["callbacks"] == [callback]
    finally:
        uninstrument()
    restored = loads(data)["callbacks"]
    assert [type(cb) for cb in restored] == [BaseCallback]  # inert where Geode is not instrumenting


def test_dspy_settings_save_and_load_while_instrumented(tmp_path: Path) -> None:
    # DSPy's tests/utils/test_settings.py::test_dspy_settings_save_exclude_keys failed with Geode on:
    # dspy.settings.save() cloudpickles the settings, Geode's registered callback included.
    provider, _ = in_memory_tracing()
    instrument(tracer_provider=provider)
    path = tmp_path / "settings.pkl"
    try:
        _exercise()
        keys = [key for key in dspy.settings.config if key != "callbacks"]
        dspy.settings.save(str(path), exclude_keys=keys)
        loaded = dspy.load_settings(str(path), allow_pickle=True)
        assert loaded["callbacks"] == [active_callback()]
    finally:
        uninstrument()
