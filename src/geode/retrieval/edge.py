"""``EdgeStore``: the embedded :class:`~geode.retrieval.base.Store` on Qdrant's own engine, ``qdrant-edge-py``.

qdrant-edge runs Qdrant's Rust storage and HNSW index in-process. Each collection is one edge shard in its
own folder (``<root>/<name>/shard``) next to a small ``collection.json`` recording its dimension, distance
and embedder. Searches stay in the low milliseconds at 50k chunks where qdrant-client's pure-Python local
mode needs about 90 ms (``benchmarks/bench_search.py``); the price is an index build after bulk writes
(:meth:`EdgeStore.optimize`). Writes go through the shard's write-ahead log, so a crash or interrupt loses
nothing that :meth:`EdgeStore.upsert` returned from.
"""

from __future__ import annotations

# _Call below is EdgeStore's own lock-and-shard context manager, a class rather than a method only for
# speed (see its docstring), so it reads the store's private state.
# pyright: reportPrivateUsage=false
import json
import shutil
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from geode.errors import GeodeError, MissingExtraError, RetrievalError, StoreUnavailableError
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
from geode.retrieval.qdrant import check_collection_name

if TYPE_CHECKING:
    import qdrant_edge

__all__ = ["EdgeStore", "edge_available"]

ENGINE = "edge"
_META = "collection.json"
_SHARD = "shard"


def edge_available() -> bool:
    """Whether ``qdrant-edge-py`` can be imported."""
    try:
        import qdrant_edge  # noqa: F401  # pyright: ignore[reportUnusedImport]
    except ImportError:
        return False
    return True


def _edge() -> Any:
    try:
        import qdrant_edge
    except ImportError as err:
        raise MissingExtraError("the qdrant-edge embedded store", "edge") from err
    return qdrant_edge


def _to_filter(filter: PayloadFilter | None) -> qdrant_edge.Filter | None:
    if not filter:
        return None
    edge = _edge()
    must: list[Any] = []
    for key, value in filter.items():
        if isinstance(value, str | int | bool):
            must.append(edge.FieldCondition(key, match=edge.MatchValue(value)))
        else:
            must.append(edge.FieldCondition(key, match=edge.MatchAny(list(value))))
    return edge.Filter(must=must)


def _as_list(vector: Sequence[float] | Vectors) -> list[float]:
    if isinstance(vector, np.ndarray):
        return vector.astype(np.float32, copy=False).tolist()
    return [float(x) for x in vector]


def _point_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise RetrievalError(
            f"point id {value!r} is not a UUID", hint="Geode's point ids are UUID strings"
        ) from None


class _Guarded:
    """``with store._call(name) as shard:`` holds the store's lock, opens the shard and translates errors.

    A class rather than a ``@contextmanager`` generator: this wraps every search, and the generator's
    set-up cost about a tenth of a search over 1,000 points (``benchmarks/bench_search.py``).
    """

    __slots__ = ("name", "store")

    def __init__(self, store: EdgeStore, name: str | None) -> None:
        self.store = store
        self.name = name

    def __enter__(self) -> Any:
        store = self.store
        store._mutex.acquire()
        try:
            if store._closed:
                raise StoreUnavailableError(f"the store ({store.description}) is closed")
            return store._shard(self.name) if self.name is not None else None
        except BaseException:
            store._mutex.release()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.store._mutex.release()
        if isinstance(err, Exception) and not isinstance(err, GeodeError):
            # The Rust extension raises plain Exception with a message.
            raise RetrievalError(f"{self.store.description}, collection {self.name!r}: {err}") from err


class EdgeStore:
    """A :class:`~geode.retrieval.base.Store` on qdrant-edge shards under one folder.

    Args:
        root: The store's folder (created if missing). Only one process may open it at a time.
        search_threads: Threads each shard may use for one search; ``None`` lets the engine decide.
        indexing_threshold_kb: Segments larger than this get an HNSW index on :meth:`optimize`; smaller
            ones are searched exhaustively (exact and fast while small). ``None``: the engine's default.

    Raises:
        StoreUnavailableError: Another process has the folder open.
        MissingExtraError: ``qdrant-edge-py`` is not installed.

    Example:
        >>> import tempfile
        >>> from geode.retrieval import EdgeStore, StoredPoint
        >>> with tempfile.TemporaryDirectory() as root:
        ...     store = EdgeStore(root)
        ...     _ = store.create_collection("docs", dimension=2, distance="cosine", embedder="demo")
        ...     store.upsert("docs", [StoredPoint("00000000-0000-0000-0000-000000000001", [1.0, 0.0], {"text": "hi"})])
        ...     text = store.search("docs", [1.0, 0.1], k=1)[0].payload["text"]
        ...     store.close()
        >>> text
        'hi'
    """

    def __init__(
        self, root: str | Path, *, search_threads: int | None = None, indexing_threshold_kb: int | None = None
    ) -> None:
        self._edge = _edge()
        self.root = Path(root)
        self._search_threads = search_threads
        self._indexing_threshold_kb = indexing_threshold_kb
        self._lock_file = StoreLock(self.root)
        try:
            check_or_write_marker(self.root, ENGINE)
        except BaseException:
            self._lock_file.release()
            raise
        self._mutex = threading.RLock()
        self._shards: dict[str, Any] = {}
        self._infos: dict[str, CollectionInfo] = {}
        self._closed = False

    # -- helpers -----------------------------------------------------------------------------------

    @property
    def description(self) -> str:
        """Where the data lives and which engine serves it."""
        return f"embedded qdrant-edge store at {self.root}"

    def _config(self, dimension: int | None = None, distance: Distance | None = None) -> Any:
        edge = self._edge
        vectors = None
        if dimension is not None and distance is not None:
            dist = {"cosine": edge.Distance.Cosine, "dot": edge.Distance.Dot, "euclid": edge.Distance.Euclid}
            vectors = {"": edge.EdgeVectorParams(size=dimension, distance=dist[distance])}
        optimizers = None
        if self._indexing_threshold_kb is not None:
            optimizers = edge.EdgeOptimizersConfig(indexing_threshold=self._indexing_threshold_kb)
        return edge.EdgeConfig(
            vectors=vectors, max_search_threads=self._search_threads, optimizers=optimizers
        )

    def _folder(self, name: str) -> Path:
        return self.root / check_collection_name(name)

    def _names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / _META).is_file())

    def _info_from_disk(self, name: str) -> CollectionInfo:
        meta_path = self._folder(name) / _META
        if not meta_path.is_file():
            raise collection_not_found(name, self._names())
        try:
            meta = json.loads(meta_path.read_text())
            return CollectionInfo(
                name=name,
                dimension=int(meta["dimension"]),
                distance=meta["distance"],
                points=0,
                embedder=meta.get("embedder"),
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise RetrievalError(f"collection {name!r} has an unreadable {meta_path}: {err}") from err

    def _shard(self, name: str) -> Any:
        shard = self._shards.get(name)
        if shard is None:
            info = self._info_from_disk(name)
            try:
                shard = self._edge.EdgeShard.load(str(self._folder(name) / _SHARD))
            except Exception as err:
                raise StoreUnavailableError(
                    f"cannot open collection {name!r} in {self.description}: {err}"
                ) from err
            self._shards[name] = shard
            self._infos[name] = info
        return shard

    def _call(self, name: str | None = None) -> _Guarded:
        return _Guarded(self, name)

    # -- Store -------------------------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        """Names of all collections, sorted."""
        with self._call():
            return self._names()

    def get_collection(self, name: str) -> CollectionInfo:
        """Dimension, distance, size and embedder of one collection."""
        with self._call(name) as shard:
            info = self._infos[name]
            points = shard.info().points_count
        return CollectionInfo(info.name, info.dimension, info.distance, points, info.embedder)

    def create_collection(
        self, name: str, *, dimension: int, distance: Distance, embedder: str
    ) -> CollectionInfo:
        """Create an empty collection (a new shard plus its ``collection.json``)."""
        folder = self._folder(name)
        with self._call():
            if (folder / _META).is_file():
                raise RetrievalError(f"collection {name!r} already exists")
            if folder.exists():
                # Left over from a create that was interrupted before its metadata was written.
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            try:
                shard = self._edge.EdgeShard.create(str(folder / _SHARD), self._config(dimension, distance))
            except Exception as err:
                shutil.rmtree(folder, ignore_errors=True)
                raise RetrievalError(
                    f"cannot create collection {name!r} in {self.description}: {err}"
                ) from err
            meta = {
                "name": name,
                "dimension": dimension,
                "distance": distance,
                "embedder": embedder,
                "format": 1,
            }
            tmp = folder / (_META + ".tmp")
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
            tmp.replace(folder / _META)  # atomic: a collection exists once its metadata does
            info = CollectionInfo(
                name=name, dimension=dimension, distance=distance, points=0, embedder=embedder
            )
            self._shards[name] = shard
            self._infos[name] = info
        return info

    def delete_collection(self, name: str) -> None:
        """Delete a collection and its points."""
        with self._call(name) as shard:
            shard.close()
            del self._shards[name]
            del self._infos[name]
            folder = self._folder(name)
            (folder / _META).unlink()
            shutil.rmtree(folder)

    def upsert(self, collection: str, points: Sequence[StoredPoint]) -> None:
        """Insert or replace points by id; logged to the shard's WAL before it returns."""
        if not points:
            return
        edge = self._edge
        with self._call(collection) as shard:
            expected = self._infos[collection].dimension
            for p in points:
                check_vector_length(collection, expected, len(p.vector), f"point {p.id}")
            batch = [edge.Point(_point_id(p.id), _as_list(p.vector), dict(p.payload)) for p in points]
            shard.update(edge.UpdateOperation.upsert_points(batch))

    def retrieve(self, collection: str, ids: Sequence[str]) -> list[Record]:
        """Points with these ids (missing ids are left out), with payloads."""
        if not ids:
            return []
        with self._call(collection) as shard:
            found = shard.retrieve([_point_id(i) for i in ids], True, False)
        return [Record(id=str(r.id), payload=dict(r.payload or {})) for r in found]

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        """Delete points by id; missing ids are ignored."""
        if not ids:
            return
        with self._call(collection) as shard:
            shard.update(self._edge.UpdateOperation.delete_points([_point_id(i) for i in ids]))

    def search(
        self,
        collection: str,
        vector: Sequence[float] | Vectors,
        *,
        k: int,
        filter: PayloadFilter | None = None,
    ) -> list[Hit]:
        """The ``k`` points closest to ``vector`` whose payload matches ``filter``, best first."""
        edge = self._edge
        request = edge.QueryRequest(
            limit=k,
            query=edge.Query.Nearest(_as_list(vector)),
            filter=_to_filter(filter),
            with_payload=True,
            with_vector=False,
        )
        with self._call(collection) as shard:
            check_vector_length(
                collection, self._infos[collection].dimension, len(vector), "the query vector"
            )
            found = shard.query(request)
        # The binding hands out a fresh dict per payload access: no copy needed.
        return [Hit(str(p.id), p.score, p.payload or {}) for p in found]

    def count(self, collection: str) -> int:
        """Number of points in a collection."""
        with self._call(collection) as shard:
            return int(shard.info().points_count)

    def optimize(self, collection: str) -> None:
        """Build the HNSW index and merge segments, then flush; run after a bulk write (blocks)."""
        with self._call(collection) as shard:
            shard.optimize()
            shard.flush()

    def shard(self, collection: str) -> Any:
        """The collection's underlying ``qdrant_edge.EdgeShard`` (for benchmarks and advanced use).

        Calls on it bypass this store's lock; do not use it from several threads while the store writes.
        """
        with self._call(collection) as shard:
            return shard

    def flush(self) -> None:
        """Flush every open shard to disk."""
        with self._call():
            for shard in self._shards.values():
                shard.flush()

    def close(self) -> None:
        """Flush and close every shard and release the folder lock (idempotent)."""
        if self._closed:
            return
        with self._mutex:
            self._closed = True
            try:
                for shard in self._shards.values():
                    try:
                        shard.flush()
                    finally:
                        shard.close()
            finally:
                self._shards.clear()
                self._lock_file.release()

    def __deepcopy__(self, memo: dict[int, Any]) -> EdgeStore:
        # Shared resource: DSPy's module copies must keep using this store (see QdrantStore.__deepcopy__).
        return self

    def __repr__(self) -> str:
        return f"EdgeStore({str(self.root)!r})"
