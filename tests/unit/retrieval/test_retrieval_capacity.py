"""Plan row T33: qdrant-client's local mode past its 20,000-point threshold is flagged, once, with what to use."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import numpy as np
import pytest
from qdrant_client.local.local_collection import LocalCollection

from geode.retrieval import EdgeStore, Ingestor, QdrantStore, StoredPoint, edge_available
from geode.retrieval.base import CapacityLimited
from geode.retrieval.qdrant import LOCAL_MODE_POINTS
from geode.testing import HashingEmbedder

DIMENSION = 4

# qdrant-client's own warning, raised once per process from inside its upsert; Geode's is the one asserted.
pytestmark = pytest.mark.filterwarnings("ignore:Local mode is not recommended:UserWarning")


def _fill(store: QdrantStore, n: int, start: int = 0, batch: int = 5_000) -> None:
    rng = np.random.default_rng(0)
    for first in range(start, start + n, batch):
        ids = range(first, min(first + batch, start + n))
        vectors = rng.random((len(ids), DIMENSION), dtype=np.float32)
        store.upsert(
            "docs",
            [
                StoredPoint(str(uuid.UUID(int=i + 1)), v, {"text": f"p{i}"})
                for i, v in zip(ids, vectors, strict=True)
            ],
        )


def test_our_threshold_is_qdrant_clients() -> None:
    assert LOCAL_MODE_POINTS == LocalCollection.LARGE_DATA_THRESHOLD


def test_local_mode_past_20000_points_warns_once_per_collection_naming_the_server_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # In memory: the same LocalCollection engine as on disk, where writing 20,000 points takes a minute.
    store = QdrantStore.memory()
    try:
        store.create_collection("docs", dimension=DIMENSION, distance="cosine", embedder="hashing-4")
        with caplog.at_level(logging.WARNING, logger="geode.retrieval.qdrant"):
            _fill(store, LOCAL_MODE_POINTS)
            assert store.capacity_warning("docs") is None
            assert not caplog.records  # exactly at the threshold: fine
            _fill(store, 1, start=LOCAL_MODE_POINTS)
            _fill(store, 10, start=LOCAL_MODE_POINTS + 1)
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1, warnings
        assert "20,001 points" in warnings[0] and "GEODE_RETRIEVAL_QDRANT_URL" in warnings[0]
        assert "20,011 points" in str(store.capacity_warning("docs"))
    finally:
        store.close()


def test_ingest_report_carries_the_warning(tmp_path: Path) -> None:
    """`geode ingest` prints the report's warnings: the threshold shows up there."""
    store = QdrantStore.memory()
    embedder = HashingEmbedder(DIMENSION)
    store.create_collection("docs", dimension=DIMENSION, distance="cosine", embedder=embedder.name)
    _fill(store, LOCAL_MODE_POINTS)
    (tmp_path / "a.md").write_text("# A\n\nOne more chunk.\n")
    report = Ingestor(store, embedder).ingest([tmp_path], "docs")
    assert report.chunks == 1
    assert any("past the 20,000" in w and "GEODE_RETRIEVAL_QDRANT_URL" in w for w in report.warnings), (
        report.warnings
    )


def test_a_server_and_qdrant_edge_have_no_such_threshold(tmp_path: Path) -> None:
    remote = QdrantStore.remote("http://127.0.0.1:1", timeout_s=1.0)
    assert remote.capacity_warning("docs") is None  # answered without a request
    remote.close()
    if edge_available():
        edge = EdgeStore(tmp_path / "edge")
        assert not isinstance(edge, CapacityLimited)  # HNSW in Rust: no brute-force limit
        edge.close()
