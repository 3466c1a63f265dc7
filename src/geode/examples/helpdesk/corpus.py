"""The helpdesk application's knowledge corpus and its question set with gold answers.

The corpus has three parts, ingested together into one collection (:data:`COLLECTION`):

- the help centre of Northwind Outfitters, a fictional outdoor-gear shop (``geode.retrieval``'s sample
  corpus: returns, shipping, membership, rentals...);
- the shop's product catalogue (``data/catalog/``: tents, sleeping gear, stoves, packs, boots, jackets,
  filters and lights, bundles) with prices and specifications;
- Geode's own documentation (the ``docs/`` pages: in a wheel they ship as package data, in a source
  checkout they are read from the repository's ``docs/`` folder).

The collection is chunked by :func:`helpdesk_chunker`, which leaves the docs' code blocks out: the
questions are a customer's, and code passages (test snippets, scripted models) ranked above prose for
some of them, where a small model copied them into its answers and search arguments
(``benchmarks/bench_helpdesk_recall.py`` measures recall and code passages both ways).

``data/questions.jsonl`` holds the questions, each with a gold answer that can be copied from one
passage or computed from retrieved facts (``"What do two Ridgeline tents cost with expedited
shipping?"``), the page that answers it, and a fixed ``train`` / ``heldout`` split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import dspy

from geode.errors import DatasetError
from geode.evals.dataset import Dataset, Record
from geode.retrieval.chunking import Chunker
from geode.retrieval.data import sample_corpus_dir

__all__ = [
    "COLLECTION",
    "Question",
    "Split",
    "catalog_dir",
    "corpus_paths",
    "docs_dir",
    "helpdesk_chunker",
    "load_questions",
    "pick",
    "questions_dataset",
    "questions_path",
]

COLLECTION = "helpdesk"
"""The collection the demo ingests the corpus into."""
CHUNKING = {"chunking": "prose"}
"""Metadata on every chunk of the collection: a store ingested with another chunking is re-embedded."""

Split = Literal["train", "heldout"]
Kind = Literal["number", "text"]
_KINDS: frozenset[str] = frozenset({"number", "text"})
_SPLITS: frozenset[str] = frozenset({"train", "heldout"})


def _data_dir() -> Path:
    return Path(str(resources.files("geode.examples.helpdesk").joinpath("data")))


def catalog_dir() -> Path:
    """The product catalogue (Markdown pages, one product per section)."""
    return _data_dir() / "catalog"


def docs_dir() -> Path | None:
    """Geode's documentation pages: packaged in a wheel, else the source checkout's ``docs/``; ``None`` if neither."""
    packaged = _data_dir() / "geode-docs"
    if packaged.is_dir():
        return packaged
    # src/geode/examples/helpdesk/corpus.py -> the repository root holds docs/ next to mkdocs.yml.
    root = Path(__file__).resolve().parents[4]
    checkout = root / "docs"
    if checkout.is_dir() and (root / "mkdocs.yml").is_file():
        return checkout
    return None


def corpus_paths(*, include_docs: bool = True) -> list[Path]:
    """The folders to ingest: help centre, catalogue and (when available) Geode's docs."""
    paths = [sample_corpus_dir(), catalog_dir()]
    docs = docs_dir() if include_docs else None
    if docs is not None:
        paths.append(docs)
    return paths


def helpdesk_chunker() -> Chunker:
    """How the corpus is chunked: the default sizes, fenced code blocks left out."""
    return Chunker(code=False)


def questions_path() -> Path:
    """The question set (JSON Lines: ``id``, ``question``, ``answer``, ``kind``, ``source``, ``split``)."""
    return _data_dir() / "questions.jsonl"


@dataclass(frozen=True)
class Question:
    """One question of the helpdesk task with its gold answer."""

    id: str
    question: str
    answer: str
    """The gold answer: a number (``"498"``) or a short phrase the right answer contains."""
    kind: Kind
    """``number``: the answer must state this number; ``text``: it must contain this phrase."""
    source: str
    """The page(s) holding the facts, e.g. ``tents.md; shipping.md``."""
    split: Split

    def example(self) -> dspy.Example:
        """A ``dspy.Example`` with ``question`` as input and ``answer`` as label."""
        return dspy.Example(question=self.question, answer=self.answer).with_inputs("question")


def _question(obj: object, where: str) -> Question:
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a JSON object")
    fields = {"id", "question", "answer", "kind", "source", "split"}
    if set(obj) != fields:
        raise DatasetError(f"{where}: expected exactly the fields {sorted(fields)}, got {sorted(obj)}")
    if obj["kind"] not in _KINDS or obj["split"] not in _SPLITS:
        raise DatasetError(f"{where}: kind must be number/text and split train/heldout")
    if not all(isinstance(obj[k], str) and obj[k].strip() for k in fields):
        raise DatasetError(f"{where}: every field must be a non-empty string")
    return Question(**obj)


def load_questions(split: Split | None = None, *, path: Path | None = None) -> list[Question]:
    """The questions in file order, optionally one split only.

    Raises:
        DatasetError: A line is not a well-formed question, or two share an id.
    """
    source = path or questions_path()
    questions: list[Question] = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            questions.append(_question(json.loads(line), f"{source}:{number}"))
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{source}: question ids repeat")
    return [q for q in questions if split is None or q.split == split]


def pick(questions: list[Question], n: int | None) -> list[Question]:
    """``n`` questions spread evenly over the list (so a small sample still mixes every kind); all if ``None``."""
    if n is None or n >= len(questions):
        return list(questions)
    if n < 1:
        return []
    step = len(questions) / n
    return [questions[int(i * step)] for i in range(n)]


def questions_dataset(questions: list[Question], name: str) -> Dataset:
    """The questions as a :class:`~geode.evals.dataset.Dataset` (input ``question``, label ``answer``)."""
    return Dataset.from_records(
        [
            Record(inputs={"question": q.question}, outputs={"answer": q.answer}, id=q.id, split=q.split)
            for q in questions
        ],
        name=name,
    )
