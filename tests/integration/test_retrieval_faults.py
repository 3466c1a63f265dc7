"""Retrieval under faults: a Qdrant server that is down or never answers, a store held by another process,
and ingestion killed mid-run (graceful Ctrl-C and a hard kill)."""

from __future__ import annotations

import http.server
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from geode.errors import StoreUnavailableError
from geode.retrieval import Chunker, EdgeStore, Ingestor, QdrantStore, Retriever
from geode.testing import HashingEmbedder

TIMEOUT_S = 1.0
SLACK_S = 2.0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.close()
    for conn in held:
        conn.close()


def test_server_down_fails_fast_with_a_clear_error() -> None:
    store = QdrantStore.remote(f"http://127.0.0.1:{_closed_port()}", timeout_s=TIMEOUT_S)
    started = time.monotonic()
    with pytest.raises(
        StoreUnavailableError, match=r"Qdrant server at http://127\.0\.0\.1:\d+ is unreachable"
    ):
        store.list_collections()
    assert time.monotonic() - started < TIMEOUT_S + SLACK_S


@pytest.mark.parametrize("operation", ["list", "search", "retriever", "ingest"])
def test_slow_server_fails_within_the_timeout(silent_server: int, operation: str, tmp_path: Path) -> None:
    store = QdrantStore.remote(f"http://127.0.0.1:{silent_server}", timeout_s=TIMEOUT_S)
    (tmp_path / "a.md").write_text("# A\n\nSome text.\n")
    calls = {
        "list": lambda: store.list_collections(),
        "search": lambda: store.search("docs", [1.0, 0.0], k=3),
        "retriever": lambda: Retriever(store, HashingEmbedder(), "docs")(query="text"),
        "ingest": lambda: Ingestor(store, HashingEmbedder()).ingest([tmp_path], "docs"),
    }
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=f"did not answer within {TIMEOUT_S:g} s"):
        calls[operation]()
    elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT_S + SLACK_S, f"took {elapsed:.1f}s with a {TIMEOUT_S}s timeout"


def _python(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("child did not get ready in time")
        time.sleep(0.05)


def test_store_held_by_another_process(tmp_path: Path) -> None:
    root, ready = tmp_path / "store", tmp_path / "ready"
    child = _python(
        f"""
        import time, pathlib
        from geode.retrieval import EdgeStore
        store = EdgeStore({str(root)!r})
        pathlib.Path({str(ready)!r}).touch()
        time.sleep(120)
        """
    )
    try:
        _wait_for(ready, child)
        with pytest.raises(StoreUnavailableError, match="locked by another process"):
            EdgeStore(root)
    finally:
        child.kill()
        child.communicate()  # reaps it and closes its pipes
    EdgeStore(root).close()  # the lock dies with its process


_SLOW_INGEST = """
    import pathlib, signal, sys, time
    from geode.retrieval import Chunker, EdgeStore, Ingestor
    from geode.testing import HashingEmbedder

    # Ctrl-C as on a terminal: a test run started in the background (nohup, `&`) hands its children
    # SIGINT ignored, and the child would then finish instead of being interrupted.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    class Slow(HashingEmbedder):
        calls = 0

        def embed_documents(self, texts):
            # Ready once earlier groups have been written (each group is stored before the next is
            # embedded): a fixed sleep in the parent was not enough on a loaded machine.
            Slow.calls += 1
            if Slow.calls == 3:
                pathlib.Path({ready!r}).touch()
            time.sleep(0.5)  # many groups still to go when the signal comes, however slow the parent
            return super().embed_documents(texts)

    store = EdgeStore({root!r})
    try:
        Ingestor(store, Slow(), chunker=Chunker(120, 0), batch_size=4).ingest([{docs!r}], "docs")
    finally:
        store.close()
"""


def _write_docs(folder: Path, n: int = 30) -> None:
    folder.mkdir()
    for i in range(n):
        body = " ".join(f"File {i} sentence {j} is about topic {i}." for j in range(12))
        (folder / f"f{i:02d}.md").write_text(f"# File {i}\n\n{body}\n")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupted_ingestion_loses_nothing_and_resumes(tmp_path: Path, sig: signal.Signals) -> None:
    docs, root, ready = tmp_path / "docs", tmp_path / "store", tmp_path / "ready"
    _write_docs(docs)
    child = _python(_SLOW_INGEST.format(ready=str(ready), root=str(root), docs=str(docs)))
    _wait_for(ready, child)  # two groups have landed
    child.send_signal(sig)
    out, err = child.communicate(timeout=60)
    assert child.returncode != 0, (
        f"the child was not interrupted mid-run: stdout {out!r}, stderr {err[-2000:]!r}"
    )

    store = EdgeStore(root)
    try:
        kept = store.count("docs")
        assert kept > 0, "groups written before the interrupt are kept"
        report = Ingestor(store, HashingEmbedder(), chunker=_chunker(), batch_size=4).ingest([docs], "docs")
        assert report.unchanged > 0 and report.files > 0
        reference = Ingestor(QdrantStore.memory(), HashingEmbedder(), chunker=_chunker()).ingest(
            [docs], "docs"
        )
        assert store.count("docs") == reference.chunks
        again = Ingestor(store, HashingEmbedder(), chunker=_chunker()).ingest([docs], "docs")
        assert (again.files, again.unchanged) == (0, 30)
    finally:
        store.close()


def _chunker() -> Chunker:
    return Chunker(120, 0)  # the child's chunking


def test_server_api_key_is_sent_and_a_refusal_says_which_setting_to_check() -> None:
    """A server that refuses the key: the request carried it, and the error names the setting."""
    seen: list[str | None] = []

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("api-key"))
            body = b'{"status": {"error": "Must provide an API key or an Authorization bearer token"}}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # qdrant-client warns about an API key over plain HTTP
            store = QdrantStore.remote(
                f"http://127.0.0.1:{server.server_port}", api_key="k-123", timeout_s=TIMEOUT_S
            )
            with pytest.raises(StoreUnavailableError, match=r"refused the request \(HTTP 401\)") as caught:
                store.list_collections()
        assert "GEODE_RETRIEVAL_QDRANT_API_KEY" in str(caught.value.hint)
        assert seen and seen[0] == "k-123"
        store.close()
    finally:
        server.shutdown()
        server.server_close()
