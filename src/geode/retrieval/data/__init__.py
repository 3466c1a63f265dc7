"""The sample corpus and labelled query set shipped with Geode.

``corpus/`` is the help centre of a fictional outdoor-gear shop, Northwind Outfitters (16 short Markdown
pages written for Geode). ``queries.jsonl`` holds 53 questions phrased the way customers ask them, each
labelled with the page that answers it and a phrase of the answer; a retrieved chunk is relevant if it comes
from that page and contains that phrase (whitespace-normalised). ``benchmarks/bench_retrieval_quality.py``
measures recall@5 and MRR on it; ``geode ingest`` on the corpus gives a ready-made collection to try.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["LabelledQuery", "load_queries", "sample_corpus_dir", "sample_queries_path"]


def sample_corpus_dir() -> Path:
    """The folder of the sample corpus (Markdown files)."""
    return Path(str(resources.files(__name__) / "corpus"))


def sample_queries_path() -> Path:
    """The labelled query set (JSONL: ``id``, ``query``, ``source``, ``answer``)."""
    return Path(str(resources.files(__name__) / "queries.jsonl"))


@dataclass(frozen=True)
class LabelledQuery:
    """A query with the file that answers it and a phrase the relevant chunk contains."""

    id: str
    query: str
    source: str
    """File name of the answering page, e.g. ``returns.md``."""
    answer: str

    def is_relevant(self, source: str | None, text: str) -> bool:
        """Whether a retrieved chunk (its source path and text) answers this query."""
        if source is None or Path(source).name != self.source:
            return False
        return " ".join(self.answer.split()).lower() in " ".join(text.split()).lower()


def load_queries(path: Path | None = None) -> list[LabelledQuery]:
    """The labelled queries, in file order."""
    lines = (path or sample_queries_path()).read_text().splitlines()
    return [LabelledQuery(**json.loads(line)) for line in lines if line.strip()]
