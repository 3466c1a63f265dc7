"""Retrieval's interfaces and value types: :class:`Embedder`, :class:`Store` and what flows between them.

Everything else in ``geode.retrieval`` is written against these. Implementations are qualified
(:class:`~geode.retrieval.qdrant.QdrantStore`, :class:`~geode.retrieval.edge.EdgeStore`,
:class:`~geode.retrieval.embedders.SentenceTransformerEmbedder`); typed fakes live in ``geode.testing``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from geode.errors import CollectionNotFoundError, RetrievalError

__all__ = [
    "RESERVED_PAYLOAD_KEYS",
    "CapacityLimited",
    "CollectionInfo",
    "Distance",
    "Embedder",
    "FilterValue",
    "Hit",
    "PayloadFilter",
    "Record",
    "Store",
    "StoredPoint",
    "Vectors",
    "check_compatible",
    "check_vector_length",
    "collection_not_found",
]

Distance = Literal["cosine", "dot", "euclid"]
"""How vectors are compared; cosine for every sentence-embedding model Geode ships or builds."""

Vectors = NDArray[np.float32]
"""A 2-D ``float32`` array, one row per text."""

FilterValue = str | int | bool | Sequence[str] | Sequence[int]
"""A payload filter value: a scalar matches equal values, a list matches any of its values."""

PayloadFilter = Mapping[str, FilterValue]
"""Payload filter: every key must match (AND); e.g. ``{"source": "faq.md", "lang": ["en", "de"]}``."""

RESERVED_PAYLOAD_KEYS = frozenset(
    {"text", "source", "title", "heading", "chunk_index", "chunk_count", "content_hash"}
)
"""Payload keys Geode writes itself; user metadata may not override them."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors. Implementations must be safe to call from several threads."""

    @property
    def name(self) -> str:
        """A stable model name, recorded on collections so a mismatched embedder is caught."""
        ...

    @property
    def dimension(self) -> int:
        """Length of every vector this embedder returns."""
        ...

    @property
    def distance(self) -> Distance:
        """The distance its vectors are meant to be compared with."""
        ...

    def embed_documents(self, texts: Sequence[str]) -> Vectors:
        """Embed passages for indexing; returns one row per text."""
        ...

    def embed_query(self, text: str) -> Vectors:
        """Embed one search query; returns a 1-D vector."""
        ...


@dataclass(frozen=True)
class CollectionInfo:
    """What a store knows about one collection."""

    name: str
    dimension: int
    distance: Distance
    points: int
    embedder: str | None = None
    """The embedder the collection was built with; ``None`` if it was created outside Geode."""


@dataclass(frozen=True)
class StoredPoint:
    """One chunk to write: a stable id, its vector and its payload."""

    id: str
    """A UUID string (Qdrant accepts UUIDs and unsigned integers as point ids)."""
    vector: Sequence[float] | NDArray[np.float32]
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class Record:
    """A point read back by id, without its vector."""

    id: str
    payload: dict[str, Any] = field(default_factory=dict[str, Any])


@dataclass(frozen=True)
class Hit:
    """A search result: point id, similarity score (higher is closer) and payload."""

    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict[str, Any])


@runtime_checkable
class Store(Protocol):
    """A vector store holding named collections of points. Implementations must be thread-safe.

    Every method that names a collection raises
    :class:`~geode.errors.CollectionNotFoundError` (naming the existing ones) if it does not exist, and
    :class:`~geode.errors.StoreUnavailableError` when the store cannot be reached, is locked by another
    process, or does not answer within its timeout.
    """

    @property
    def description(self) -> str:
        """Where the data lives and which engine serves it, for messages and ``--help`` output."""
        ...

    def list_collections(self) -> list[str]:
        """Names of all collections, sorted."""
        ...

    def get_collection(self, name: str) -> CollectionInfo:
        """Dimension, distance, size and embedder of one collection."""
        ...

    def create_collection(
        self, name: str, *, dimension: int, distance: Distance, embedder: str
    ) -> CollectionInfo:
        """Create an empty collection; raises :class:`~geode.errors.RetrievalError` if it exists."""
        ...

    def delete_collection(self, name: str) -> None:
        """Delete a collection and its points."""
        ...

    def upsert(self, collection: str, points: Sequence[StoredPoint]) -> None:
        """Insert or replace points by id. Durable when it returns."""
        ...

    def retrieve(self, collection: str, ids: Sequence[str]) -> list[Record]:
        """Points with these ids (missing ids are left out), with payloads."""
        ...

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        """Delete points by id; missing ids are ignored."""
        ...

    def search(
        self,
        collection: str,
        vector: Sequence[float] | Vectors,
        *,
        k: int,
        filter: PayloadFilter | None = None,
    ) -> list[Hit]:
        """The ``k`` points closest to ``vector`` whose payload matches ``filter``, best first."""
        ...

    def count(self, collection: str) -> int:
        """Number of points in a collection."""
        ...

    def optimize(self, collection: str) -> None:
        """Build indexes after a bulk write (a no-op where the engine indexes by itself)."""
        ...

    def close(self) -> None:
        """Release files, locks and connections. Idempotent."""
        ...


def collection_not_found(name: str, existing: Sequence[str]) -> CollectionNotFoundError:
    """The error for a missing collection, naming the ones that exist."""
    if existing:
        listed = ", ".join(repr(n) for n in sorted(existing))
        return CollectionNotFoundError(
            f"collection {name!r} does not exist; existing collections: {listed}",
            hint="pass one of those with --collection, or create it with `geode ingest PATH --collection NAME`",
        )
    return CollectionNotFoundError(
        f"collection {name!r} does not exist and the store has no collections yet",
        hint="create it with `geode ingest PATH --collection NAME`",
    )


def check_vector_length(collection: str, expected: int, length: int, what: str) -> None:
    """Refuse a vector of the wrong length with a message naming the collection.

    Raises:
        RetrievalError: ``length`` differs from ``expected``.
    """
    if length != expected:
        raise RetrievalError(
            f"collection {collection!r} holds {expected}-d vectors; {what} has {length} dimensions",
            hint="use the embedder the collection was built with",
        )


def check_compatible(info: CollectionInfo, embedder: Embedder) -> None:
    """Refuse an embedder whose vectors do not fit a collection (checked before anything is written).

    Raises:
        RetrievalError: The dimension or the recorded embedder differs from ``embedder``'s.
    """
    if info.dimension != embedder.dimension:
        raise RetrievalError(
            f"collection {info.name!r} holds {info.dimension}-d vectors but embedder {embedder.name!r} "
            f"produces {embedder.dimension}-d vectors",
            hint="use the embedder the collection was built with, or ingest into a new collection",
        )
    if info.embedder is not None and info.embedder != embedder.name:
        raise RetrievalError(
            f"collection {info.name!r} was built with embedder {info.embedder!r}, not {embedder.name!r}; "
            "vectors from different models are not comparable",
            hint="set GEODE_RETRIEVAL_EMBEDDER to the collection's embedder, or ingest into a new collection",
        )


@runtime_checkable
class CapacityLimited(Protocol):
    """A store engine with a size past which it is the wrong tool (qdrant-client's local mode)."""

    def capacity_warning(self, collection: str) -> str | None:
        """A message saying what to use instead if ``collection`` is past the engine's limit, else ``None``."""
        ...
