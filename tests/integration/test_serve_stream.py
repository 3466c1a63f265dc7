"""Server-sent events from `geode serve`: output fields arrive while the LM is still generating them.

Both tests read the stream from a real uvicorn process and time each event's arrival: a server that
buffered the run and sent everything at the end would deliver every event at the same moment.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.tiers import require_tier

from .serve_helpers import PROGRAMS, serve


@dataclass
class Event:
    name: str
    data: dict[str, Any]
    at: float
    """Seconds after the request was sent."""


def _events(url: str, body: dict[str, Any]) -> tuple[list[Event], httpx.Headers]:
    started = time.perf_counter()
    events: list[Event] = []
    with httpx.stream("POST", url, json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        buffer = ""
        for text in response.iter_text():
            buffer += text
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                head, _, data = block.partition("\ndata: ")
                events.append(
                    Event(head.removeprefix("event: "), json.loads(data), time.perf_counter() - started)
                )
        return events, response.headers


def _chunks(events: list[Event], field: str) -> list[Event]:
    return [e for e in events if e.name == "token" and e.data["field"] == field]


def test_output_fields_arrive_as_the_lm_streams_them(tmp_path: Path) -> None:
    # `storyteller`'s LM streams its answer word by word, 0.05 s apart (eight words: ~0.4 s).
    with serve([f"story={PROGRAMS}:storyteller"], tmp_path / "home") as served:
        events, headers = _events(f"{served.url}/programs/story/stream", {"question": "a story"})
    names = [e.name for e in events]
    assert names[-2:] == ["prediction", "done"] and "error" not in names
    prediction = events[-2]
    assert prediction.data["outputs"] == {"answer": "once upon a time there were eight words", "mood": "calm"}
    assert prediction.data["trace_id"] == headers["X-Trace-Id"]

    answer = _chunks(events, "answer")
    assert "".join(e.data["chunk"] for e in answer) == prediction.data["outputs"]["answer"]
    assert len([e for e in answer if e.data["chunk"]]) == 8  # one event per streamed word
    assert "".join(e.data["chunk"] for e in _chunks(events, "mood")) == "calm"
    # Incremental: the words arrived spread over the LM's streaming time, the first well before the end.
    assert answer[-2].at - answer[0].at >= 0.2
    assert prediction.at - answer[0].at >= 0.25


@pytest.mark.localmodel
def test_the_embedded_model_streams_tokens_over_sse(tmp_path: Path) -> None:
    require_tier("localmodel", import_name="llama_cpp")
    with serve(
        [f"qa={PROGRAMS}:plain_qa"], tmp_path / "home", args=["--lm", "local"], ready_timeout_s=180
    ) as served:
        events, _ = _events(
            f"{served.url}/programs/qa/stream", {"question": "What is the capital of France?"}
        )
    names = [e.name for e in events]
    assert names[-2:] == ["prediction", "done"] and "error" not in names
    answer = _chunks(events, "answer")
    final = events[-2].data["outputs"]["answer"]
    # Token by token from llama.cpp through DSPy's JSON stream listener (raw JSON string pieces).
    assert len(answer) >= 2
    assert final.strip() and final in "".join(e.data["chunk"] for e in answer)
    assert events[-2].at - answer[0].at > 0.02
