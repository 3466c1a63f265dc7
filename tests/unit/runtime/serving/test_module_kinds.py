"""`geode serve` hosts every module kind the docs list, each with a schema from its real interface and a
real request answered through the runtime (a scripted LM plays the model)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, cast

import dspy
import pytest
from fastapi.testclient import TestClient
from tests.unit.agents.crystallize.scenario import TRUSTED, oracle, record_runs

import geode
from geode.agents.fallback import Fallback
from geode.agents.workflows import RAG, DecomposeSolveCombine
from geode.examples.inventory import lookup_stock
from geode.retrieval.retriever import Passage
from geode.runtime.serving import HostedProgram, create_app
from geode.runtime.serving.feedback import FeedbackLog
from geode.runtime.settings import Settings, TracingSettings
from geode.testing import ScriptedLM


def _outputs(messages: list[dict[str, str]]) -> list[str]:
    block = messages[0]["content"].split("Your output fields are:", 1)[1].split("All interactions", 1)[0]
    return re.findall(r"\d+\. `(\w+)`", block)


def _model(messages: list[dict[str, str]]) -> dict[str, Any]:
    """Answers any prompt from the fields it asks for: tools finish at once, the answer is 27."""
    values: dict[str, Any] = {
        "next_thought": "I can answer.",
        "next_tool_name": "finish",
        "next_tool_args": {},
        "reasoning": "From what I know.",
        "subquestions": ["How many sprockets?"],
        "answer": "27",
    }
    return {name: values.get(name, "27") for name in _outputs(messages)}


class Lookup(dspy.Module):
    """A custom module with a typed forward: look an item up, then answer."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("item, stock -> answer")

    def forward(self, item: str) -> dspy.Prediction:
        return self.answer(item=item, stock=lookup_stock(item))


class Passages:
    """A retriever for RAG: the same passage for every query."""

    def __call__(self, query: str, k: int) -> dspy.Prediction:
        return dspy.Prediction(passages=[Passage(id="p1", text="sprocket: 27 units in stock", score=1.0)][:k])


def _crystallized() -> dspy.Module:
    recorded = record_runs()
    return geode.crystallize(recorded.agent, recorded.source, options=TRUSTED).workflow()


KINDS: dict[str, tuple[Callable[[], dspy.Module], dict[str, Any], Callable[[list[dict[str, str]]], Any]]] = {
    "predict": (lambda: dspy.Predict("question -> answer"), {"question": "How many sprockets?"}, _model),
    "chain-of-thought": (
        lambda: dspy.ChainOfThought("question -> answer"),
        {"question": "How many sprockets?"},
        _model,
    ),
    "react": (
        lambda: dspy.ReAct(cast(Any, "question -> answer"), tools=[lookup_stock]),
        {"question": "How many sprockets?"},
        _model,
    ),
    "agent": (
        lambda: geode.Agent("question -> answer", tools=[lookup_stock], name="stock"),
        {"question": "How many sprockets?"},
        _model,
    ),
    "rag": (lambda: RAG(Passages()), {"question": "How many sprockets?"}, _model),
    "decompose": (lambda: DecomposeSolveCombine(), {"question": "How many sprockets?"}, _model),
    "fallback": (
        lambda: Fallback(dspy.Predict("question -> answer"), dspy.Predict("question -> answer")),
        {"question": "How many sprockets?"},
        _model,
    ),
    "crystallized-workflow": (_crystallized, {"question": "How many sprockets are in stock?"}, oracle),
    "custom": (Lookup, {"item": "sprocket"}, _model),
}


@pytest.fixture
def client_for(tmp_path: Any) -> Iterator[Callable[[dspy.Module, Any], TestClient]]:
    clients: list[TestClient] = []

    def build(module: dspy.Module, model: Any) -> TestClient:
        settings = Settings(home=tmp_path / "home", tracing=TracingSettings(enabled=False))
        rt = geode.Runtime(settings, lm=ScriptedLM(model))
        app = create_app(
            rt, [HostedProgram(module, name="kind")], feedback_sinks=[FeedbackLog(tmp_path / "fb.jsonl")]
        )
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_documented_module_kind_is_served(
    kind: str, client_for: Callable[[dspy.Module, Any], TestClient]
) -> None:
    factory, inputs, model = KINDS[kind]
    client = client_for(factory(), model)
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    request = schema["KindRequest"]
    # The request asks for exactly the program's inputs (RAG's context is retrieved, never sent).
    assert set(request["required"]) == set(inputs), request
    response = client.post("/programs/kind", json=inputs)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["answer"] == "27"
