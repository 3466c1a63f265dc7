"""Composition: runtime/stores.py builds the right Store and Embedder from settings; Runtime wires them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from geode.errors import ConfigError
from geode.retrieval import DSPyEmbedder, EdgeStore, QdrantStore, Retriever, SentenceTransformerEmbedder
from geode.runtime import stores
from geode.runtime.runtime import Runtime
from geode.runtime.settings import RetrievalSettings, Settings
from geode.testing import HashingEmbedder


def settings(home: Path, **retrieval: object) -> Settings:
    return Settings(home=home, retrieval=RetrievalSettings.model_validate(retrieval))


def test_default_embedded_store_is_edge_in_the_home_folder(tmp_path: Path) -> None:
    s = settings(tmp_path)
    store = stores.build_store(s)
    try:
        assert isinstance(store, EdgeStore)
        assert store.root == s.qdrant_path == tmp_path / "qdrant"
    finally:
        store.close()


def test_auto_keeps_the_engine_that_wrote_the_store(tmp_path: Path) -> None:
    store = stores.build_store(settings(tmp_path, engine="qdrant-local"))
    assert isinstance(store, QdrantStore)
    store.close()
    assert stores.embedded_engine(RetrievalSettings(engine="auto"), tmp_path / "qdrant") == "qdrant-local"
    again = stores.build_store(settings(tmp_path))
    try:
        assert isinstance(again, QdrantStore)
    finally:
        again.close()


def test_edge_requested_but_missing_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stores, "edge_available", lambda: False)
    with pytest.raises(ConfigError, match="pip install 'geode\\[edge\\]'"):
        stores.build_store(settings(tmp_path, engine="edge"))
    assert stores.embedded_engine(RetrievalSettings(engine="auto"), tmp_path / "fresh") == "qdrant-local"


def test_url_selects_the_server_path(tmp_path: Path) -> None:
    store = stores.build_store(
        settings(tmp_path, qdrant_url="https://127.0.0.1:6333", qdrant_api_key="k", timeout_s=2)
    )
    try:
        assert isinstance(store, QdrantStore)
        assert store.description == "Qdrant server at https://127.0.0.1:6333"
    finally:
        store.close()
    assert not (tmp_path / "qdrant").exists()


def test_local_embedder_is_offline_and_lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    embedder = stores.build_embedder(RetrievalSettings(embedder="local"))
    assert isinstance(embedder, SentenceTransformerEmbedder)
    assert embedder.local_files_only and embedder._model is None
    assert embedder.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_other_embedders_go_through_dspy() -> None:
    embedder = stores.build_embedder(RetrievalSettings(embedder="openai/text-embedding-3-small"))
    assert isinstance(embedder, DSPyEmbedder)
    assert embedder.name == "openai/text-embedding-3-small"


def test_runtime_builds_store_and_retriever_and_closes_the_store(tmp_path: Path) -> None:
    s = settings(tmp_path, collection="kb")
    rt = Runtime(s, embedder=HashingEmbedder())
    store = rt.store
    assert rt.store is store
    retriever = rt.retriever(k=3)
    assert isinstance(retriever, Retriever)
    assert (retriever.collection, retriever.k, retriever.store) == ("kb", 3, store)
    assert rt.retriever("other").collection == "other"
    rt.close()
    # The folder lock is released: another store can open it now.
    EdgeStore(s.qdrant_path).close()


def test_runtime_does_not_close_an_injected_store() -> None:
    store = QdrantStore.memory()
    with Runtime(Settings(), store=store, embedder=HashingEmbedder()) as rt:
        assert rt.store is store
    assert store.list_collections() == []  # still open


def test_open_retriever_builds_from_settings_and_loads_the_embedder_at_once(tmp_path: Path) -> None:
    # The documented way to put retrieval in a program file that `geode run`/`serve` load.
    import geode
    from geode.retrieval import Ingestor, sample_corpus_dir

    s = settings(tmp_path)
    with Runtime(s) as rt:
        Ingestor(rt.store, rt.embedder).ingest([sample_corpus_dir()], "help")
    retriever = geode.open_retriever("help", k=2, settings=s)
    embedder = retriever.embedder
    assert isinstance(embedder, SentenceTransformerEmbedder)
    # Loaded when the program loads, not inside the first search (a tool timeout would count it).
    assert embedder._model is not None
    passages = retriever(query="Can I take stove fuel on a plane?").passages
    assert len(passages) == 2 and (passages[0].source or "").endswith("stove-safety.md")
    # One store and embedder per process and settings: a second retriever shares them.
    again = geode.open_retriever("help", settings=s)
    assert again.store is retriever.store and again.embedder is embedder and again.k == 5
