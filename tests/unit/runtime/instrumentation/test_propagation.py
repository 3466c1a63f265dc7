"""One request is one trace: through dspy.Parallel, Module.batch, Evaluate, asyncify, acall, thread pools."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dspy
from tests.unit.runtime.instrumentation.conftest import Traced

from geode.traces.context import RunIdentity, run_identity

IDENTITY = RunIdentity(program="fan-out", version="v1", session_id="s-1")


def _answer(messages: list[dict[str, str]]) -> dict[str, str]:
    return {"answer": "ok"}


def _assert_one_trace_with_identity(traced: Traced, *, expected_spans: int) -> None:
    spans = traced.spans
    assert len(spans) == expected_spans, [s.name for s in spans]
    assert len(traced.trace_ids()) == 1, "the request's spans are split over several traces"
    roots = [s for s in spans if s.parent is None]
    assert len(roots) == 1, [s.name for s in roots]
    for span in spans:
        attributes = span.attributes or {}
        if span.name == "request":
            continue
        assert attributes.get("geode.program.name") == "fan-out", span.name
        assert attributes.get("session.id") == "s-1", span.name


def _children_of(traced: Traced, name: str) -> list[str]:
    (parent,) = traced.named(name)
    assert parent.context is not None
    return sorted(
        s.name for s in traced.spans if s.parent is not None and s.parent.span_id == parent.context.span_id
    )


class FanOut(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = dspy.Predict("question -> answer")
        self.second = dspy.Predict("question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        parallel = dspy.Parallel(num_threads=2, disable_progress_bar=True)
        results = parallel([(self.first, {"question": question}), (self.second, {"question": question})])
        return dspy.Prediction(answers=[r.answer for r in results])


def test_dspy_parallel_stays_in_the_request_trace(traced: Traced) -> None:
    with run_identity(IDENTITY), dspy.context(lm=traced.lm(_answer)):
        FanOut()(question="q")
    _assert_one_trace_with_identity(traced, expected_spans=5)
    assert _children_of(traced, "FanOut") == ["first", "second"]


class PoolFanOut(dspy.Module):
    """Uses a plain thread pool, as application code often does."""

    def __init__(self) -> None:
        super().__init__()
        self.predict = dspy.Predict("question -> answer")

    def forward(self, questions: list[str]) -> dspy.Prediction:
        lm = dspy.settings.lm  # thread pools do not carry DSPy's settings; the worker sets them

        def one(question: str) -> str:
            with dspy.context(lm=lm):
                return self.predict(question=question).answer

        with ThreadPoolExecutor(max_workers=3) as pool:
            return dspy.Prediction(answers=list(pool.map(one, questions)))


def test_thread_pool_workers_stay_in_the_request_trace(traced: Traced) -> None:
    with run_identity(IDENTITY), dspy.context(lm=traced.lm(_answer)):
        PoolFanOut()(questions=["a", "b", "c"])
    _assert_one_trace_with_identity(traced, expected_spans=7)
    assert _children_of(traced, "PoolFanOut") == ["predict", "predict", "predict"]


def test_module_batch_under_a_request_span_is_one_trace(traced: Traced) -> None:
    predict = dspy.Predict("question -> answer")
    examples = [dspy.Example(question=q).with_inputs("question") for q in ("a", "b", "c")]
    tracer = traced.provider.get_tracer("app")
    with tracer.start_as_current_span("request"), run_identity(IDENTITY), dspy.context(lm=traced.lm(_answer)):
        predict.batch(examples, num_threads=3, disable_progress_bar=True)
    _assert_one_trace_with_identity(traced, expected_spans=7)
    assert _children_of(traced, "request") == ["Predict", "Predict", "Predict"]


def test_evaluate_is_one_trace_under_an_evaluator_span(traced: Traced) -> None:
    predict = dspy.Predict("question -> answer")
    devset = [dspy.Example(question=q, answer="ok").with_inputs("question") for q in ("a", "b", "c", "d")]

    def metric(example: Any, prediction: Any, trace: Any = None) -> bool:
        return example.answer == prediction.answer

    evaluate = dspy.Evaluate(devset=devset, metric=metric, num_threads=2, display_progress=False)
    with run_identity(IDENTITY), dspy.context(lm=traced.lm(_answer)):
        result = evaluate(predict)
    assert result.score == 100.0
    _assert_one_trace_with_identity(traced, expected_spans=9)
    (root,) = traced.tree()
    assert (root["name"], root["kind"]) == ("Evaluate", "EVALUATOR")
    assert [c["name"] for c in root["children"]] == ["Predict"] * 4


def test_asyncify_is_one_trace(traced: Traced) -> None:
    program = FanOut()
    tracer = traced.provider.get_tracer("app")

    async def main() -> None:
        with (
            tracer.start_as_current_span("request"),
            run_identity(IDENTITY),
            dspy.context(lm=traced.lm(_answer)),
        ):
            run: Any = dspy.asyncify(program)
            await run(question="q")

    asyncio.run(main())
    _assert_one_trace_with_identity(traced, expected_spans=6)
    assert _children_of(traced, "request") == ["FanOut"]


class AsyncChain(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = dspy.Predict("question -> answer")
        self.second = dspy.ChainOfThought("question -> answer")

    async def aforward(self, question: str) -> dspy.Prediction:
        a, b = await asyncio.gather(self.first.acall(question=question), self.second.acall(question=question))
        return dspy.Prediction(answers=[a.answer, b.answer])


def test_concurrent_acall_nests_every_span(traced: Traced) -> None:
    def answer(messages: list[dict[str, str]]) -> dict[str, str]:
        return {"reasoning": "r", "answer": "ok"}

    async def main() -> None:
        with run_identity(IDENTITY), dspy.context(lm=traced.lm(answer)):
            await AsyncChain().acall(question="q")

    asyncio.run(main())
    _assert_one_trace_with_identity(traced, expected_spans=6)
    assert traced.shape() == [
        (
            "AsyncChain",
            "CHAIN",
            [
                ("first", "CHAIN", [("scripted", "LLM")]),
                ("second", "CHAIN", [("second.predict", "CHAIN", [("scripted", "LLM")])]),
            ],
        )
    ] or traced.shape() == [
        (
            "AsyncChain",
            "CHAIN",
            [
                ("second", "CHAIN", [("second.predict", "CHAIN", [("scripted", "LLM")])]),
                ("first", "CHAIN", [("scripted", "LLM")]),
            ],
        )
    ]


def test_separate_requests_are_separate_traces(traced: Traced) -> None:
    predict = dspy.Predict("question -> answer")
    lm = traced.lm(_answer)

    def request(question: str) -> None:
        with run_identity(IDENTITY), dspy.context(lm=lm):
            predict(question=question)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(request, [f"q{i}" for i in range(8)]))
    assert len(traced.trace_ids()) == 8
    assert all(len(root["children"]) == 1 for root in traced.tree())


def test_to_thread_is_one_trace_and_not_wrapped_twice(traced: Traced) -> None:
    # asyncio.to_thread already runs the task in a copy of the whole context; the submit hook leaves
    # it as it is and the spans still land in the request's trace with its identity.
    from geode.runtime.instrumentation import _propagation

    program = FanOut()
    tracer = traced.provider.get_tracer("app")
    wrapped: list[bool] = []
    original = ThreadPoolExecutor.submit

    def spy(self: ThreadPoolExecutor, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        wrapped.append(_propagation._runs_in_a_copied_context(fn))
        return original(self, fn, *args, **kwargs)

    async def main() -> None:
        with (
            tracer.start_as_current_span("request"),
            run_identity(IDENTITY),
            dspy.context(lm=traced.lm(_answer)),
        ):
            await asyncio.to_thread(program, question="q")

    ThreadPoolExecutor.submit = spy
    try:
        asyncio.run(main())
    finally:
        ThreadPoolExecutor.submit = original
    _assert_one_trace_with_identity(traced, expected_spans=6)
    assert _children_of(traced, "request") == ["FanOut"]
    assert wrapped and wrapped[0] is True
