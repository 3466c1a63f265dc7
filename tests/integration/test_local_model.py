"""The real embedded model (SmolLM2-135M on llama.cpp) end to end through DSPy and the Runtime.

Marked ``localmodel``: it loads a 98 MB model and makes about a dozen short calls (seconds, not minutes).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any, Literal

import dspy
import pytest
from dspy.lm15 import Config, Message, Request, Response
from tests.tiers import require_tier

import geode
from geode.errors import OutputParseError
from geode.runtime.lm import build_lm, is_local
from geode.runtime.lm._llama import AsyncLlamaCppEngine
from geode.runtime.lm.local import LocalLM
from geode.runtime.settings import LMSettings, TracingSettings

pytestmark = pytest.mark.localmodel

_NO_TRACING = geode.Settings(tracing=TracingSettings(enabled=False))

require_tier("localmodel", import_name="llama_cpp")


class CapitalQA(dspy.Signature):
    """Answer the question with a short phrase."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


class Triage(dspy.Signature):
    """Triage a support message."""

    message: str = dspy.InputField()
    sentiment: Literal["positive", "negative"] = dspy.OutputField()
    urgent: bool = dspy.OutputField()
    order_number: int = dspy.OutputField()


@pytest.fixture(scope="module")
def lm() -> Iterator[LocalLM]:
    yield LocalLM(cache=False, max_tokens=48, context_size=2048)


@pytest.fixture
def runtime(lm: LocalLM) -> geode.Runtime:
    return geode.Runtime(lm=lm, settings=_NO_TRACING)


def _usage(prediction: dspy.Prediction, lm: LocalLM) -> dict[str, Any]:
    usage = prediction.get_lm_usage()
    assert usage is not None
    return usage[lm.model]


def _text(response: Response) -> str:
    assert response.text is not None
    return response.text


def _request(lm: LocalLM, text: str, **config: object) -> Request:
    return Request(model=lm.model, messages=(Message.user(text),), config=Config(**config))  # type: ignore[arg-type]


def test_runtime_answers_through_predict_with_the_small_model_adapter_and_real_usage(
    runtime: geode.Runtime, lm: LocalLM
) -> None:
    assert is_local(lm)
    assert isinstance(runtime.adapter, geode.SmallModelAdapter)
    prediction = runtime.run(dspy.Predict(CapitalQA), question="What is the capital of France?")
    assert isinstance(prediction.answer, str)
    assert prediction.answer.strip()
    usage = _usage(prediction, lm)
    assert usage["prompt_tokens"] > 10
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # One str output: a plain-text reply, no schema and no JSON around it.
    request = lm.history[-1]
    assert request["kwargs"].get("response_format") is None
    assert not request["outputs"][0].lstrip().startswith("{")


def test_n_candidates_with_temperature_each_cost_a_call(runtime: geode.Runtime, lm: LocalLM) -> None:
    before = len(lm.history)
    prediction = runtime.run(
        dspy.Predict(CapitalQA, n=3, temperature=0.7), question="In one word, what colour is the sky?"
    )
    completions = prediction.completions
    assert completions is not None
    assert len(completions.answer) == 3
    assert len(lm.history) == before + 1
    usage = _usage(prediction, lm)
    # Three candidates of the same prompt (about 34 tokens with SmallModelAdapter): three prompts billed,
    # the KV cache served the repeats.
    assert usage["prompt_tokens"] >= 3 * 25
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 2 * 25


def test_async_run_uses_the_async_engine(runtime: geode.Runtime) -> None:
    prediction = asyncio.run(runtime.arun(dspy.Predict(CapitalQA), question="What is the capital of Japan?"))
    assert isinstance(prediction.answer, str)


def test_typed_fields_parse_into_their_types(runtime: geode.Runtime, lm: LocalLM) -> None:
    prediction = runtime.run(
        dspy.Predict(Triage),
        message="My order 4417 arrived broken and I need a replacement before Friday!",
    )
    assert prediction.sentiment in ("positive", "negative")
    assert isinstance(prediction.urgent, bool)
    assert isinstance(prediction.order_number, int)
    # Several typed outputs: the adapter sent their schema, which llama.cpp decoded under as a grammar.
    assert lm.history[-1]["kwargs"]["response_format"] is not None


def test_truncated_output_is_an_output_parse_error(lm: LocalLM) -> None:
    starved = geode.Runtime(lm=lm.copy(max_tokens=3), settings=_NO_TRACING)
    with pytest.raises(OutputParseError) as info:
        starved.run(dspy.Predict(Triage), message="Where is my order 12?")
    assert "could not be parsed" in str(info.value)


def test_max_tokens_and_greedy_decoding_are_honoured(lm: LocalLM) -> None:
    request = _request(lm, "Count from 1 to 50, separated by commas.", max_tokens=7, temperature=0.0)
    first = lm.llama_engine.complete(request)
    second = lm.llama_engine.complete(request)
    assert first.finish_reason == "length"
    assert first.usage.output_tokens == 7
    assert first.text == second.text
    # The second identical prompt was served from the KV cache except its last token.
    assert second.usage.input_tokens is not None
    assert second.usage.cache_read_tokens == second.usage.input_tokens - 1


def test_a_truncated_schema_answer_is_retried_once_and_both_attempts_are_billed(lm: LocalLM) -> None:
    schema = {
        "type": "object",
        "properties": {"colours": {"type": "array", "items": {"type": "string"}}},
        "required": ["colours"],
        "additionalProperties": False,
    }
    request = _request(
        lm,
        "List one hundred colours as JSON.",
        max_tokens=10,
        temperature=0.0,
        response_format={"type": "json_schema", "schema": schema},
    )
    prompt_tokens = len(
        lm.loaded.prompt_tokens([{"role": "user", "content": "List one hundred colours as JSON."}])[0]
    )
    response = lm.llama_engine.complete(request)
    # The first attempt used all 10 tokens without closing the JSON; the retry is billed on top.
    assert response.provider_data == {"repetition_retry": True}
    assert 10 < (response.usage.output_tokens or 0) <= 20
    assert response.usage.input_tokens == 2 * prompt_tokens
    assert _text(response).lstrip().startswith("{")

    free_text = lm.llama_engine.complete(
        _request(lm, "List one hundred colours.", max_tokens=10, temperature=0.0)
    )
    assert free_text.provider_data is None  # only schema-constrained answers are retried
    assert free_text.usage.output_tokens == 10


def test_streaming_yields_the_same_text_and_usage_as_complete(lm: LocalLM) -> None:
    request = _request(lm, "Say hello to Ada in five words.", max_tokens=16, temperature=0.0)
    complete = lm.llama_engine.complete(request)
    events = list(lm.llama_engine.stream(request))
    assert events[0].type == "start"
    assert events[-1].type == "end"
    streamed = "".join(e.delta.text for e in events if e.type == "delta")
    assert streamed == complete.text
    assert events[-1].usage.input_tokens == complete.usage.input_tokens
    assert events[-1].usage.output_tokens == complete.usage.output_tokens


def test_async_stream_releases_the_model_when_abandoned(lm: LocalLM) -> None:
    engine = AsyncLlamaCppEngine(lm.llama_engine)
    request = _request(lm, "Say hello.", max_tokens=8, temperature=0.0)

    async def first_delta() -> str:
        events = engine.stream(request)
        try:
            async for event in events:
                if event.type == "delta":
                    return event.delta.text
        finally:
            await events.aclose()
        return ""

    assert asyncio.run(first_delta())
    assert not lm.loaded.lock.locked()
    assert asyncio.run(engine.complete(request)).usage.output_tokens


def test_stop_strings_cut_the_output(lm: LocalLM) -> None:
    prompt = "Count from 1 to 20, one number per line."
    full = _text(lm.llama_engine.complete(_request(lm, prompt, max_tokens=10, temperature=0.0)))
    assert "2." in full
    cut = _request(lm, prompt, max_tokens=10, temperature=0.0, stop=("2.",))
    complete = lm.llama_engine.complete(cut)
    streamed = "".join(e.delta.text for e in lm.llama_engine.stream(cut) if e.type == "delta")
    assert complete.text == full[: full.index("2.")]
    assert streamed == complete.text


def test_concurrent_calls_are_serialised_not_corrupted(lm: LocalLM) -> None:
    request = _request(lm, "What is 2 + 2?", max_tokens=4, temperature=0.0)
    expected = lm.llama_engine.complete(request).text
    results: list[str] = []

    def call() -> None:
        results.append(_text(lm.copy().llama_engine.complete(request)))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == [expected] * 3


def test_copies_and_new_instances_share_one_loaded_model(lm: LocalLM) -> None:
    assert lm.copy(temperature=0.5).loaded is lm.loaded
    again = build_lm(LMSettings(model="local", context_size=2048, max_tokens=48))
    assert isinstance(again, LocalLM)
    assert again.loaded is lm.loaded
    restored = LocalLM.load_state(lm.dump_state())
    assert restored.loaded is lm.loaded
    assert restored.dump_state() == lm.dump_state()
    tuned = LocalLM(context_size=2048, repeat_penalty=1.1, top_k=20)
    state = tuned.dump_state()
    assert state["repeat_penalty"] == 1.1
    assert state["top_k"] == 20
    assert state["model_path"] is None  # the bundled model is found again wherever it is installed
    assert LocalLM.load_state(state).dump_state() == state


def test_llama_cpp_runs_one_thread_per_usable_core_unless_pinned(lm: LocalLM) -> None:
    import llama_cpp

    from geode.runtime.lm._threads import usable_cores

    context = lm.llama._ctx.ctx
    assert llama_cpp.llama_n_threads(context) == usable_cores()
    assert llama_cpp.llama_n_threads_batch(context) == usable_cores()
    pinned = LocalLM(cache=False, max_tokens=4, context_size=1024, threads=1)
    assert llama_cpp.llama_n_threads(pinned.llama._ctx.ctx) == 1
    assert pinned.dump_state()["threads"] == 1
