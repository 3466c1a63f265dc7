"""``QdrantStore``: the :class:`~geode.retrieval.base.Store` on ``qdrant-client``.

One code path for three places the data can live: a Qdrant server or cluster (by URL, with an API key and a
timeout), qdrant-client's embedded local mode on disk, and ``:memory:`` for tests. Local mode is pure Python
with brute-force search (fine to a few thousand chunks); the default embedded engine is
:class:`~geode.retrieval.edge.EdgeStore` when ``qdrant-edge-py`` is installed.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Generator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from geode.errors import GeodeError, RetrievalError, StoreUnavailableError
from geode.retrieval._breaker import CircuitBreaker
from geode.retrieval._lock import StoreLock, check_or_write_marker
from geode.retrieval.base import (
    CollectionInfo,
    Distance,
    Hit,
    PayloadFilter,
    Record,
    StoredPoint,
    Vectors,
    check_vector_length,
    collection_not_found,
)

__all__ = ["QdrantStore", "check_collection_name", "to_qdrant_filter"]

_DISTANCES: dict[Distance, models.Distance] = {
    "cosine": models.Distance.COSINE,
    "dot": models.Distance.DOT,
    "euclid": models.Distance.EUCLID,
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ENGINE = "qdrant-local"
LOCAL_MODE_POINTS = 20_000
"""qdrant-client's ``LocalCollection.LARGE_DATA_THRESHOLD``: past it, local mode's brute-force search in
Python is the wrong tool (qdrant-client itself only warns, in words Geode's users cannot act on)."""

_log = logging.getLogger(__name__)


def check_collection_name(name: str) -> str:
    """Return ``name`` if it is a valid collection name (letters, digits, ``_ . -``; it names a folder).

    Raises:
        RetrievalError: The name is empty, too long or has other characters.
    """
    if not _NAME.match(name) or name in {".", ".."}:
        raise RetrievalError(
            f"invalid collection name {name!r}",
            hint="use 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit",
        )
    return name


def to_qdrant_filter(filter: PayloadFilter | None) -> models.Filter | None:
    """Translate Geode's payload filter (AND of equality / any-of conditions) to a Qdrant filter."""
    if not filter:
        return None
    must: list[models.Condition] = []
    for key, value in filter.items():
        if isinstance(value, str | int | bool):
            must.append(models.FieldCondition(key=key, match=models.MatchValue(value=value)))
        else:
            must.append(models.FieldCondition(key=key, match=models.MatchAny(any=list(value))))  # type: ignore[arg-type]
    return models.Filter(must=must)


def _as_list(vector: Sequence[float] | Vectors) -> list[float]:
    if isinstance(vector, np.ndarray):
        return cast(list[float], vector.astype(np.float32, copy=False).tolist())
    return [float(x) for x in vector]


class QdrantStore:
    """A :class:`~geode.retrieval.base.Store` backed by a ``QdrantClient``.

    Build one with :meth:`memory`, :meth:`local` or :meth:`remote`.

    Args:
        client: The client to use; the store closes it.
        description: Where the data lives, for messages.
        remote: Whether ``client`` talks to a server (errors are then translated to
            :class:`~geode.errors.StoreUnavailableError`).
        lock: An inter-process lock to release on :meth:`close`.
        timeout_s: The client's request timeout, for messages.
        breaker: Fails calls fast while the server is presumed down (only used with ``remote``).

    Example:
        >>> from geode.retrieval import QdrantStore, StoredPoint
        >>> store = QdrantStore.memory()
        >>> _ = store.create_collection("docs", dimension=2, distance="cosine", embedder="demo")
        >>> store.upsert("docs", [StoredPoint("00000000-0000-0000-0000-000000000001", [1.0, 0.0], {"text": "hi"})])
        >>> store.search("docs", [1.0, 0.1], k=1)[0].payload["text"]
        'hi'
    """

    def __init__(
        self,
        client: QdrantClient,
        *,
        description: str,
        remote: bool = False,
        lock: StoreLock | None = None,
        timeout_s: float | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._client = client
        self._breaker = breaker if remote else None
        self._timeout_s = timeout_s
        self._description = description
        self._remote = remote
        self._lock = lock
        self._closed = False
        self._dimensions: dict[str, int] = {}
        self._warned: set[str] = set()
        # Local mode keeps Python dicts and a SQLite connection: serialise access. A server needs no lock.
        self._mutex: AbstractContextManager[Any] = nullcontext() if remote else threading.RLock()

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def memory(cls) -> QdrantStore:
        """An in-process store that lives as long as the object (for tests and throwaway work)."""
        return cls(QdrantClient(location=":memory:"), description="in-memory qdrant-client store")

    @classmethod
    def local(cls, path: str | Path) -> QdrantStore:
        """qdrant-client's embedded local mode on disk at ``path`` (one process at a time).

        Raises:
            StoreUnavailableError: Another process has the folder open.
            RetrievalError: The folder holds data Geode did not write.
        """
        folder = Path(path)
        lock = StoreLock(folder)
        try:
            check_or_write_marker(folder, ENGINE)
            client = QdrantClient(path=str(folder), force_disable_check_same_thread=True)
        except RuntimeError as err:
            lock.release()
            raise StoreUnavailableError(f"cannot open the embedded store at {folder}: {err}") from err
        except BaseException:
            lock.release()
            raise
        return cls(client, description=f"embedded qdrant-client store at {folder}", lock=lock)

    @classmethod
    def remote(
        cls,
        url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        breaker_failures: int = 3,
        breaker_cooldown_s: float = 10.0,
    ) -> QdrantStore:
        """A Qdrant server or cluster at ``url``; every request fails within ``timeout_s`` if it does not answer.

        After ``breaker_failures`` consecutive unreachable/timed-out requests, calls fail at once for
        ``breaker_cooldown_s`` (a circuit breaker; ``0`` failures disables it), then one probe is let through.
        """
        # qdrant-client types `timeout` as int but hands it to httpx, which takes seconds as a float.
        timeout: Any = float(timeout_s)
        client = QdrantClient(url=url, api_key=api_key, timeout=timeout, check_compatibility=False)
        breaker = CircuitBreaker(failures=breaker_failures, cooldown_s=breaker_cooldown_s)
        return cls(
            client, description=f"Qdrant server at {url}", remote=True, timeout_s=timeout_s, breaker=breaker
        )

    # -- Store -------------------------------------------------------------------------------------

    @property
    def description(self) -> str:
        """Where the data lives and which engine serves it."""
        return self._description

    @property
    def client(self) -> QdrantClient:
        """The underlying ``QdrantClient`` (for benchmarks and advanced use)."""
        return self._client

    @contextmanager
    def _call(self, collection: str | None = None) -> Generator[None, None, None]:
        if self._closed:
            raise StoreUnavailableError(f"the store ({self._description}) is closed")
        breaker = self._breaker
        if breaker is not None:
            breaker.before(self._description)  # fails fast, off the network, while the server is down
        # Only "unreachable" and "did not answer" count against the server: any answer (a refused key,
        # a 404) shows it is up. Every exit records one or the other, so a half-open probe always ends.
        reached = True
        try:
            with self._mutex:
                try:
                    yield
                except GeodeError:
                    raise
                except UnexpectedResponse as err:
                    if err.status_code == 404 and collection is not None:
                        raise collection_not_found(collection, self._names()) from None
                    if err.status_code in (401, 403):
                        raise StoreUnavailableError(
                            f"{self._description} refused the request (HTTP {err.status_code})",
                            hint="check GEODE_RETRIEVAL_QDRANT_API_KEY",
                        ) from None
                    raise RetrievalError(
                        f"{self._description} answered HTTP {err.status_code}: {err.content!r}"
                    ) from err
                except (ResponseHandlingException, OSError) as err:
                    reached = False
                    source = err.source if isinstance(err, ResponseHandlingException) else err
                    if isinstance(source, httpx.TimeoutException | TimeoutError):
                        what = f"did not answer within {self._timeout_s:g} s"
                    else:
                        what = f"is unreachable ({source})"
                    raise StoreUnavailableError(
                        f"{self._description} {what}",
                        hint="check that the server is up, GEODE_RETRIEVAL_QDRANT_URL, and GEODE_RETRIEVAL_TIMEOUT_S",
                    ) from None
                except ValueError as err:
                    # Local mode signals a missing collection with ValueError("Collection ... not found").
                    if collection is not None and "not found" in str(err):
                        raise collection_not_found(collection, self._names()) from None
                    raise RetrievalError(f"{self._description}: {err}") from err
        finally:
            if breaker is not None:
                if reached:
                    breaker.success()
                else:
                    breaker.failure()

    def _names(self) -> list[str]:
        return sorted(c.name for c in self._client.get_collections().collections)

    def _dimension(self, collection: str) -> int:
        dimension = self._dimensions.get(collection)
        if dimension is None:
            dimension = self._dimensions[collection] = self.get_collection(collection).dimension
        return dimension

    def list_collections(self) -> list[str]:
        """Names of all collections, sorted."""
        with self._call():
            return self._names()

    def get_collection(self, name: str) -> CollectionInfo:
        """Dimension, distance, size and embedder of one collection."""
        with self._call(name):
            info = self._client.get_collection(name)
        params = info.config.params.vectors
        if not isinstance(params, models.VectorParams):
            raise RetrievalError(
                f"collection {name!r} uses named vectors, which Geode does not read",
                hint="ingest into a collection Geode created",
            )
        distance: Distance | None = next((d for d, q in _DISTANCES.items() if q == params.distance), None)
        if distance is None:
            raise RetrievalError(
                f"collection {name!r} uses distance {params.distance}, which Geode does not use"
            )
        # qdrant's Payload is an untyped dict; Geode's part of it is whatever a past version wrote.
        raw = cast(object, info.config.metadata or {})
        metadata = cast("dict[str, object]", raw) if isinstance(raw, dict) else {}
        geode_meta = metadata.get("geode")
        embedder = (
            cast("dict[str, Any]", geode_meta).get("embedder") if isinstance(geode_meta, dict) else None
        )
        return CollectionInfo(
            name=name,
            dimension=params.size,
            distance=distance,
            points=info.points_count or 0,
            embedder=embedder if isinstance(embedder, str) else None,
        )

    def create_collection(
        self, name: str, *, dimension: int, distance: Distance, embedder: str
    ) -> CollectionInfo:
        """Create an empty collection recording its embedder in the collection's metadata."""
        check_collection_name(name)
        with self._call():
            if self._client.collection_exists(name):
                raise RetrievalError(f"collection {name!r} already exists")
            self._client.create_collection(
                name,
                vectors_config=models.VectorParams(size=dimension, distance=_DISTANCES[distance]),
                metadata={"geode": {"embedder": embedder, "format": 1}},
            )
        return CollectionInfo(name=name, dimension=dimension, distance=distance, points=0, embedder=embedder)

    def delete_collection(self, name: str) -> None:
        """Delete a collection and its points."""
        self._dimensions.pop(name, None)
        with self._call(name):
            if not self._client.delete_collection(name) and not self._remote:
                raise collection_not_found(name, self._names())

    def upsert(self, collection: str, points: Sequence[StoredPoint]) -> None:
        """Insert or replace points by id, waiting until the write is applied."""
        if not points:
            return
        expected = self._dimension(collection)
        for p in points:
            check_vector_length(collection, expected, len(p.vector), f"point {p.id}")
        batch = models.Batch(
            ids=[p.id for p in points],
            vectors=[_as_list(p.vector) for p in points],
            payloads=[dict(p.payload) for p in points],
        )
        with self._call(collection):
            self._client.upsert(collection, points=batch, wait=True)
        if not self._remote and collection not in self._warned:
            warning = self.capacity_warning(collection)
            if warning is not None:
                self._warned.add(collection)  # once per collection, not once per write
                _log.warning("%s", warning)

    def retrieve(self, collection: str, ids: Sequence[str]) -> list[Record]:
        """Points with these ids (missing ids are left out), with payloads."""
        if not ids:
            return []
        with self._call(collection):
            found = self._client.retrieve(collection, ids=list(ids), with_payload=True, with_vectors=False)
        return [Record(id=str(r.id), payload=dict(r.payload or {})) for r in found]

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        """Delete points by id; missing ids are ignored."""
        if not ids:
            return
        with self._call(collection):
            self._client.delete(collection, points_selector=models.PointIdsList(points=list(ids)), wait=True)

    def search(
        self,
        collection: str,
        vector: Sequence[float] | Vectors,
        *,
        k: int,
        filter: PayloadFilter | None = None,
    ) -> list[Hit]:
        """The ``k`` points closest to ``vector`` whose payload matches ``filter``, best first."""
        query = _as_list(vector)
        check_vector_length(collection, self._dimension(collection), len(query), "the query vector")
        with self._call(collection):
            response = self._client.query_points(
                collection, query=query, limit=k, query_filter=to_qdrant_filter(filter), with_payload=True
            )
        return [
            Hit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in response.points
        ]

    def capacity_warning(self, collection: str) -> str | None:
        """Say so if an embedded (local-mode) collection holds more than 20,000 points; ``None`` otherwise.

        A server has no such limit, so this is always ``None`` for :meth:`remote` stores.
        """
        if self._remote:
            return None
        points = self.count(collection)
        if points <= LOCAL_MODE_POINTS:
            return None
        return (
            f"collection {collection!r} holds {points:,} points in qdrant-client's embedded local mode "
            f"({self._description}), past the {LOCAL_MODE_POINTS:,} it is meant for: every search scans "
            "every point in Python. Use a Qdrant server (set GEODE_RETRIEVAL_QDRANT_URL and ingest again), "
            "or a new store on the qdrant-edge engine (GEODE_RETRIEVAL_ENGINE=edge)"
        )

    def count(self, collection: str) -> int:
        """Number of points in a collection."""
        with self._call(collection):
            return self._client.count(collection, exact=True).count

    def optimize(self, collection: str) -> None:
        """Nothing to do: local mode has no index and a server optimises in the background."""
        self.get_collection(collection)

    def close(self) -> None:
        """Close the client and release the folder lock (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            with self._mutex:
                self._client.close()
        finally:
            if self._lock is not None:
                self._lock.release()

    def __deepcopy__(self, memo: dict[int, Any]) -> QdrantStore:
        # A store is a shared resource: DSPy deep-copies modules (optimizers, `reset_copy`) and the copies
        # must keep using this store, not a second handle on the same locked folder.
        return self

    def __repr__(self) -> str:
        return f"QdrantStore({self._description!r})"
