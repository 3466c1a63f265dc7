"""Streaming fields of SmallModelAdapter replies through dspy.streamify (the path `geode serve` streams on)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import dspy
import pytest
from dspy.lm15 import Request, StreamDeltaEvent, StreamEndEvent, StreamStartEvent, TextDelta

from geode.adapters import SmallModelAdapter, SmallModelStreamListener
from geode.testing import ScriptedLM

ADAPTER = SmallModelAdapter()


class StreamingScriptedLM(ScriptedLM):
    """A ScriptedLM on DSPy's canonical engine path, streaming each reply three characters at a time.

    (ScriptedLM's engine takes DSPy's legacy shortcut, which never streams; geode.LocalLM streams.)
    """

    def _install_engine(self) -> None:
        super()._install_engine()
        sync = self._engine_spec

        def events(request: Request) -> Any:
            response = sync.complete(request)
            text = response.text or ""
            yield StreamStartEvent(id="scripted", model="scripted")
            for start in range(0, len(text), 3):
                yield StreamDeltaEvent(TextDelta(text[start : start + 3]))
            yield StreamEndEvent(finish_reason="stop", usage=response.usage)

        class Engine:
            def complete(self, request: Request) -> Any:
                return sync.complete(request)

            def stream(self, request: Request) -> Any:
                return events(request)

        class AsyncEngine:
            async def complete(self, request: Request) -> Any:
                return sync.complete(request)

            async def stream(self, request: Request) -> Any:
                for event in events(request):
                    yield event

        self._engine_spec = Engine()
        self._async_engine_spec = AsyncEngine()


def _chunk(text: str) -> Any:
    return SimpleNamespace(choices=[SimpleNamespace(delta=SimpleNamespace(content=text))])


def _listen(signature: str, field: str, pieces: list[str]) -> tuple[list[str], bool]:
    listener = SmallModelStreamListener(field, predict=dspy.Predict(signature), predict_name="p")
    sent: list[str] = []
    last = False
    with dspy.context(adapter=ADAPTER):
        for piece in pieces:
            out = listener.receive(_chunk(piece))
            if out is not None:
                sent.append(out.chunk)
                last = last or out.is_last_chunk
        final = listener.finalize()
        if final is not None:
            sent.append(final.chunk)
            last = last or final.is_last_chunk
    return sent, last


def test_a_plain_reply_streams_as_written_without_an_echoed_label() -> None:
    sent, last = _listen("question -> answer", "answer", ["Ans", "wer: Re", "no, ", "Nevada  ", "\n"])
    assert "".join(sent) == "Reno, Nevada" and last
    assert sent[0] == "Re"  # nothing was sent while the text could still be the label


def test_a_json_reply_streams_its_text_field_and_ends_at_the_next_key() -> None:
    pieces = ['{"reasoning": "Reno', " ships", '", "answer": 4', "2}"]
    sent, last = _listen("question -> reasoning, answer: int", "reasoning", pieces)
    assert "".join(sent) == "Reno ships" and last
    sent, last = _listen("question -> reasoning, answer: int", "answer", pieces)
    assert sent == ["42"] and last


@pytest.mark.parametrize(
    ("signature", "answer", "field", "expected"),
    [
        ("question -> answer", {"answer": "Reno"}, "answer", "Reno"),
        ("question -> reasoning, answer", {"reasoning": "r", "answer": "Reno"}, "answer", "Reno"),
    ],
)
def test_streamify_streams_the_field_and_returns_the_prediction(
    signature: str, answer: dict[str, str], field: str, expected: str
) -> None:
    program = dspy.Predict(signature)
    listener = SmallModelStreamListener(field, predict=program, predict_name="self")
    streamer: Any = dspy.streamify(program, stream_listeners=[listener])

    async def collect() -> tuple[str, Any]:
        text, prediction = "", None
        async for item in streamer(question="Who ships?"):
            if isinstance(item, dspy.streaming.StreamResponse):
                text += item.chunk
            elif isinstance(item, dspy.Prediction):
                prediction = item
        return text, prediction

    with dspy.context(lm=StreamingScriptedLM([answer], adapter=ADAPTER), adapter=ADAPTER):
        text, prediction = asyncio.run(collect())
    assert text == expected and prediction is not None and prediction[field] == expected


def test_with_dspys_adapters_it_is_dspys_listener() -> None:
    listener = SmallModelStreamListener(
        "answer", predict=dspy.Predict("question -> answer"), predict_name="p"
    )
    with dspy.context(adapter=dspy.ChatAdapter()):
        outputs = [
            listener.receive(_chunk(p)) for p in ["[[ ## answer ## ]]\n", "Reno", "\n\n[[ ## completed ## ]]"]
        ]
    assert "".join(o.chunk for o in outputs if o is not None) == "Reno"


def test_chain_of_thought_on_a_small_local_model_streams_the_answer_as_plain_text() -> None:
    # The rationale is left out for a small local model: the reply is the answer as plain text, which
    # streams as such; a listener on the rationale gets no text.
    program = dspy.ChainOfThought("question -> answer")
    answer_listener = SmallModelStreamListener("answer", predict=program.predict, predict_name="predict")
    reason_listener = SmallModelStreamListener("reasoning", predict=program.predict, predict_name="predict")
    streamer: Any = dspy.streamify(program, stream_listeners=[answer_listener, reason_listener])

    async def collect() -> tuple[dict[str, str], Any]:
        texts: dict[str, str] = {}
        prediction = None
        async for item in streamer(question="Who ships?"):
            if isinstance(item, dspy.streaming.StreamResponse):
                texts[item.signature_field_name] = texts.get(item.signature_field_name, "") + item.chunk
            elif isinstance(item, dspy.Prediction):
                prediction = item
        return texts, prediction

    lm = StreamingScriptedLM([{"answer": "Reno, Nevada"}], adapter=ADAPTER, local=True)
    with dspy.context(lm=lm, adapter=ADAPTER):
        texts, prediction = asyncio.run(collect())
    assert texts.get("answer") == "Reno, Nevada" and not texts.get("reasoning")
    assert prediction is not None and (prediction.reasoning, prediction.answer) == ("", "Reno, Nevada")
