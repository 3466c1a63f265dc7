"""Backing up and restoring the vector store: plan row T35, as far as it can run here.

The plan's row restores Qdrant *server* snapshots (a different minor version must be refused; a
restore into an empty collection must use ``priority=snapshot``). There is no Qdrant server binary
on these machines, and neither embedded engine makes snapshots (qdrant-client's local mode raises
``NotImplementedError``; qdrant-edge can only *read* a server's shard snapshot), so what stands in is
what an operator of the embedded store can do: copy the store folder while no process holds it and
copy it back, or rebuild it from the source documents with ``geode ingest`` (docs/deploy.md).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from geode.errors import RetrievalError, StoreUnavailableError
from geode.retrieval import EdgeStore, Ingestor, Retriever
from geode.testing import HashingEmbedder

pytestmark = pytest.mark.reliability

CORPUS = Path(__file__).resolve().parents[2] / "src" / "geode" / "retrieval" / "data" / "corpus"
QUERIES = ("how do I return boots", "gift card balance", "store hours on sunday", "repair a tent")


def _contents(store: EdgeStore, collection: str = "docs") -> tuple[int, dict[str, str], list[list[str]]]:
    """Count, every point (id to text, read through a search as wide as the collection) and the
    top-3 ids of each query: what a restore must bring back."""
    count = store.count(collection)
    embedder = HashingEmbedder()
    everything = store.search(collection, embedder.embed_query("anything"), k=count + 10)
    points = {hit.id: str(hit.payload.get("text")) for hit in everything}
    top = [[hit.id for hit in store.search(collection, embedder.embed_query(q), k=3)] for q in QUERIES]
    return count, points, top


def test_t35_a_copy_of_the_closed_store_restores_every_point(tmp_path: Path) -> None:
    """Injects: the store is backed up (its folder copied while closed), then damaged after the backup
    (points deleted, a stray point added, a collection dropped), then restored by copying the backup
    back.
    Must hold: the restored store has exactly the backed-up points (count, ids, texts) and answers the
    same queries with the same hits; the backup cannot be taken into use while a process holds the
    live store (its lock refuses a second opener); a restore searched with another embedder is a
    clear error, not silently wrong hits (the stand-in for the plan's version check)."""
    live, backup = tmp_path / "store", tmp_path / "backup"
    store = EdgeStore(live)
    report = Ingestor(store, HashingEmbedder()).ingest([CORPUS], "docs")
    Ingestor(store, HashingEmbedder()).ingest([CORPUS / "returns.md"], "scratch")
    before = _contents(store)
    store.close()
    started = time.perf_counter()
    shutil.copytree(live, backup)
    backed_up_s = time.perf_counter() - started

    store = EdgeStore(live)
    doomed = list(before[1])[:5]
    store.delete("docs", doomed)
    store.delete_collection("scratch")
    assert store.count("docs") == before[0] - 5
    with pytest.raises(StoreUnavailableError):
        EdgeStore(live)  # held: nobody restores under a running process
    store.close()

    started = time.perf_counter()
    shutil.rmtree(live)
    shutil.copytree(backup, live)
    restored_s = time.perf_counter() - started
    store = EdgeStore(live)
    try:
        after = _contents(store)
        assert after == before
        assert "scratch" in store.list_collections()
        with pytest.raises(RetrievalError, match="embedder"):
            Retriever(store, HashingEmbedder(dimension=64), "docs")(query="boots")
    finally:
        store.close()
    print(f"\n[figure] T35: {report.chunks} chunks from {report.files} files; cold copy {backed_up_s * 1000:.0f} ms, "
          f"restore {restored_s * 1000:.0f} ms; restored {after[0]}/{before[0]} points, "
          f"{sum(a == b for a, b in zip(after[2], before[2], strict=True))}/{len(QUERIES)} queries with the same hits")  # fmt: skip


def test_t35_a_store_rebuilt_from_its_sources_equals_the_original(tmp_path: Path) -> None:
    """Injects: the store is lost; it is rebuilt into an empty folder from the same documents
    (what docs/deploy.md gives as the restore path that needs no backup).
    Must hold: the same point ids (derived from each file's path and chunk position), texts and
    search hits as the original: nothing the retriever returns depends on the store having been kept."""
    original = EdgeStore(tmp_path / "original")
    Ingestor(original, HashingEmbedder()).ingest([CORPUS], "docs")
    expected = _contents(original)
    original.close()
    shutil.rmtree(tmp_path / "original")

    rebuilt = EdgeStore(tmp_path / "rebuilt")
    try:
        Ingestor(rebuilt, HashingEmbedder()).ingest([CORPUS], "docs")
        assert _contents(rebuilt) == expected
    finally:
        rebuilt.close()
