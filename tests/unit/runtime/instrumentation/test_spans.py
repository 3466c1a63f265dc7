"""What each DSPy call becomes: span kinds, tree shape and the attributes Phoenix renders."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

import dspy
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import StatusCode
from tests.unit.runtime.instrumentation.conftest import Traced

from geode.traces.context import RunIdentity, run_identity

QA: Any = "question -> answer"  # dspy.ReAct's annotation says type[Signature]; it takes strings too


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def broken_tool(city: str) -> str:
    """Always fails."""
    raise RuntimeError(f"weather service down for {city}")


def test_predict_is_a_chain_span_with_an_llm_child(traced: Traced) -> None:
    lm = traced.lm([{"answer": "Paris"}])
    with dspy.context(lm=lm):
        dspy.Predict("question -> answer")(question="Capital of France?")

    assert traced.shape() == [("Predict", "CHAIN", [("scripted", "LLM")])]
    chain = _attrs(traced.one("Predict"))
    assert json.loads(chain["input.value"]) == {"question": "Capital of France?"}
    assert chain["input.mime_type"] == "application/json"
    assert json.loads(chain["output.value"]) == {"answer": "Paris"}
    assert chain["geode.signature"] == "question -> answer"
    assert chain["geode.module.class"] == "Predict"
    assert chain["geode.predictor.name"] == "self"
    assert chain["geode.program.name"] == "Predict"
    assert traced.one("Predict").status.status_code is StatusCode.OK


def test_llm_span_carries_model_messages_parameters_and_token_counts(traced: Traced) -> None:
    lm = traced.lm([{"answer": "Paris"}])
    with dspy.context(lm=lm):
        dspy.Predict("question -> answer")(question="Capital of France?")

    llm = _attrs(traced.one("scripted"))
    call = lm.calls[0]
    assert llm["openinference.span.kind"] == "LLM"
    assert llm["llm.model_name"] == "scripted"
    assert json.loads(llm["llm.invocation_parameters"])["max_tokens"] == lm.kwargs["max_tokens"]
    assert llm["llm.input_messages.0.message.role"] == "system"
    assert llm["llm.input_messages.1.message.role"] == "user"
    assert "Capital of France?" in llm["llm.input_messages.1.message.content"]
    assert llm["llm.output_messages.0.message.role"] == "assistant"
    assert "Paris" in llm["llm.output_messages.0.message.content"]
    assert llm["output.value"] == llm["llm.output_messages.0.message.content"]
    assert llm["llm.token_count.prompt"] == call.prompt_tokens
    assert llm["llm.token_count.completion"] == call.completion_tokens
    assert llm["llm.token_count.total"] == call.prompt_tokens + call.completion_tokens
    assert llm["geode.llm.cache_hit"] is False
    assert llm["geode.predictor.name"] == "self"


def test_provider_comes_from_the_model_prefix(traced: Traced) -> None:
    lm = traced.lm([{"answer": "x"}])
    lm.model = "openai/gpt-4o-mini"
    with dspy.context(lm=lm):
        dspy.Predict("question -> answer")(question="q")
    llm = _attrs(traced.of_kind("LLM")[0])
    assert llm["llm.provider"] == "openai"
    assert llm["llm.model_name"] == "openai/gpt-4o-mini"


def test_cache_hit_is_flagged_and_spends_no_tokens(traced: Traced) -> None:
    lm = traced.lm(lambda messages: {"answer": "Paris"})
    lm._cache_responses = True  # DummyLM opts out of DSPy's cache; this test needs it
    question = f"Capital of France? {uuid.uuid4()}"
    with dspy.context(lm=lm):
        dspy.Predict("question -> answer")(question=question)
        dspy.Predict("question -> answer")(question=question)

    assert len(lm.calls) == 1, "the second call should have been answered from DSPy's cache"
    first, second = sorted(traced.of_kind("LLM"), key=lambda s: s.start_time or 0)
    assert _attrs(first)["geode.llm.cache_hit"] is False
    assert _attrs(first)["llm.token_count.total"] > 0
    assert _attrs(second)["geode.llm.cache_hit"] is True
    assert "llm.token_count.total" not in _attrs(second)
    assert "Paris" in _attrs(second)["output.value"]


def test_one_llm_span_per_call_and_client_instrumentations_are_suppressed(traced: Traced) -> None:
    seen: list[tuple[object, str | None]] = []

    def answer(messages: list[dict[str, str]]) -> dict[str, str]:
        # What an LM client instrumentation (litellm, openai) would see inside the LM call.
        current = trace.get_current_span()
        seen.append((otel_context.get_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY), current.name))  # pyright: ignore[reportAttributeAccessIssue]
        return {"answer": "4"}

    with dspy.context(lm=traced.lm(answer)):
        dspy.Predict("question -> answer")(question="2+2?")
    assert seen == [(True, "scripted")]
    assert len(traced.of_kind("LLM")) == 1


def test_chain_of_thought_nests_its_predictor(traced: Traced) -> None:
    with dspy.context(lm=traced.lm([{"reasoning": "because", "answer": "4"}])):
        dspy.ChainOfThought("question -> answer")(question="2+2?")
    assert traced.shape() == [("ChainOfThought", "CHAIN", [("predict", "CHAIN", [("scripted", "LLM")])])]
    assert _attrs(traced.one("predict"))["geode.predictor.name"] == "predict"
    assert _attrs(traced.one("scripted"))["geode.predictor.name"] == "predict"
    assert "geode.predictor.name" not in _attrs(traced.one("ChainOfThought"))


def _react_script() -> list[dict[str, Any]]:
    return [
        {"next_thought": "Look it up.", "next_tool_name": "get_weather", "next_tool_args": {"city": "Paris"}},
        {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}},
        {"reasoning": "The tool said so.", "answer": "sunny"},
    ]


def test_react_is_an_agent_with_iterations_and_no_finish_span(traced: Traced) -> None:
    agent = dspy.ReAct(QA, tools=[get_weather], max_iters=5)
    with dspy.context(lm=traced.lm(_react_script())):
        assert agent(question="Weather in Paris?").answer == "sunny"

    assert traced.shape() == [
        (
            "ReAct",
            "AGENT",
            [
                (
                    "iteration 1",
                    "CHAIN",
                    [("react", "CHAIN", [("scripted", "LLM")]), ("get_weather", "TOOL")],
                ),
                ("iteration 2", "CHAIN", [("react", "CHAIN", [("scripted", "LLM")])]),
                ("extract", "CHAIN", [("extract.predict", "CHAIN", [("scripted", "LLM")])]),
            ],
        )
    ]
    assert not traced.named("finish")
    root = _attrs(traced.one("ReAct"))
    assert root["agent.name"] == "ReAct"
    assert root["geode.agent.termination"] == "finish"
    assert root["geode.agent.iterations"] == 2
    assert _attrs(traced.one("iteration 2"))["geode.agent.iteration"] == 2
    assert _attrs(traced.one("extract.predict"))["geode.predictor.name"] == "extract.predict"


def test_tool_span_carries_name_description_parameters_and_io(traced: Traced) -> None:
    agent = dspy.ReAct(QA, tools=[get_weather], max_iters=5)
    with dspy.context(lm=traced.lm(_react_script())):
        agent(question="Weather in Paris?")

    tool = _attrs(traced.one("get_weather"))
    assert tool["openinference.span.kind"] == "TOOL"
    assert tool["tool.name"] == "get_weather"
    assert tool["tool.description"] == "The weather in a city."
    assert json.loads(tool["tool.parameters"]) == {
        "type": "object",
        "properties": {"city": {"type": "string"}},
    }
    assert json.loads(tool["input.value"]) == {"city": "Paris"}
    assert tool["output.value"] == "sunny in Paris"
    assert tool["geode.predictor.name"] == "react"


def test_react_that_runs_out_of_iterations_says_so(traced: Traced) -> None:
    step = {"next_thought": "Again.", "next_tool_name": "get_weather", "next_tool_args": {"city": "Oslo"}}
    agent = dspy.ReAct(QA, tools=[get_weather], max_iters=2)
    with dspy.context(lm=traced.lm([step, step, {"reasoning": "r", "answer": "cold"}])):
        agent(question="Weather?")
    root = _attrs(traced.one("ReAct"))
    assert root["geode.agent.termination"] == "max_iters"
    assert root["geode.agent.iterations"] == 2
    assert len(traced.named("get_weather")) == 2


def test_failing_tool_span_records_the_error(traced: Traced) -> None:
    script = [
        {"next_thought": "Try.", "next_tool_name": "broken_tool", "next_tool_args": {"city": "Rome"}},
        {"next_thought": "Give up.", "next_tool_name": "finish", "next_tool_args": {}},
        {"reasoning": "r", "answer": "unknown"},
    ]
    agent = dspy.ReAct(QA, tools=[broken_tool], max_iters=3)
    with dspy.context(lm=traced.lm(script)):
        assert agent(question="Weather?").answer == "unknown"

    span = traced.one("broken_tool")
    assert span.status.status_code is StatusCode.ERROR
    assert "weather service down for Rome" in (span.status.description or "")
    (event,) = [e for e in span.events if e.name == "exception"]
    assert (event.attributes or {})["exception.type"] == "RuntimeError"
    assert _attrs(span)["geode.tool.error"] is True
    # The agent handled the error: its own span is fine.
    assert traced.one("ReAct").status.status_code is StatusCode.OK


def test_lm_error_marks_llm_and_module_spans_and_still_raises(traced: Traced) -> None:
    with dspy.context(lm=traced.lm([])), pytest.raises(Exception, match="script ran out"):
        dspy.Predict("question -> answer")(question="q")
    llm = traced.one("scripted")
    chain = traced.one("Predict")
    assert llm.status.status_code is StatusCode.ERROR
    assert chain.status.status_code is StatusCode.ERROR
    assert [e.name for e in llm.events] == ["exception"]
    assert llm.parent is not None and chain.context is not None
    assert llm.parent.span_id == chain.context.span_id


@dataclass
class Passage:
    id: str
    text: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict[str, Any])


class FakeRetriever(dspy.Module):
    """Duck-types Geode's retriever: a RETRIEVER module returning passages."""

    geode_span_kind: ClassVar[str] = "RETRIEVER"

    def forward(self, query: str, k: int = 2) -> dspy.Prediction:
        passages = [
            Passage("doc-1", f"about {query}", 0.9, {"source": "a.md"}),
            Passage("doc-2", "something else", 0.4),
        ]
        return dspy.Prediction(passages=passages[:k])


class Rag(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.retrieve = FakeRetriever()
        self.answer = dspy.Predict("context, question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        passages = self.retrieve(query=question, k=2).passages
        return self.answer(context=[p.text for p in passages], question=question)


def test_retriever_module_is_a_retriever_span_with_documents(traced: Traced) -> None:
    with dspy.context(lm=traced.lm([{"answer": "42"}])):
        Rag()(question="the answer")

    assert traced.shape() == [
        ("Rag", "CHAIN", [("retrieve", "RETRIEVER"), ("answer", "CHAIN", [("scripted", "LLM")])])
    ]
    span = _attrs(traced.one("retrieve"))
    assert span["input.value"] == "the answer"
    assert span["input.mime_type"] == "text/plain"
    assert span["retrieval.documents.0.document.id"] == "doc-1"
    assert span["retrieval.documents.0.document.content"] == "about the answer"
    assert span["retrieval.documents.0.document.score"] == pytest.approx(0.9)
    assert json.loads(span["retrieval.documents.0.document.metadata"]) == {"source": "a.md"}
    assert span["retrieval.documents.1.document.id"] == "doc-2"
    assert "retrieval.documents.1.document.metadata" not in span
    assert "retrieval.documents.2.document.id" not in span


def test_dspy_retrieve_subclass_is_a_retriever_span(traced: Traced) -> None:
    class ListRetrieve(dspy.Retrieve):
        def forward(self, query: str, k: int | None = None, **kwargs: Any) -> dspy.Prediction:
            return dspy.Prediction(passages=["first passage", "second passage"])

    ListRetrieve(k=2)(query="q")
    span = _attrs(traced.one("ListRetrieve"))
    assert span["openinference.span.kind"] == "RETRIEVER"
    assert span["retrieval.documents.1.document.content"] == "second passage"


class Named(dspy.Module):
    """Uses every hook a Geode module may define."""

    geode_span_kind: ClassVar[str] = "AGENT"

    def __init__(self) -> None:
        super().__init__()
        self.name = "helper"
        self.step = dspy.Predict("question -> answer")

    def geode_span_name(self, inputs: dict[str, Any]) -> str:
        return f"helper for {inputs['question']}"

    def geode_span_attributes(self, inputs: dict[str, Any], outputs: Any) -> dict[str, Any]:
        return {"geode.agent.termination": "finish", "geode.fallback.choice": outputs.answer}

    def forward(self, question: str) -> dspy.Prediction:
        return self.step(question=question)


def test_module_hooks_choose_kind_name_and_extra_attributes(traced: Traced) -> None:
    with dspy.context(lm=traced.lm([{"answer": "primary"}])):
        Named()(question="x")
    span = traced.one("helper for x")
    assert _attrs(span)["openinference.span.kind"] == "AGENT"
    assert _attrs(span)["agent.name"] == "helper"
    assert _attrs(span)["geode.agent.termination"] == "finish"
    assert _attrs(span)["geode.fallback.choice"] == "primary"


def test_run_identity_is_stamped_on_every_span(traced: Traced) -> None:
    identity = RunIdentity(
        program="examples:weather",
        version="abc123",
        session_id="session-1",
        user_id="user-7",
        metadata={"tenant": "acme"},
        tags=("beta", "eu"),
        kind="agent",
    )
    agent = dspy.ReAct(QA, tools=[get_weather], max_iters=5)
    with run_identity(identity), dspy.context(lm=traced.lm(_react_script())):
        agent(question="Weather in Paris?")

    assert len(traced.spans) == 11  # agent, 2 iterations (step + LLM each), tool, extract (+ predictor, LLM)
    for span in traced.spans:
        a = _attrs(span)
        assert a["geode.program.name"] == "examples:weather", span.name
        assert a["geode.program.version"] == "abc123", span.name
        assert a["geode.program.kind"] == "agent", span.name
        assert a["session.id"] == "session-1", span.name
        assert a["user.id"] == "user-7", span.name
        assert json.loads(a["metadata"]) == {"tenant": "acme"}, span.name
        assert a["tag.tags"] == ("beta", "eu"), span.name


def test_geode_agent_iterations_come_from_its_own_modules(traced: Traced) -> None:
    from geode.agents import Agent

    def lookup_stock(item: str) -> int:
        """Units of an item in stock."""
        return {"widget": 3}[item]

    agent = Agent("question -> answer", tools=[lookup_stock], name="stock-agent")
    script = [
        {
            "next_thought": "Look it up.",
            "next_tool_name": "lookup_stock",
            "next_tool_args": {"item": "widget"},
        },
        {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}},
        {"reasoning": "The tool said 3.", "answer": "3"},
    ]
    with dspy.context(lm=traced.lm(script)):
        assert agent(question="How many widgets?").answer == "3"

    (root,) = traced.tree()
    assert (root["name"], root["kind"]) == ("stock-agent", "AGENT")
    children = [(c["name"], c["kind"]) for c in root["children"]]
    assert children[:2] == [("iteration 1", "CHAIN"), ("iteration 2", "CHAIN")]
    first = root["children"][0]
    assert [(c["name"], c["kind"]) for c in first["children"]] == [
        ("react", "CHAIN"),
        ("lookup_stock", "TOOL"),
    ]
    assert _attrs(traced.one("stock-agent"))["geode.agent.termination"] == "finish"
    assert not traced.named("finish")
    assert len(traced.trace_ids()) == 1


def test_geode_retriever_span_carries_ids_scores_and_metadata(traced: Traced) -> None:
    from geode.retrieval import Ingestor, QdrantStore, Retriever, sample_corpus_dir
    from geode.testing import HashingEmbedder

    store = QdrantStore.memory()
    try:
        Ingestor(store, HashingEmbedder()).ingest([sample_corpus_dir()], "docs")
        traced.exporter.clear()
        passages = Retriever(store, HashingEmbedder(), "docs", k=3)(query="gift cards").passages
    finally:
        store.close()

    (span,) = traced.of_kind("RETRIEVER")
    a = _attrs(span)
    assert a["input.value"] == "gift cards"
    for i, passage in enumerate(passages):
        assert a[f"retrieval.documents.{i}.document.id"] == passage.id
        assert a[f"retrieval.documents.{i}.document.content"] == passage.text
        assert a[f"retrieval.documents.{i}.document.score"] == pytest.approx(passage.score)
        assert json.loads(a[f"retrieval.documents.{i}.document.metadata"])["source"] == passage.source
    assert f"retrieval.documents.{len(passages)}.document.id" not in a
