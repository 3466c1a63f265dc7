from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from geode.errors import ConfigError, RetrievalError
from geode.retrieval import Chunker, Ingestor, QdrantStore, Retriever, point_id, sample_corpus_dir
from geode.retrieval.base import Vectors
from geode.testing import HashingEmbedder


class InterruptingEmbedder(HashingEmbedder):
    """Raises KeyboardInterrupt on the n-th call to embed_documents, as Ctrl-C would mid-run."""

    def __init__(self, interrupt_on_call: int) -> None:
        super().__init__(name="hashing-256")
        self.calls = 0
        self.interrupt_on_call = interrupt_on_call

    def embed_documents(self, texts: Sequence[str]) -> Vectors:
        self.calls += 1
        if self.calls == self.interrupt_on_call:
            raise KeyboardInterrupt
        return super().embed_documents(texts)


def write_docs(folder: Path, n: int = 5, paragraphs: int = 6) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        body = "\n\n".join(
            f"Paragraph {p} of document {i} talks about topic{i} and detail{p}. It has a second sentence."
            for p in range(paragraphs)
        )
        path = folder / f"doc{i}.md"
        path.write_text(f"# Document {i}\n\n{body}\n")
        paths.append(path)
    return paths


@pytest.fixture
def store() -> QdrantStore:
    return QdrantStore.memory()


def small_chunks() -> Chunker:
    return Chunker(max_chars=120, overlap_chars=0)


def test_ingest_writes_chunks_with_payload(store: QdrantStore, tmp_path: Path) -> None:
    paths = write_docs(tmp_path / "docs")
    events: list[tuple[str, int, int]] = []
    report = Ingestor(store, HashingEmbedder(), chunker=small_chunks(), batch_size=7).ingest(
        [tmp_path / "docs"], "docs", on_progress=lambda *e: events.append(e)
    )
    assert (report.files, report.unchanged, report.deleted) == (5, 0, 0)
    assert report.chunks == store.count("docs") > 5
    info = store.get_collection("docs")
    assert (info.dimension, info.embedder) == (256, "hashing-256")
    source = paths[0].resolve().as_posix()
    first = store.retrieve("docs", [point_id(source, 0)])[0].payload
    assert first["source"] == source
    assert first["title"] == "Document 0"
    assert first["heading"] == "Document 0"
    assert first["chunk_index"] == 0
    assert first["text"].startswith("Document 0\n\nParagraph 0 of document 0")
    assert first["chunk_count"] == report.chunks // 5
    phases = {e[0] for e in events}
    assert phases == {"read", "embed", "index"}
    assert events[-1] == ("index", 1, 1)
    embed_events = [e for e in events if e[0] == "embed"]
    assert embed_events[-1] == ("embed", report.chunks, report.chunks)


def test_reingest_unchanged_writes_nothing_and_changed_file_is_updated_in_place(
    store: QdrantStore, tmp_path: Path
) -> None:
    paths = write_docs(tmp_path / "docs")
    ingestor = Ingestor(store, HashingEmbedder(), chunker=small_chunks())
    first = ingestor.ingest([tmp_path / "docs"], "docs")
    again = ingestor.ingest([tmp_path / "docs"], "docs")
    assert (again.files, again.unchanged, again.chunks) == (0, 5, 0)
    assert store.count("docs") == first.chunks

    # Shrink one file: its chunks are rewritten and the extra ones deleted, nothing duplicated.
    paths[2].write_text("# Document 2\n\nNow it is short.\n")
    changed = ingestor.ingest([tmp_path / "docs"], "docs")
    per_file = first.chunks // 5
    assert (changed.files, changed.unchanged, changed.chunks, changed.deleted) == (1, 4, 1, per_file - 1)
    assert store.count("docs") == first.chunks - per_file + 1
    hits = Retriever(store, HashingEmbedder(), "docs")(query="Now it is short", k=1).passages
    assert hits[0].text == "Document 2\n\nNow it is short."


def test_interrupted_ingestion_keeps_what_was_written_and_resumes(store: QdrantStore, tmp_path: Path) -> None:
    write_docs(tmp_path / "docs", n=6)
    reference = Ingestor(QdrantStore.memory(), HashingEmbedder(), chunker=small_chunks()).ingest(
        [tmp_path / "docs"], "docs"
    )
    per_file = reference.chunks // 6
    interrupted = Ingestor(
        store, InterruptingEmbedder(interrupt_on_call=3), chunker=small_chunks(), batch_size=per_file
    )
    with pytest.raises(KeyboardInterrupt):
        interrupted.ingest([tmp_path / "docs"], "docs")
    assert store.count("docs") == 2 * per_file  # two groups (= two files) landed before Ctrl-C

    resumed = Ingestor(store, HashingEmbedder(), chunker=small_chunks()).ingest([tmp_path / "docs"], "docs")
    assert (resumed.files, resumed.unchanged, resumed.chunks) == (4, 2, 4 * per_file)
    assert store.count("docs") == reference.chunks


def test_partially_written_file_is_redone(store: QdrantStore, tmp_path: Path) -> None:
    write_docs(tmp_path / "docs", n=1, paragraphs=10)
    ingestor = Ingestor(
        store, InterruptingEmbedder(interrupt_on_call=2), chunker=small_chunks(), batch_size=3
    )
    with pytest.raises(KeyboardInterrupt):
        ingestor.ingest([tmp_path / "docs"], "docs")
    assert store.count("docs") == 3
    resumed = Ingestor(store, HashingEmbedder(), chunker=small_chunks()).ingest([tmp_path / "docs"], "docs")
    assert (resumed.files, resumed.unchanged) == (1, 0)
    assert store.count("docs") == resumed.chunks > 3


def test_empty_and_binary_files_are_skipped_and_the_rest_ingested(store: QdrantStore, tmp_path: Path) -> None:
    write_docs(tmp_path / "docs", n=2)
    (tmp_path / "docs" / "empty.md").write_text("")
    (tmp_path / "docs" / "blob.txt").write_bytes(b"\x00\xff\x00binary")
    report = Ingestor(store, HashingEmbedder()).ingest([tmp_path / "docs"], "docs")
    assert report.files == 2
    assert sorted((s.path.name, s.reason) for s in report.skipped) == [
        ("blob.txt", "binary file (contains NUL bytes)"),
        ("empty.md", "empty file"),
    ]


def test_nothing_ingestible_creates_no_collection(store: QdrantStore, tmp_path: Path) -> None:
    (tmp_path / "empty.md").write_text("\n")
    report = Ingestor(store, HashingEmbedder()).ingest([tmp_path / "empty.md"], "docs")
    assert (report.files, report.chunks, len(report.skipped)) == (0, 0, 1)
    assert store.list_collections() == []


def test_dimension_mismatch_is_caught_before_anything_is_written(store: QdrantStore, tmp_path: Path) -> None:
    write_docs(tmp_path / "docs", n=2)
    Ingestor(store, HashingEmbedder(dimension=64)).ingest([tmp_path / "docs" / "doc0.md"], "docs")
    before = store.count("docs")
    embedder = InterruptingEmbedder(interrupt_on_call=1)  # would raise if it were ever asked to embed
    with pytest.raises(RetrievalError, match="holds 64-d vectors but embedder 'hashing-256' produces 256-d"):
        Ingestor(store, embedder).ingest([tmp_path / "docs"], "docs")
    assert embedder.calls == 0
    assert store.count("docs") == before


def test_other_embedder_of_same_dimension_is_refused(store: QdrantStore, tmp_path: Path) -> None:
    write_docs(tmp_path / "docs", n=1)
    Ingestor(store, HashingEmbedder(name="model-a")).ingest([tmp_path / "docs"], "docs")
    with pytest.raises(RetrievalError, match="built with embedder 'model-a', not 'model-b'"):
        Ingestor(store, HashingEmbedder(name="model-b")).ingest([tmp_path / "docs"], "docs")


def test_user_metadata_is_filterable_and_reserved_keys_are_refused(
    store: QdrantStore, tmp_path: Path
) -> None:
    write_docs(tmp_path / "en", n=2)
    write_docs(tmp_path / "de", n=2)
    for i in range(2):
        (tmp_path / "de" / f"doc{i}.md").write_text(f"# Dokument {i}\n\nTopic{i} auf Deutsch.\n")
    Ingestor(store, HashingEmbedder(), metadata={"lang": "en"}).ingest([tmp_path / "en"], "docs")
    Ingestor(store, HashingEmbedder(), metadata={"lang": "de"}).ingest([tmp_path / "de"], "docs")
    retriever = Retriever(store, HashingEmbedder(), "docs", k=50)
    german = retriever(query="topic0", filter={"lang": "de"}).passages
    assert german and all(p.metadata["lang"] == "de" for p in german)
    with pytest.raises(ConfigError, match="'source' are reserved"):
        Ingestor(store, HashingEmbedder(), metadata={"source": "x"})


def test_changing_metadata_rewrites_unchanged_files(store: QdrantStore, tmp_path: Path) -> None:
    write_docs(tmp_path / "docs", n=2)
    Ingestor(store, HashingEmbedder(), metadata={"team": "a"}).ingest([tmp_path / "docs"], "docs")
    report = Ingestor(store, HashingEmbedder(), metadata={"team": "b"}).ingest([tmp_path / "docs"], "docs")
    assert report.files == 2
    assert {
        p.metadata["team"] for p in Retriever(store, HashingEmbedder(), "docs", k=50)(query="topic").passages
    } == {"b"}


def test_jsonl_records_are_chunks_with_their_fields(store: QdrantStore, tmp_path: Path) -> None:
    path = tmp_path / "faq.jsonl"
    records = [
        {"q": "refund", "answer": "Refunds take five days.", "source": "crm", "priority": 2},
        {"q": "hours", "answer": "We open at nine.", "priority": 1},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records))
    report = Ingestor(store, HashingEmbedder(), text_field="answer").ingest([path], "faq")
    assert report.chunks == 2
    passages = Retriever(store, HashingEmbedder(), "faq")(query="refunds", filter={"priority": 2}).passages
    assert [p.text for p in passages] == ["Refunds take five days."]
    meta = passages[0].metadata
    assert (meta["q"], meta["record_source"], meta["line"], meta["source"]) == (
        "refund",
        "crm",
        1,
        path.resolve().as_posix(),
    )


def test_sample_corpus_ingests(store: QdrantStore) -> None:
    report = Ingestor(store, HashingEmbedder()).ingest([sample_corpus_dir()], "sample")
    assert report.files == 16 and not report.skipped
    assert report.chunks == store.count("sample") >= 40
