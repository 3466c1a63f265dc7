"""Retrieval: embedders, the Qdrant-backed store, ingestion and the ``Retriever`` DSPy module.

Depends on nothing of Geode's but ``geode.errors``, and reads no settings or environment variables:
``geode.runtime.stores`` builds these objects from settings.
"""

from geode.retrieval._lock import store_engine
from geode.retrieval.base import (
    CollectionInfo,
    Distance,
    Embedder,
    Hit,
    PayloadFilter,
    Record,
    Store,
    StoredPoint,
    check_compatible,
)
from geode.retrieval.chunking import Chunker, Section
from geode.retrieval.data import sample_corpus_dir, sample_queries_path
from geode.retrieval.edge import EdgeStore, edge_available
from geode.retrieval.embedders import DSPyEmbedder, SentenceTransformerEmbedder, default_local_model_path
from geode.retrieval.ingest import Ingestor, IngestReport, point_id
from geode.retrieval.loaders import Skipped
from geode.retrieval.qdrant import QdrantStore
from geode.retrieval.retriever import Passage, Retriever, format_passages

__all__ = [
    "Chunker",
    "CollectionInfo",
    "DSPyEmbedder",
    "Distance",
    "EdgeStore",
    "Embedder",
    "Hit",
    "IngestReport",
    "Ingestor",
    "Passage",
    "PayloadFilter",
    "QdrantStore",
    "Record",
    "Retriever",
    "Section",
    "SentenceTransformerEmbedder",
    "Skipped",
    "Store",
    "StoredPoint",
    "check_compatible",
    "default_local_model_path",
    "edge_available",
    "format_passages",
    "point_id",
    "sample_corpus_dir",
    "sample_queries_path",
    "store_engine",
]
