from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import dspy
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from geode.errors import DatasetError
from geode.evals.dataset import Dataset
from geode.evals.evaluate import Price, Pricing, evaluate, log_to_phoenix, percentile
from geode.evals.metrics import exact_match, with_feedback
from geode.testing import ScriptedLM, isolated_response_cache
from geode.traces.context import RunIdentity, current_run
from geode.traces.vocab import GeodeAttributes


def _dataset(n: int = 6) -> Dataset:
    return Dataset.from_records(
        [{"inputs": {"question": f"q{i}"}, "outputs": {"answer": str(i)}} for i in range(n)], name="numbers"
    )


def _answer_number(messages: list[dict[str, str]]) -> dict[str, str]:
    n = re.findall(r"q(\d+)", messages[-1]["content"])[-1]
    if n == "3":
        raise RuntimeError("model exploded")
    return {"answer": "wrong" if n == "4" else n}


def test_score_errors_usage_and_cost_are_measured_per_example() -> None:
    lm = ScriptedLM(_answer_number)
    pricing = Pricing({"scripted": Price(input_per_mtok=1.0, output_per_mtok=2.0)})
    with dspy.context(lm=lm):
        result = evaluate(
            dspy.Predict("question -> answer"), _dataset(), exact_match, pricing=pricing, num_threads=3
        )
    assert result.n == 6
    assert result.score == pytest.approx(4 / 6)
    assert result.errors == 1
    assert (
        result.model == "scripted" and result.metric == "exact_match" and result.dataset_id == _dataset().id
    )
    assert [e.index for e in result.examples] == list(range(6))  # dataset order despite threads
    failed = result.examples[3]
    assert failed.score == 0.0 and failed.error is not None and "model exploded" in failed.error
    wrong = result.examples[4]
    assert wrong.error is None and wrong.outputs == {"answer": "wrong"}
    assert wrong.feedback is not None and "expected '4'" in wrong.feedback
    # Every example made exactly one LM call; tokens match what the scripted LM counted.
    assert [e.lm_calls for e in result.examples] == [1] * 6
    assert result.lm_calls == 6
    counted = {c.answer.get("answer"): c for c in lm.calls}
    assert result.examples[0].prompt_tokens == counted["0"].prompt_tokens
    assert result.prompt_tokens == sum(c.prompt_tokens for c in lm.calls)
    assert result.completion_tokens == sum(c.completion_tokens for c in lm.calls)
    expected_cost = (result.prompt_tokens * 1.0 + result.completion_tokens * 2.0) / 1e6
    assert result.cost_usd == pytest.approx(expected_cost)
    assert result.score_per_dollar == pytest.approx(100 * result.score / expected_cost)
    assert all(e.latency_s > 0 for e in result.examples)
    assert result.latency_p50_s <= result.latency_p95_s
    data = result.to_dict()
    assert data["examples"][3]["error"] == failed.error and data["total_tokens"] == result.total_tokens


def test_unknown_prices_give_no_cost_and_free_models_cost_nothing() -> None:
    with dspy.context(lm=ScriptedLM(lambda m: {"answer": "0"})):
        unknown = evaluate(dspy.Predict("question -> answer"), _dataset(2), exact_match)
        free = evaluate(
            dspy.Predict("question -> answer"), _dataset(2), exact_match, pricing=Pricing(free={"scripted"})
        )
    assert unknown.cost_usd is None and unknown.score_per_dollar is None
    assert free.cost_usd == 0.0 and free.score_per_dollar == float("inf")


def test_each_example_runs_under_the_eval_identity() -> None:
    seen: list[RunIdentity | None] = []

    class Spy(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.predict = dspy.Predict("question -> answer")

        def forward(self, question: str) -> dspy.Prediction:
            seen.append(current_run())
            return self.predict(question=question)

    with dspy.context(lm=ScriptedLM(lambda m: {"answer": "1"})):
        evaluate(Spy(), _dataset(3), exact_match, program_name="qa", version="abc123", num_threads=2)
    assert len(seen) == 3
    for identity in seen:
        assert identity is not None
        assert identity.program == "qa" and identity.version == "abc123"
        assert "geode.eval" in identity.tags
        assert identity.metadata[GeodeAttributes.EVAL_DATASET_ID] == _dataset(3).id
    assert current_run() is None


def test_metric_errors_and_feedback_metrics() -> None:
    def broken(example: dspy.Example, pred: dspy.Prediction, trace: object = None) -> float:
        raise KeyError("label")

    with dspy.context(lm=ScriptedLM(lambda m: {"answer": "0"})):
        bad = evaluate(dspy.Predict("question -> answer"), _dataset(2), broken)
        fed = evaluate(dspy.Predict("question -> answer"), _dataset(2), with_feedback(exact_match))
    assert bad.score == 0.0 and bad.errors == 2
    assert all(e.error is not None and e.error.startswith("metric broken failed") for e in bad.examples)
    assert fed.examples[0].score == 1.0 and fed.examples[1].score == 0.0
    assert fed.examples[1].feedback is not None and "expected '1'" in fed.examples[1].feedback


def test_max_errors_skips_the_rest() -> None:
    def always_fail(messages: list[dict[str, str]]) -> dict[str, str]:
        raise RuntimeError("down")

    with dspy.context(lm=ScriptedLM(always_fail)):
        result = evaluate(dspy.Predict("question -> answer"), _dataset(6), exact_match, max_errors=2)
    assert result.errors == 2 and result.skipped == 4
    assert result.score == 0.0


def test_empty_dataset_is_refused() -> None:
    with pytest.raises(DatasetError, match="no examples"):
        evaluate(dspy.Predict("question -> answer"), Dataset(()), exact_match)


def test_examples_are_accepted_directly() -> None:
    examples = [dspy.Example(question="q1", answer="1").with_inputs("question")]
    with dspy.context(lm=ScriptedLM(lambda m: {"answer": "1"})):
        assert evaluate(dspy.Predict("question -> answer"), examples, exact_match).score == 1.0


@pytest.fixture
def tracer_and_exporter() -> Iterator[tuple[object, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


def test_one_span_per_example_with_score_and_trace_id(
    tracer_and_exporter: tuple[object, InMemorySpanExporter],
) -> None:
    tracer, exporter = tracer_and_exporter
    with dspy.context(lm=ScriptedLM(_answer_number)):
        result = evaluate(
            dspy.Predict("question -> answer"), _dataset(4), exact_match, tracer=tracer, version="v1"
        )
    spans = exporter.get_finished_spans()
    assert len(spans) == 4
    by_example = {s.attributes[GeodeAttributes.EVAL_EXAMPLE_ID]: s for s in spans if s.attributes}
    for ex in result.examples:
        span = by_example[ex.example_id]
        assert span.context is not None and span.attributes is not None
        assert ex.trace_id == f"{span.context.trace_id:032x}"
        assert span.attributes[GeodeAttributes.EVAL_SCORE] == ex.score
        assert span.attributes[GeodeAttributes.PROGRAM_VERSION] == "v1"
    errored = by_example[result.examples[3].example_id]
    assert errored.status.status_code.name == "ERROR"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_phoenix_down_never_fails_the_evaluation() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with dspy.context(lm=ScriptedLM(lambda m: {"answer": "0"})):
        t0 = time.perf_counter()
        result = evaluate(dspy.Predict("question -> answer"), _dataset(2), exact_match, phoenix_url=url)
        elapsed = time.perf_counter() - t0
    assert result.phoenix is None and result.n == 2
    assert elapsed < 10
    assert log_to_phoenix(result, _dataset(2), url) is None


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0


def test_records_without_an_expected_output_are_left_out_and_counted() -> None:
    data = Dataset.from_records(
        [
            {"inputs": {"question": "q1"}, "outputs": {"answer": "1"}},
            {"inputs": {"question": "q2"}, "outputs": {}},  # mined from a run known to be bad
            {"inputs": {"question": "q5"}, "outputs": {"answer": "5"}},
        ]
    )
    lm = ScriptedLM(_answer_number)
    with dspy.context(lm=lm):
        result = evaluate(dspy.Predict("question -> answer"), data, exact_match)
    # Scored 0 it would have pulled the score to 67% with every answer right; it is not run at all.
    assert (result.score, result.n, result.unlabelled) == (1.0, 2, 1)
    assert result.dataset_id == data.id and len(lm.calls) == 2
    with pytest.raises(
        DatasetError, match=r"none of the 2 records .* has an expected output for exact_match"
    ):
        evaluate(dspy.Predict("question -> answer"), data.with_records(data.records[1:2] * 2), exact_match)


@pytest.fixture
def fresh_dspy_cache(tmp_path: Path) -> Iterator[None]:
    with isolated_response_cache(tmp_path / "dspy-cache"):
        yield


@pytest.mark.usefixtures("fresh_dspy_cache")
def test_cache_hits_are_counted_apart_from_lm_calls() -> None:
    lm = ScriptedLM(_answer_number, cache=True)
    program = dspy.Predict("question -> answer")
    data = _dataset(3)
    with dspy.context(lm=lm):
        first = evaluate(program, data, exact_match)
        again = evaluate(program, data, exact_match)
    assert (first.lm_calls, first.cache_hits) == (3, 0) and first.prompt_tokens > 0
    # The model was not called again: no LM calls, no tokens, only cache hits, said as such.
    assert len(lm.calls) == 3
    assert (again.lm_calls, again.cache_hits, again.prompt_tokens) == (0, 3, 0)
    assert [e.cache_hits for e in again.examples] == [1, 1, 1]
    assert again.to_dict(examples=False)["cache_hits"] == 3
