from __future__ import annotations

import copy
import inspect
import typing
from pathlib import Path

import dspy
import numpy as np
import pytest

import geode
from geode.errors import CollectionNotFoundError, InputError, RetrievalError
from geode.retrieval import (
    DSPyEmbedder,
    Ingestor,
    Passage,
    QdrantStore,
    Retriever,
    format_passages,
    sample_corpus_dir,
)
from geode.testing import HashingEmbedder, ScriptedLM


@pytest.fixture(scope="module")
def store() -> QdrantStore:
    s = QdrantStore.memory()
    Ingestor(s, HashingEmbedder()).ingest([sample_corpus_dir()], "docs")
    return s


def test_is_exported_and_declares_its_span_kind() -> None:
    assert geode.Retriever is Retriever
    assert Retriever.geode_span_kind == "RETRIEVER"
    assert issubclass(Retriever, dspy.Module)


def test_forward_returns_passages_with_id_score_text_metadata(store: QdrantStore) -> None:
    retriever = Retriever(store, HashingEmbedder(), "docs", k=3)
    prediction = retriever(query="gift cards never expire")
    assert isinstance(prediction, dspy.Prediction)
    passages = prediction.passages
    assert len(passages) == 3
    assert all(isinstance(p, Passage) for p in passages)
    top = passages[0]
    assert top.metadata["source"].endswith("/gift-cards.md")
    assert "never expire" in top.text
    assert "text" not in top.metadata
    assert {"source", "title", "heading", "chunk_index", "chunk_count"} <= set(top.metadata)
    assert [p.score for p in passages] == sorted((p.score for p in passages), reverse=True)
    assert len({p.id for p in passages}) == 3
    assert top.to_dict()["id"] == top.id
    with pytest.raises(AttributeError):
        top.score = 1.0  # frozen


def test_k_and_filter_per_call(store: QdrantStore) -> None:
    retriever = Retriever(store, HashingEmbedder(), "docs", k=2)
    assert len(retriever(query="tent").passages) == 2
    assert len(retriever(query="tent", k=7).passages) == 7
    source = (sample_corpus_dir() / "repair.md").resolve().as_posix()
    filtered = retriever(query="tent", k=10, filter={"source": source}).passages
    assert filtered and all(p.source == source for p in filtered)


def test_bad_queries(store: QdrantStore) -> None:
    retriever = Retriever(store, HashingEmbedder(), "docs")
    with pytest.raises(InputError, match="empty"):
        retriever(query="   ")
    with pytest.raises(InputError, match="k must be at least 1"):
        retriever(query="x", k=0)
    with pytest.raises(InputError):
        Retriever(store, HashingEmbedder(), "docs", k=0)


def test_missing_collection_and_wrong_embedder(store: QdrantStore) -> None:
    with pytest.raises(CollectionNotFoundError, match="existing collections: 'docs'"):
        Retriever(store, HashingEmbedder(), "nope")(query="x")
    with pytest.raises(RetrievalError, match="holds 256-d vectors"):
        Retriever(store, HashingEmbedder(dimension=64), "docs")(query="x")


def test_deepcopy_shares_the_store(store: QdrantStore) -> None:
    retriever = Retriever(store, HashingEmbedder(), "docs")
    clone = retriever.deepcopy()
    assert clone is not retriever
    assert clone.store is store
    assert copy.deepcopy(retriever).store is store
    assert clone(query="gift card").passages[0].id == retriever(query="gift card").passages[0].id


def test_as_tool_is_a_typed_documented_function(store: QdrantStore) -> None:
    tool = Retriever(store, HashingEmbedder(), "docs", k=2).as_tool()
    assert tool.__name__ == "search"
    assert "'docs' knowledge base" in (tool.__doc__ or "")
    hints = typing.get_type_hints(tool)
    assert hints == {"query": str, "return": str}
    assert list(inspect.signature(tool).parameters) == ["query"]
    out = tool("gift cards expire")
    assert out.startswith("[1] id=") and "source=gift-cards.md" in out and "[2] id=" in out
    dspy_tool = dspy.Tool(tool)
    assert dspy_tool.name == "search" and dspy_tool.args is not None and "query" in dspy_tool.args


def test_as_tool_reports_no_results(tmp_path: Path) -> None:
    empty = QdrantStore.memory()
    empty.create_collection("empty", dimension=256, distance="cosine", embedder="hashing-256")
    tool = Retriever(empty, HashingEmbedder(), "empty").as_tool(name="lookup", description="Look things up.")
    assert tool.__name__ == "lookup" and tool.__doc__ == "Look things up."
    assert tool("anything") == "No passages found for 'anything'."


def test_format_passages_truncates_and_shows_pages() -> None:
    p = Passage(id="x", text="a" * 50, score=0.5, metadata={"source": "/d/m.pdf", "page": 3})
    assert format_passages([p], max_chars=10) == "[1] id=x source=m.pdf, page 3 score=0.500\naaaaaaaaaa [...]"


class QA(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def test_react_agent_uses_the_search_tool(store: QdrantStore) -> None:
    retriever = Retriever(store, HashingEmbedder(), "docs", k=2)
    agent = dspy.ReAct(QA, tools=[retriever.as_tool()], max_iters=3)
    lm = ScriptedLM(
        [
            {
                "next_thought": "Look it up.",
                "next_tool_name": "search",
                "next_tool_args": {"query": "gift card expiry"},
            },
            {"next_thought": "Found it.", "next_tool_name": "finish", "next_tool_args": {}},
            {"reasoning": "The passage says so.", "answer": "They never expire."},
        ]
    )
    with dspy.context(lm=lm):
        prediction = agent(question="Do gift cards expire?")
    assert prediction.answer == "They never expire."
    observation = prediction.trajectory["observation_0"]
    assert "source=gift-cards.md" in observation and "never expire" in observation
    # The passages the model saw carry the ids it can cite.
    top_id = retriever(query="gift card expiry").passages[0].id
    assert f"id={top_id}" in observation


def test_dspy_embedder_adapter() -> None:
    calls: list[list[str]] = []

    def fake_model(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.ones((len(texts), 4), dtype=np.float32)

    emb = DSPyEmbedder(dspy.Embedder(fake_model, batch_size=2), name="ones-4")
    assert (emb.name, emb.dimension, emb.distance) == ("ones-4", 4, "cosine")
    assert calls == [["dimension probe"]]
    assert emb.embed_documents(["a", "b", "c"]).shape == (3, 4)
    assert emb.embed_query("q").shape == (4,)
    assert emb.embed_documents([]).shape == (0, 4)
    assert DSPyEmbedder(dspy.Embedder("openai/text-embedding-3-small"), dimension=1536).name == (
        "openai/text-embedding-3-small"
    )
    with pytest.raises(RetrievalError, match="name this embedder"):
        DSPyEmbedder(dspy.Embedder(fake_model))


def test_dspy_embedder_errors_are_retrieval_errors() -> None:
    def broken(texts: list[str]) -> np.ndarray:
        raise ConnectionError("no route to host")

    def wrong_shape(texts: list[str]) -> np.ndarray:
        return np.ones((1, 3), dtype=np.float32)

    with pytest.raises(RetrievalError, match="embedding with 'broken' failed: ConnectionError"):
        DSPyEmbedder(dspy.Embedder(broken), name="broken").embed_query("x")
    with pytest.raises(RetrievalError, match="returned shape"):
        DSPyEmbedder(dspy.Embedder(wrong_shape), name="w", dimension=3).embed_documents(["a", "b"])
