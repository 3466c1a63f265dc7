"""Congruence: qdrant-edge and qdrant-client return the same top results for the same data and queries.

qdrant-client's local mode is exact brute force, so it is the reference. Edge is exact below its indexing
threshold and approximate (HNSW) above it; both cases are checked.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from geode.retrieval import EdgeStore, QdrantStore, StoredPoint

N, DIM, K, QUERIES = 600, 32, 5, 15


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    queries = rng.standard_normal((QUERIES, DIM)).astype(np.float32)
    sources = [f"file{i % 7}.md" for i in range(N)]
    return vectors, queries, sources


def _points(vectors: np.ndarray, sources: list[str]) -> list[StoredPoint]:
    return [
        StoredPoint(
            str(uuid.UUID(int=i + 1)),
            vectors[i],
            {"text": f"t{i}", "source": sources[i], "n": i, "lang": ("en", "de", "fr")[i % 3]},
        )
        for i in range(len(vectors))
    ]


@pytest.fixture(scope="module")
def reference(data: tuple[np.ndarray, np.ndarray, list[str]]) -> Iterator[QdrantStore]:
    vectors, _, sources = data
    store = QdrantStore.memory()
    store.create_collection("c", dimension=DIM, distance="cosine", embedder="e")
    store.upsert("c", _points(vectors, sources))
    yield store
    store.close()


def _edge(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray, list[str]], threshold_kb: int | None
) -> EdgeStore:
    vectors, _, sources = data
    store = EdgeStore(tmp_path / "edge", indexing_threshold_kb=threshold_kb)
    store.create_collection("c", dimension=DIM, distance="cosine", embedder="e")
    for start in range(0, N, 200):
        store.upsert("c", _points(vectors, sources)[start : start + 200])
    store.optimize("c")
    return store


@pytest.mark.parametrize(("threshold_kb", "min_overlap"), [(None, 1.0), (10, 0.95)], ids=["exact", "hnsw"])
def test_same_top_results(
    tmp_path: Path,
    data: tuple[np.ndarray, np.ndarray, list[str]],
    reference: QdrantStore,
    threshold_kb: int | None,
    min_overlap: float,
) -> None:
    _, queries, _ = data
    edge = _edge(tmp_path, data, threshold_kb)
    try:
        overlaps: list[float] = []
        for query in queries:
            for flt in (
                None,
                {"source": "file3.md"},
                {"source": ["file1.md", "file2.md"], "lang": ["en", "fr"]},
            ):
                expected = reference.search("c", query, k=K, filter=flt)
                got = edge.search("c", query, k=K, filter=flt)
                assert len(got) == len(expected) == K
                exp_scores = {h.id: h.score for h in expected}
                shared = [h for h in got if h.id in exp_scores]
                overlaps.append(len(shared) / K)
                for hit in shared:
                    assert hit.score == pytest.approx(exp_scores[hit.id], abs=1e-4)
                    assert hit.payload == next(e.payload for e in expected if e.id == hit.id)
                # Scores are non-increasing and never better than the exact best.
                assert [h.score for h in got] == sorted((h.score for h in got), reverse=True)
                assert got[0].score <= expected[0].score + 1e-4
        assert float(np.mean(overlaps)) >= min_overlap
    finally:
        edge.close()
