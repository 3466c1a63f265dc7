from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import dspy
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from geode.runtime.runtime import Runtime
from geode.runtime.serving import FeedbackLog, HostedProgram, create_app
from geode.runtime.settings import ServeSettings, Settings, TracingSettings
from geode.testing import ScriptedLM, in_memory_tracing


@pytest.fixture
def tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    return in_memory_tracing()


def echo_lm() -> ScriptedLM:
    """Answers with the question it was asked, so answers show which request they belong to."""

    def answer(messages: list[dict[str, str]]) -> dict[str, Any]:
        last = messages[-1]["content"]
        question = last.split("[[ ## question ## ]]")[-1].split("\n\n")[0].strip()
        return {"answer": f"echo: {question}"}

    return ScriptedLM(answer)


AppFactory = Callable[..., tuple[TestClient, FastAPI]]


@pytest.fixture
def make_client(tracing: tuple[TracerProvider, InMemorySpanExporter], tmp_path: Any) -> Iterator[AppFactory]:
    clients: list[TestClient] = []

    def build(
        programs: list[Any] | None = None,
        *,
        lm: dspy.BaseLM | None = None,
        serve: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> tuple[TestClient, FastAPI]:
        rt = Runtime(
            lm=lm or echo_lm(),
            settings=Settings(home=tmp_path / "home", tracing=TracingSettings(enabled=False)),
            tracer_provider=tracing[0],
        )
        settings = ServeSettings(**(serve or {}))
        kwargs.setdefault("feedback_sinks", [FeedbackLog(tmp_path / "feedback.jsonl")])
        app = create_app(
            rt,
            programs or [HostedProgram(dspy.Predict("question -> answer"), name="qa")],
            settings,
            **kwargs,
        )
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client, app

    yield build
    for client in clients:
        client.__exit__(None, None, None)
