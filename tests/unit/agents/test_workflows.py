from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
import pytest

from geode.agents import RAG, Agent, DecomposeSolveCombine, search_tool
from geode.errors import ConfigError, InputError
from geode.retrieval import QdrantStore, Retriever
from geode.retrieval.ingest import Ingestor
from geode.testing import HashingEmbedder, ScriptedLM


@dataclass(frozen=True)
class FakePassage:
    id: str
    text: str
    score: float
    metadata: Mapping[str, Any] = field(default_factory=dict)


class FakeRetriever(dspy.Module):
    """A typed fake of geode.retrieval.Retriever returning fixed passages."""

    def __init__(self, texts: list[str]) -> None:
        super().__init__()
        self.texts = texts
        self.queries: list[tuple[str, int]] = []

    def forward(self, query: str, k: int = 3) -> dspy.Prediction:
        self.queries.append((query, k))
        return dspy.Prediction(
            passages=[FakePassage(f"d{i}", t, 1.0 - i / 10) for i, t in enumerate(self.texts[:k])]
        )


def test_rag_answers_from_retrieved_passages() -> None:
    retriever = FakeRetriever(["Refunds take five days.", "Shipping is free.", "Unused"])
    rag = RAG(retriever, k=2)
    lm = ScriptedLM([{"answer": "five days"}])
    with dspy.context(lm=lm):
        pred = rag(question="How long do refunds take?")
    assert pred.answer == "five days"
    assert [p.id for p in pred.passages] == ["d0", "d1"]
    assert retriever.queries == [("How long do refunds take?", 2)]
    prompt = lm.calls[0].messages[-1]["content"]
    assert "Refunds take five days." in prompt and "Unused" not in prompt


def test_rag_with_a_text_context_and_an_explicit_query_field() -> None:
    rag = RAG(
        FakeRetriever(["A" * 50, "B"]),
        "context: str, question, tone -> answer",
        query_field="question",
        max_chars_per_passage=10,
    )
    lm = ScriptedLM([{"answer": "ok"}])
    with dspy.context(lm=lm):
        assert rag(question="q", tone="formal").answer == "ok"
    assert "AAAAAAAAAA\n\nB" in lm.calls[0].messages[-1]["content"]


def test_rag_configuration_and_input_errors() -> None:
    retriever = FakeRetriever([])
    with pytest.raises(ConfigError, match="`context` input"):
        RAG(retriever, "question -> answer")
    with pytest.raises(ConfigError, match="which input is the query"):
        RAG(retriever, "context, question, tone -> answer")
    with pytest.raises(ConfigError, match="query_field 'nope'"):
        RAG(retriever, query_field="nope")
    with pytest.raises(InputError, match="non-empty `question`"):
        RAG(retriever)(question=" ")
    with pytest.raises(InputError, match="retrieves its own context"):
        RAG(retriever)(question="q", context=["x"])


def test_rag_async() -> None:
    rag = RAG(FakeRetriever(["Shipping is free."]))

    async def go() -> dspy.Prediction:
        with dspy.context(lm=ScriptedLM([{"answer": "free"}])):
            return await rag.acall(question="Shipping cost?")

    pred = asyncio.run(go())
    assert pred.answer == "free" and len(pred.passages) == 1


def test_decompose_solve_combine() -> None:
    program = DecomposeSolveCombine(max_parts=2)
    lm = ScriptedLM(
        [
            {"subquestions": ["How many widgets?", "How many gadgets?", "Something extra?"]},
            {"answer": "3"},
            {"answer": "14"},
            {"answer": "17"},
        ]
    )
    with dspy.context(lm=lm):
        pred = program(question="How many widgets and gadgets together?")
    assert pred.answer == "17"
    assert pred.subquestions == ["How many widgets?", "How many gadgets?"]
    assert pred.subanswers == ["3", "14"]
    combine_prompt = lm.calls[-1].messages[-1]["content"]
    assert "How many gadgets?" in combine_prompt and "14" in combine_prompt


def test_decompose_falls_back_to_the_question_itself() -> None:
    lm = ScriptedLM([{"subquestions": []}, {"answer": "4"}, {"answer": "4"}])
    with dspy.context(lm=lm):
        pred = DecomposeSolveCombine()(question="2+2?")
    assert pred.subquestions == ["2+2?"]


def test_an_agent_can_solve_the_parts() -> None:
    def lookup(item: str) -> int:
        """Units in stock."""
        return {"widget": 3, "gadget": 14}[item]

    program = DecomposeSolveCombine(Agent("question -> answer", tools=[lookup]))
    lm = ScriptedLM(
        [
            {"subquestions": ["How many widgets?"]},
            {"next_thought": "t", "next_tool_name": "lookup", "next_tool_args": {"item": "widget"}},
            {"next_thought": "t", "next_tool_name": "finish", "next_tool_args": {}},
            {"reasoning": "r", "answer": "3"},
            {"answer": "3 widgets"},
        ]
    )
    with dspy.context(lm=lm):
        pred = program(question="Widgets?")
    assert pred.subanswers == ["3"] and pred.answer == "3 widgets"


def test_decompose_async_and_config() -> None:
    async def go() -> dspy.Prediction:
        with dspy.context(lm=ScriptedLM([{"subquestions": ["a?"]}, {"answer": "1"}, {"answer": "1"}])):
            return await DecomposeSolveCombine().acall(question="a?")

    assert asyncio.run(go()).answer == "1"
    with pytest.raises(ConfigError, match="max_parts"):
        DecomposeSolveCombine(max_parts=0)


def test_search_tool_and_rag_work_with_the_real_retriever(tmp_path: Path) -> None:
    (tmp_path / "faq.md").write_text("# Refunds\n\nRefunds are issued within 14 days of a return.\n")
    store, embedder = QdrantStore.memory(), HashingEmbedder(dimension=64)
    Ingestor(store, embedder).ingest([tmp_path / "faq.md"], "docs")
    retriever = Retriever(store, embedder, collection="docs")

    assert "Refunds are issued within 14 days" in search_tool(retriever, k=1)(query="refund days")
    lm = ScriptedLM([{"answer": "14 days"}])
    with dspy.context(lm=lm):
        pred = RAG(retriever, k=1)(question="How fast are refunds?")
    assert pred.answer == "14 days" and "14 days of a return" in pred.passages[0].text
