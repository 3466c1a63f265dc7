"""Retrieval quality on the shipped labelled query set: recall@1, recall@5 and MRR@10.

The sample corpus (``geode/retrieval/data/corpus``, 16 help-centre pages) is ingested and each of the 53
labelled questions (``queries.jsonl``) is searched; a passage is relevant if it comes from the labelled
page and contains the labelled answer phrase. Rows:

- ``Geode, local embedder``: ``geode.Retriever`` with all-MiniLM-L6-v2 over the default embedded store
  (qdrant-edge), default chunking (900/150) — what ``geode ingest`` + ``geode search`` do;
- the same on qdrant-client's local mode (must match: both are exact at this size);
- ``HashingEmbedder``: the deterministic test embedder, a lexical floor;
- experiment, not shipped: BM25 alone and hybrid (dense + BM25 sparse vectors fused with RRF) in one
  qdrant-edge shard, to decide whether hybrid search earns its cost. Per-query latency (embedding
  included) is shown for dense and hybrid.

Run: ``.venv/bin/python benchmarks/bench_retrieval_quality.py [--threads 1] [--json out.json]``
(``--threads 1`` keeps the per-query latencies comparable on a busy machine: torch's default worker
threads spin while waiting for a core and make single-query embedding erratic.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import qdrant_edge as qe
from rich.console import Console
from rich.table import Table

from geode.retrieval import (
    Chunker,
    EdgeStore,
    Embedder,
    Ingestor,
    QdrantStore,
    Retriever,
    SentenceTransformerEmbedder,
    Store,
    sample_corpus_dir,
)
from geode.retrieval.data import LabelledQuery, load_queries
from geode.retrieval.loaders import LoadedFile, discover, load_file
from geode.testing import HashingEmbedder

console = Console(width=160)
Search = Callable[[str], list[tuple[str | None, str]]]
"""query -> ranked (source, text) pairs."""


@dataclass
class Result:
    name: str
    chunks: int
    recall_at_1: float
    recall_at_5: float
    mrr_at_10: float
    p50_ms: float
    misses: list[str]


def evaluate(name: str, chunks: int, search: Search, queries: list[LabelledQuery]) -> Result:
    r1 = r5 = 0
    reciprocal: list[float] = []
    misses: list[str] = []
    latencies: list[float] = []
    for q in queries:
        started = time.perf_counter()
        ranked = search(q.query)[:10]
        latencies.append((time.perf_counter() - started) * 1000)
        rank = next((i for i, (source, text) in enumerate(ranked) if q.is_relevant(source, text)), None)
        r1 += rank == 0
        r5 += rank is not None and rank < 5
        reciprocal.append(0.0 if rank is None else 1.0 / (rank + 1))
        if rank is None or rank >= 5:
            misses.append(q.id)
    n = len(queries)
    return Result(
        name, chunks, r1 / n, r5 / n, statistics.mean(reciprocal), statistics.median(latencies), misses
    )


def geode_row(
    name: str, store: Store, embedder: Embedder, chunker: Chunker, queries: list[LabelledQuery]
) -> Result:
    try:
        report = Ingestor(store, embedder, chunker=chunker).ingest([sample_corpus_dir()], "quality")
        retriever = Retriever(store, embedder, "quality", k=10)
        retriever(query="warm up")

        def search(query: str) -> list[tuple[str | None, str]]:
            return [(p.source, p.text) for p in retriever(query=query).passages]

        return evaluate(name, report.chunks, search, queries)
    finally:
        store.close()


def hybrid_rows(
    embedder: SentenceTransformerEmbedder, queries: list[LabelledQuery], root: Path
) -> list[Result]:
    chunker = Chunker()
    chunks: list[tuple[str, str]] = []
    for path in discover([sample_corpus_dir()])[0]:
        loaded = load_file(path)
        assert isinstance(loaded, LoadedFile)
        chunks += [(loaded.source, t) for s in loaded.sections for t in chunker.chunk(s)]
    dense = embedder.embed_documents([t for _, t in chunks])
    bm25 = qe.Bm25(qe.Bm25Config(language="english", avg_len=150))
    shard = qe.EdgeShard.create(
        str(root / "hybrid"),
        qe.EdgeConfig(
            vectors={"dense": qe.EdgeVectorParams(size=embedder.dimension, distance=qe.Distance.Cosine)},
            sparse_vectors={"bm25": qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        ),
    )
    shard.update(
        qe.UpdateOperation.upsert_points(
            [
                qe.Point(
                    i, {"dense": dense[i].tolist(), "bm25": bm25.embed_document(t)}, {"source": s, "text": t}
                )
                for i, (s, t) in enumerate(chunks)
            ]
        )
    )

    def run(request_for: Callable[[str], qe.QueryRequest]) -> Search:
        def search(query: str) -> list[tuple[str | None, str]]:
            points = shard.query(request_for(query))
            return [(p.payload["source"], p.payload["text"]) for p in points if p.payload]

        return search

    def bm25_only(query: str) -> qe.QueryRequest:
        return qe.QueryRequest(
            limit=10, query=qe.Query.Nearest(bm25.embed_query(query), using="bm25"), with_payload=True
        )

    def hybrid(k: int) -> Callable[[str], qe.QueryRequest]:
        def request(query: str) -> qe.QueryRequest:
            return qe.QueryRequest(
                limit=10,
                prefetches=[
                    qe.Prefetch(
                        limit=20, query=qe.Query.Nearest(embedder.embed_query(query).tolist(), using="dense")
                    ),
                    qe.Prefetch(limit=20, query=qe.Query.Nearest(bm25.embed_query(query), using="bm25")),
                ],
                # The stub declares Rrf as a nested class, not a Fusion; the engine accepts it.
                query=qe.Fusion.Rrf(k=k),  # pyright: ignore[reportArgumentType]
                with_payload=True,
            )

        return request

    try:
        return [
            evaluate("experiment: BM25 only (qdrant-edge sparse)", len(chunks), run(bm25_only), queries),
            evaluate("experiment: hybrid dense+BM25, RRF k=2", len(chunks), run(hybrid(2)), queries),
            evaluate("experiment: hybrid dense+BM25, RRF k=60", len(chunks), run(hybrid(60)), queries),
        ]
    finally:
        shard.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Retrieval quality on the shipped labelled query set.")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the local embedder")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    queries = load_queries()
    local = SentenceTransformerEmbedder(threads=args.threads)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp, console.status("ingesting and searching...") as status:
        root = Path(tmp)
        rows: list[tuple[str, Callable[[], Store], Embedder, Chunker]] = [
            ("Geode, local embedder (edge store)", lambda: EdgeStore(root / "a"), local, Chunker()),
            (
                "Geode, local embedder (qdrant-local store)",
                lambda: QdrantStore.local(root / "b"),
                local,
                Chunker(),
            ),
            ("HashingEmbedder (test fake, lexical)", QdrantStore.memory, HashingEmbedder(), Chunker()),
        ]
        for name, make_store, embedder, chunker in rows:
            status.update(name)
            results.append(geode_row(name, make_store(), embedder, chunker, queries))
        status.update("hybrid experiment")
        results += hybrid_rows(local, queries, root)

    table = Table(title=f"retrieval quality, {len(queries)} labelled queries, sample corpus (16 pages)")
    for column in ("setup", "chunks", "recall@1", "recall@5", "MRR@10", "p50 ms/query", "missed at 5"):
        table.add_column(column, justify="left" if column == "setup" else "right")
    for r in results:
        table.add_row(
            r.name,
            str(r.chunks),
            f"{r.recall_at_1:.3f}",
            f"{r.recall_at_5:.3f}",
            f"{r.mrr_at_10:.3f}",
            f"{r.p50_ms:.1f}",
            ", ".join(r.misses) or "-",
        )
    console.print(table)
    console.print(f"load average (1 min): {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
