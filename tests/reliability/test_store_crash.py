"""Plan row T34: the embedded store killed with SIGKILL mid-ingestion, again and again.

The plan kills a Qdrant *server* (probability 0.3 every 5 s) during indexing; there is no server binary
here, and the embedded engines run inside the ingesting process, so what is killed is that process: a
child running ``Ingestor`` on each embedded engine, ``kill -9`` at a varying point after it has written
a few groups, three times in a row, each run resuming the last. A wrapper in the child records every id
whose ``upsert`` returned (the acknowledged writes) before the next one starts.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from geode.retrieval import Chunker, EdgeStore, Ingestor, QdrantStore, Store
from geode.testing import HashingEmbedder

pytestmark = pytest.mark.reliability

ROUNDS = 3
NEW_ACKS_BEFORE_KILL = 16  # two groups of eight chunks written by this run

_CHILD = """
    import os, time
    from geode.retrieval import Chunker, EdgeStore, Ingestor, QdrantStore
    from geode.testing import HashingEmbedder

    class Slow(HashingEmbedder):
        def embed_documents(self, texts):
            time.sleep(0.02)  # about as long as a write, so kills land inside writes as well as between
            return super().embed_documents(texts)

    store = EdgeStore({root!r}) if {engine!r} == "edge" else QdrantStore.local({root!r})
    write = store.upsert

    def acknowledged_upsert(collection, points):
        with open({inflight!r}, "w") as f:  # non-empty while a write is under way
            f.write("writing")
        write(collection, points)
        with open({ack!r}, "a") as f:  # only after the store said the write is done
            f.write("".join(p.id + "\\n" for p in points))
            f.flush()
            os.fsync(f.fileno())
        open({inflight!r}, "w").close()

    store.upsert = acknowledged_upsert
    Ingestor(store, Slow(), chunker=Chunker(120, 0), batch_size=8).ingest([{docs!r}], "docs")
    store.close()
"""


def _open(engine: str, root: Path) -> Store:
    return EdgeStore(root) if engine == "edge" else QdrantStore.local(root)


def _write_docs(folder: Path, n: int = 60) -> None:
    folder.mkdir()
    for i in range(n):
        body = " ".join(f"File {i} sentence {j} is about topic {i}." for j in range(12))
        (folder / f"f{i:02d}.md").write_text(f"# File {i}\n\n{body}\n")


def _acks(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _all_ids(store: Store) -> list[str]:
    count = store.count("docs")
    hits = store.search("docs", HashingEmbedder().embed_query("anything"), k=count + 10)
    return [hit.id for hit in hits]


@pytest.mark.parametrize("engine", ["edge", "qdrant-local"])
def test_t34_sigkill_mid_ingestion_loses_no_acknowledged_point_and_resumes(
    tmp_path: Path, engine: str
) -> None:
    """Injects: ``kill -9`` of the ingesting process, 3 times, each at a random point 0-0.15 s after its
    run has written two more groups; then a normal run.
    Must hold: after every kill the store opens (no corrupt state, the dead process's lock is gone),
    every acknowledged id is there, no id is duplicated or foreign (all are ids the documents produce)
    and search answers; the final run completes the collection to exactly the reference's points and a
    run after it writes nothing."""
    docs, root = tmp_path / "docs", tmp_path / "store"
    ack, inflight = tmp_path / "acked", tmp_path / "inflight"
    _write_docs(docs)
    reference = QdrantStore.memory()
    expected = Ingestor(reference, HashingEmbedder(), chunker=Chunker(120, 0)).ingest([docs], "docs").chunks
    valid = set(_all_ids(reference))
    assert len(valid) == expected
    rng = random.Random(34)
    kept: list[int] = []
    mid_write = 0
    started = time.perf_counter()
    for _ in range(ROUNDS):
        before = len(_acks(ack))
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(_CHILD).format(
                    root=str(root), engine=engine, docs=str(docs), ack=str(ack), inflight=str(inflight)
                ),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while len(_acks(ack)) < before + NEW_ACKS_BEFORE_KILL:
            if child.poll() is not None:
                raise AssertionError(f"the child ended before the kill: {child.communicate()}")
            assert time.monotonic() < deadline, "the child wrote nothing in 120 s"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.15))  # sometimes mid-write, sometimes between writes
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL
        mid_write += inflight.exists() and inflight.read_text() == "writing"

        store = _open(engine, root)  # opens: no corrupt state, no stale lock
        try:
            acked = set(_acks(ack))
            ids = _all_ids(store)
            assert len(ids) == len(set(ids)) == store.count("docs"), "duplicate points"
            assert set(ids) <= valid, f"phantom ids: {sorted(set(ids) - valid)[:3]}"
            missing = acked - set(ids)
            assert not missing, f"{len(missing)} acknowledged points lost"
            assert len(store.retrieve("docs", sorted(acked))) == len(acked)
            assert store.search("docs", HashingEmbedder().embed_query("topic 3"), k=3)
            kept.append(len(ids))
        finally:
            store.close()

    store = _open(engine, root)
    try:
        report = Ingestor(store, HashingEmbedder(), chunker=Chunker(120, 0)).ingest([docs], "docs")
        assert report.unchanged > 0
        assert sorted(_all_ids(store)) == sorted(valid)
        again = Ingestor(store, HashingEmbedder(), chunker=Chunker(120, 0)).ingest([docs], "docs")
        assert (again.files, again.chunks, again.unchanged) == (0, 0, 60)
    finally:
        store.close()
    print(
        f"\n[figure] T34 {engine}: {ROUNDS} kill -9 mid-ingestion ({mid_write} inside a write), points kept after each: {kept} of "
        f"{expected}; acknowledged {len(set(_acks(ack)))}, lost 0, duplicates 0, phantoms 0; the resumed run "
        f"wrote {report.chunks} chunks ({report.unchanged} files unchanged); {time.perf_counter() - started:.1f} s"
    )
