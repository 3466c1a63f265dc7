"""Ingest throughput of ``geode ingest``'s pipeline against calling sentence-transformers directly.

A corpus of >= 5,000 chunks is generated from the sample corpus' sentences (seeded shuffles into
Markdown files with headings), then, in the same process, with the same loaded all-MiniLM-L6-v2 model:

- ``direct``: ``SentenceTransformer.encode(all_chunk_texts, batch_size=64, normalize_embeddings=True)``,
  one call over exactly the texts Geode embeds (the anchor: the model's own best case, nothing stored);
- ``Geode``: ``Ingestor.ingest(folder)`` into the default embedded store (qdrant-edge): reading,
  chunking, embedding, writing and the index build.

Figures: chunks/s for direct; for Geode, chunks/s of embedding + writing (``write_seconds``) and of the
whole run. Rounds alternate direct and Geode so machine load hits both alike. Target: Geode's embed + write
throughput >= 0.9 x direct.

Each side is also timed in CPU seconds of this process (``time.process_time``): on a machine shared with
other jobs, wall-clock throughput of a pass lasting minutes swings with everyone else's load, while the
CPU time the work takes does not (much). ``--threads 1`` makes CPU time a clean measure: torch's extra
worker threads spin while waiting for a core, which bills CPU time without doing work.

Run: ``.venv/bin/python benchmarks/bench_ingest.py [--files 360] [--rounds 1] [--threads N] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from geode.retrieval import Chunker, EdgeStore, Ingestor, SentenceTransformerEmbedder, sample_corpus_dir
from geode.retrieval.ingest import Phase
from geode.retrieval.loaders import LoadedFile, discover, load_file

console = Console(width=160)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@dataclass
class Round:
    direct_chunks_per_s: float
    geode_write_chunks_per_s: float
    geode_total_chunks_per_s: float
    geode_total_seconds: float
    index_seconds: float
    direct_chunks_per_cpu_s: float
    geode_write_chunks_per_cpu_s: float

    @property
    def ratio(self) -> float:
        return self.geode_write_chunks_per_s / self.direct_chunks_per_s

    @property
    def cpu_ratio(self) -> float:
        return self.geode_write_chunks_per_cpu_s / self.direct_chunks_per_cpu_s


@dataclass
class GeodeRun:
    write_chunks_per_s: float
    total_chunks_per_s: float
    total_seconds: float
    index_seconds: float
    write_chunks_per_cpu_s: float


def sentence_pool() -> list[str]:
    pool: list[str] = []
    for path in sorted(sample_corpus_dir().glob("*.md")):
        for line in path.read_text().split("\n\n"):
            if line.startswith(("#", "|", "-")):
                continue
            pool.extend(s for s in _SENTENCE.split(" ".join(line.split())) if len(s) > 30)
    return pool


def make_corpus(folder: Path, files: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    pool = sentence_pool()
    for i in range(files):
        parts = [f"# Handbook volume {i}"]
        for s in range(5):
            parts.append(f"## Topic {s} of volume {i}")
            for _ in range(4):
                parts.append(" ".join(rng.choice(pool) for _ in range(5)))
        (folder / f"volume-{i:04d}.md").write_text("\n\n".join(parts) + "\n")


def chunk_texts(folder: Path, chunker: Chunker) -> list[str]:
    files, _ = discover([folder])
    texts: list[str] = []
    for path in files:
        loaded = load_file(path)
        assert isinstance(loaded, LoadedFile)
        for section in loaded.sections:
            texts.extend(chunker.chunk(section))
    return texts


def run_direct(embedder: SentenceTransformerEmbedder, texts: list[str]) -> tuple[float, float]:
    """Chunks per wall second and per CPU second of one ``encode`` over every chunk."""
    with console.status(f"direct: encoding {len(texts):,} chunks with sentence-transformers..."):
        started, cpu_started = time.perf_counter(), time.process_time()
        embedder.model.encode(texts, batch_size=embedder.batch_size, normalize_embeddings=True)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return len(texts) / seconds, len(texts) / cpu_seconds


def run_geode(embedder: SentenceTransformerEmbedder, folder: Path, chunker: Chunker) -> GeodeRun:
    with tempfile.TemporaryDirectory() as tmp:
        store = EdgeStore(Path(tmp) / "store")
        tasks: dict[Phase, TaskID] = {}
        index_started: list[float] = []
        index_seconds: list[float] = []
        # CPU time of the embed + write phase: from its first progress report (0 done) to its last.
        write_cpu: list[float] = []
        with Progress(
            TextColumn("Geode: {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:

            def on_progress(phase: Phase, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = progress.add_task(phase, total=total)
                progress.update(tasks[phase], completed=done, total=total)
                if phase == "embed" and (done == 0 or done == total):
                    write_cpu.append(time.process_time())
                if phase == "index":
                    (index_started if done == 0 else index_seconds).append(time.perf_counter())

            try:
                report = Ingestor(store, embedder, chunker=chunker).ingest(
                    [folder], "bench", on_progress=on_progress
                )
            finally:
                store.close()
        index = index_seconds[0] - index_started[0] if index_started and index_seconds else 0.0
        return GeodeRun(
            write_chunks_per_s=report.chunks_per_second,
            total_chunks_per_s=report.chunks / report.seconds,
            total_seconds=report.seconds,
            index_seconds=index,
            write_chunks_per_cpu_s=report.chunks / (write_cpu[-1] - write_cpu[0]),
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Ingest throughput: Geode's pipeline vs sentence-transformers."
    )
    parser.add_argument("--files", type=int, default=360, help="generated Markdown files (~14 chunks each)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_start = os.getloadavg()[0]
    embedder = SentenceTransformerEmbedder(threads=args.threads)
    chunker = Chunker()
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "corpus"
        folder.mkdir()
        make_corpus(folder, args.files)
        texts = chunk_texts(folder, chunker)
        mean_chars = statistics.mean(len(t) for t in texts)
        console.print(
            f"corpus: {args.files} files, {len(texts):,} chunks, mean {mean_chars:.0f} characters per chunk"
        )
        with console.status("loading the model and warming up..."):
            embedder.embed_documents(texts[:128])
        for r in range(args.rounds):
            if r % 2 == 0:
                direct = run_direct(embedder, texts)
                geode = run_geode(embedder, folder, chunker)
            else:
                geode = run_geode(embedder, folder, chunker)
                direct = run_direct(embedder, texts)
            rounds.append(
                Round(
                    direct_chunks_per_s=direct[0],
                    geode_write_chunks_per_s=geode.write_chunks_per_s,
                    geode_total_chunks_per_s=geode.total_chunks_per_s,
                    geode_total_seconds=geode.total_seconds,
                    index_seconds=geode.index_seconds,
                    direct_chunks_per_cpu_s=direct[1],
                    geode_write_chunks_per_cpu_s=geode.write_chunks_per_cpu_s,
                )
            )

    table = Table(
        title=f"ingest throughput, all-MiniLM-L6-v2 on CPU ({os.cpu_count()} cores), {len(texts):,} chunks"
    )
    for column in (
        "round",
        "direct chunks/s",
        "Geode embed+write chunks/s",
        "Geode / direct",
        "direct chunks/CPU-s",
        "Geode chunks/CPU-s",
        "Geode / direct (CPU)",
        "Geode whole run chunks/s",
        "Geode seconds",
        "index build s",
    ):
        table.add_column(column, justify="right")
    for i, r in enumerate(rounds, start=1):
        table.add_row(
            str(i),
            f"{r.direct_chunks_per_s:.1f}",
            f"{r.geode_write_chunks_per_s:.1f}",
            f"{r.ratio:.2f}",
            f"{r.direct_chunks_per_cpu_s:.1f}",
            f"{r.geode_write_chunks_per_cpu_s:.1f}",
            f"{r.cpu_ratio:.2f}",
            f"{r.geode_total_chunks_per_s:.1f}",
            f"{r.geode_total_seconds:.1f}",
            f"{r.index_seconds:.1f}",
        )
    console.print(table)
    ratio = statistics.median(r.ratio for r in rounds)
    cpu_ratio = statistics.median(r.cpu_ratio for r in rounds)
    console.print(
        f"median Geode/direct: wall {ratio:.2f} (target >= 0.90: {'met' if ratio >= 0.9 else 'NOT met'}), "
        f"CPU time {cpu_ratio:.2f} ({'met' if cpu_ratio >= 0.9 else 'NOT met'})"
    )
    console.print(f"load average (1 min) at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f}")
    if args.json:
        out = {
            "chunks": len(texts),
            "threads": args.threads,
            "rounds": [asdict(r) | {"ratio": r.ratio, "cpu_ratio": r.cpu_ratio} for r in rounds],
        }
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
