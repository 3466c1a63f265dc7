"""The Store contract, run against every implementation: qdrant-client in memory and on disk, qdrant-edge."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from geode.errors import CollectionNotFoundError, RetrievalError, StoreUnavailableError
from geode.retrieval import EdgeStore, QdrantStore, Store, StoredPoint
from geode.retrieval._lock import MARKER_FILE, StoreLock

StoreFactory = Callable[[Path], Store]

FACTORIES: dict[str, StoreFactory] = {
    "qdrant-memory": lambda _: QdrantStore.memory(),
    "qdrant-local": lambda path: QdrantStore.local(path / "store"),
    "edge": lambda path: EdgeStore(path / "store"),
}


@pytest.fixture(params=sorted(FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = FACTORIES[request.param](tmp_path)
    yield s
    s.close()


def pid(n: int) -> str:
    return str(uuid.UUID(int=n + 1))


def unit(*values: float) -> list[float]:
    v = np.asarray(values, dtype=np.float32)
    return (v / np.linalg.norm(v)).tolist()


def fill(store: Store, name: str = "docs") -> None:
    store.create_collection(name, dimension=3, distance="cosine", embedder="test-emb")
    store.upsert(
        name,
        [
            StoredPoint(pid(0), unit(1, 0, 0), {"text": "zero", "source": "a.md", "n": 0, "lang": "en"}),
            StoredPoint(pid(1), unit(1, 0.2, 0), {"text": "one", "source": "a.md", "n": 1, "lang": "de"}),
            StoredPoint(pid(2), unit(0, 1, 0), {"text": "two", "source": "b.md", "n": 2, "lang": "en"}),
            StoredPoint(pid(3), unit(0, 0, 1), {"text": "three", "source": "b.md", "n": 3, "lang": "fr"}),
        ],
    )


def test_create_describe_and_list(store: Store) -> None:
    assert store.list_collections() == []
    info = store.create_collection("docs", dimension=3, distance="cosine", embedder="test-emb")
    assert (info.name, info.dimension, info.distance, info.points, info.embedder) == (
        "docs",
        3,
        "cosine",
        0,
        "test-emb",
    )
    store.create_collection("alpha", dimension=5, distance="dot", embedder="other")
    assert store.list_collections() == ["alpha", "docs"]
    got = store.get_collection("alpha")
    assert (got.dimension, got.distance, got.embedder) == (5, "dot", "other")
    with pytest.raises(RetrievalError, match="already exists"):
        store.create_collection("docs", dimension=3, distance="cosine", embedder="test-emb")


def test_upsert_search_and_payload(store: Store) -> None:
    fill(store)
    assert store.count("docs") == 4
    hits = store.search("docs", unit(1, 0.05, 0), k=2)
    assert [h.id for h in hits] == [pid(0), pid(1)]
    assert hits[0].score > hits[1].score > 0.9
    assert hits[0].payload == {"text": "zero", "source": "a.md", "n": 0, "lang": "en"}
    assert len(store.search("docs", np.asarray(unit(0, 0, 1), dtype=np.float32), k=10)) == 4


def test_upsert_replaces_by_id(store: Store) -> None:
    fill(store)
    store.upsert("docs", [StoredPoint(pid(3), unit(1, 0, 0), {"text": "moved"})])
    assert store.count("docs") == 4
    top = store.search("docs", unit(1, 0, 0), k=2)
    assert {h.payload["text"] for h in top} == {"zero", "moved"}


def test_filters(store: Store) -> None:
    fill(store)
    query = unit(1, 0.05, 0)
    assert [h.id for h in store.search("docs", query, k=4, filter={"source": "b.md"})] == [pid(2), pid(3)]
    assert [h.id for h in store.search("docs", query, k=4, filter={"lang": ["de", "fr"]})] == [pid(1), pid(3)]
    assert [h.id for h in store.search("docs", query, k=4, filter={"source": "a.md", "n": 1})] == [pid(1)]
    assert store.search("docs", query, k=4, filter={"lang": "xx"}) == []


def test_retrieve_and_delete(store: Store) -> None:
    fill(store)
    found = store.retrieve("docs", [pid(1), pid(99), pid(2)])
    assert sorted(r.id for r in found) == [pid(1), pid(2)]
    assert {r.id: r.payload["text"] for r in found} == {pid(1): "one", pid(2): "two"}
    store.delete("docs", [pid(1), pid(99)])
    assert store.count("docs") == 3
    assert store.retrieve("docs", [pid(1)]) == []


def test_missing_collection_names_existing_ones(store: Store) -> None:
    fill(store, "docs")
    fill(store, "faq")
    for call in (
        lambda: store.search("nope", unit(1, 0, 0), k=1),
        lambda: store.get_collection("nope"),
        lambda: store.upsert("nope", [StoredPoint(pid(0), unit(1, 0, 0), {})]),
        lambda: store.count("nope"),
    ):
        with pytest.raises(
            CollectionNotFoundError, match="'nope' does not exist; existing collections: 'docs', 'faq'"
        ):
            call()


def test_missing_collection_in_empty_store(store: Store) -> None:
    with pytest.raises(CollectionNotFoundError, match="no collections yet"):
        store.get_collection("docs")


def test_wrong_dimension_is_refused_before_writing(store: Store) -> None:
    fill(store)
    with pytest.raises(RetrievalError, match=r"holds 3-d vectors; point .* has 2 dimensions"):
        store.upsert("docs", [StoredPoint(pid(7), [1.0, 0.0], {"text": "bad"})])
    with pytest.raises(RetrievalError, match="the query vector has 4 dimensions"):
        store.search("docs", [1.0, 0.0, 0.0, 0.0], k=1)
    assert store.count("docs") == 4


def test_invalid_collection_name(store: Store) -> None:
    for bad in ("", "../x", "a/b", "with space", "."):
        with pytest.raises(RetrievalError, match="invalid collection name"):
            store.create_collection(bad, dimension=3, distance="cosine", embedder="e")


def test_delete_collection(store: Store) -> None:
    fill(store, "docs")
    fill(store, "faq")
    store.delete_collection("docs")
    assert store.list_collections() == ["faq"]
    with pytest.raises(CollectionNotFoundError):
        store.delete_collection("docs")
    fill(store, "docs")
    assert store.count("docs") == 4


def test_closed_store_says_so(store: Store) -> None:
    fill(store)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreUnavailableError, match="closed"):
        store.search("docs", unit(1, 0, 0), k=1)


@pytest.mark.parametrize("engine", ["qdrant-local", "edge"])
def test_data_survives_reopen(engine: str, tmp_path: Path) -> None:
    store = FACTORIES[engine](tmp_path)
    fill(store)
    store.optimize("docs")
    store.close()
    reopened = FACTORIES[engine](tmp_path)
    try:
        assert reopened.list_collections() == ["docs"]
        info = reopened.get_collection("docs")
        assert (info.dimension, info.points, info.embedder) == (3, 4, "test-emb")
        assert reopened.search("docs", unit(0, 1, 0), k=1)[0].payload["text"] == "two"
    finally:
        reopened.close()


@pytest.mark.parametrize("engine", ["qdrant-local", "edge"])
def test_second_opener_is_told_the_store_is_locked(engine: str, tmp_path: Path) -> None:
    first = FACTORIES[engine](tmp_path)
    try:
        with pytest.raises(StoreUnavailableError, match="locked by another process"):
            FACTORIES[engine](tmp_path)
    finally:
        first.close()
    FACTORIES[engine](tmp_path).close()  # released on close


def test_lock_is_exclusive_across_handles(tmp_path: Path) -> None:
    lock = StoreLock(tmp_path)
    with pytest.raises(StoreUnavailableError, match="locked"):
        StoreLock(tmp_path)
    lock.release()
    lock.release()
    StoreLock(tmp_path).release()


def test_engines_refuse_each_others_folders_and_foreign_folders(tmp_path: Path) -> None:
    EdgeStore(tmp_path / "store").close()
    with pytest.raises(StoreUnavailableError, match="written by engine 'edge', not 'qdrant-local'"):
        QdrantStore.local(tmp_path / "store")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "collection").mkdir()
    (foreign / "meta.json").write_text("{}")
    with pytest.raises(RetrievalError, match="did not write"):
        QdrantStore.local(foreign)
    assert not (foreign / MARKER_FILE).exists()


def test_deepcopy_shares_the_store(tmp_path: Path) -> None:
    import copy

    store = EdgeStore(tmp_path / "s")
    try:
        assert copy.deepcopy(store) is store
        memory = QdrantStore.memory()
        assert copy.deepcopy(memory) is memory
    finally:
        store.close()
