"""Retrieval recall of the helpdesk questions' gold answers, per corpus layout: is the answer in the top k?

The demo's agent and workflow answer from the passages a search returns, so a question whose gold answer is
not in them cannot be answered. For each of the 71 helpdesk questions this searches the ``helpdesk``
collection with the question and checks whether the gold answer is in the top ``k`` passages (a number:
among the numbers a passage states; text: whole-token containment, as the metric does). It also counts
how many returned passages are code (a fenced block, or lines of Python): a small model copies code into
its answers and tool arguments.

Layouts (same embedder, all-MiniLM-L6-v2, same chunk size):

- ``with code``: Geode's docs chunked as they are, code blocks included (the demo before this change);
- ``prose only``: the docs' fenced code blocks left out of the chunks (what ``geode demo`` ingests now);
- ``shop only``: Geode's docs left out (``--no-docs``): the floor for the docs questions.

Run: ``.venv/bin/python benchmarks/bench_helpdesk_recall.py [--k 1 2 3] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from geode.evals.metrics import normalize_text
from geode.examples import helpdesk
from geode.examples.helpdesk.corpus import helpdesk_chunker
from geode.examples.helpdesk.metric import numbers_in
from geode.retrieval import Chunker, Ingestor, QdrantStore, Retriever, SentenceTransformerEmbedder

_CODE = re.compile(r"```|^\s*(?:def |class |import |from \w+ import |>>> )", re.MULTILINE)


@dataclass
class Result:
    layout: str
    chunks: int
    recall: dict[int, int]
    """k -> questions whose gold answer is in the top k."""
    code_in_top2: int
    """Passages among all questions' top 2 that are code."""
    misses_top2: list[str]


def contains(gold: str, kind: str, text: str) -> bool:
    """The gold answer is stated in ``text`` (numerically for numbers, whole tokens for text)."""
    if kind == "number":
        value = float(gold.replace(",", "").lstrip("$"))
        return any(abs(value - n) < 1e-9 for n in numbers_in(text))
    want, have = normalize_text(gold).split(), normalize_text(text).split()
    return any(have[i : i + len(want)] == want for i in range(len(have) - len(want) + 1))


def measure(
    layout: str, chunker: Chunker, include_docs: bool, ks: list[int], embedder: SentenceTransformerEmbedder
) -> Result:
    store = QdrantStore.memory()
    Ingestor(store, embedder, chunker=chunker).ingest(
        helpdesk.corpus_paths(include_docs=include_docs), helpdesk.COLLECTION
    )
    retriever = Retriever(store, embedder, helpdesk.COLLECTION, k=max(ks))
    recall = dict.fromkeys(ks, 0)
    code = 0
    misses: list[str] = []
    for q in helpdesk.load_questions():
        passages = [p.text for p in retriever(query=q.question, k=max(ks)).passages]
        for k in ks:
            recall[k] += any(contains(q.answer, q.kind, text) for text in passages[:k])
        code += sum(1 for text in passages[:2] if _CODE.search(text))
        if not any(contains(q.answer, q.kind, text) for text in passages[:2]):
            misses.append(f"{q.id} ({q.source})")
    return Result(layout, store.count(helpdesk.COLLECTION), recall, code, misses)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 3, 5])
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()
    embedder = SentenceTransformerEmbedder()
    results = [
        measure("with code", Chunker(), True, opts.k, embedder),
        measure("prose only", helpdesk_chunker(), True, opts.k, embedder),
        measure("shop only", helpdesk_chunker(), False, opts.k, embedder),
    ]
    n = len(helpdesk.load_questions())
    table = Table(title=f"helpdesk gold answer in the top k ({n} questions; load {os.getloadavg()[0]:.1f})")
    for column in ["layout", "chunks", *[f"top {k}" for k in opts.k], "code passages in top 2"]:
        table.add_column(column, justify="left" if column == "layout" else "right")
    for r in results:
        table.add_row(r.layout, str(r.chunks), *[f"{r.recall[k]}/{n}" for k in opts.k], str(r.code_in_top2))
    Console(width=160).print(table)
    for r in results:
        print(f"{r.layout}: missed in the top 2: {', '.join(r.misses_top2)}")
    if opts.json:
        opts.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
