"""A dataset's health: size, diversity, duplicates (exact and near, by MinHash), label balance, scores.

:meth:`~geode.evals.dataset.Dataset.health` builds the :class:`HealthReport`; trace mining reuses the
near-duplicate search (:func:`_near_duplicates`) to drop runs whose inputs nearly repeat.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from geode.evals.dataset_schema import MIN_HELDOUT, MIN_TRAIN, Record, _canonical, _jsonable
from geode.evals.metrics import normalize_text

if TYPE_CHECKING:
    from geode.evals.dataset import Dataset

__all__ = ["HealthReport", "LabelBalance", "ScoreSpread"]


@dataclass(frozen=True)
class LabelBalance:
    """How one output field's values are spread."""

    field: str
    distinct: int
    categorical: bool
    """True when the field has few distinct values (a class label), so balance is meaningful."""
    top: tuple[tuple[str, int], ...]
    """The most common values and their counts."""
    majority_share: float


@dataclass(frozen=True)
class ScoreSpread:
    """The spread of annotation scores (how hard the examples were for the traced program)."""

    count: int
    mean: float
    minimum: float
    median: float
    maximum: float
    histogram: tuple[int, ...]
    """Counts in five equal buckets between the lowest and highest score."""


@dataclass(frozen=True)
class HealthReport:
    """What a dataset looks like before anything is optimized on it."""

    dataset_id: str
    size: int
    splits: Mapping[str, int]
    input_fields: tuple[str, ...]
    output_fields: tuple[str, ...]
    unique_inputs: int
    distinct_bigrams: float
    """Distinct input word bigrams over all bigrams: low means repetitive inputs."""
    exact_duplicates: int
    """Records whose normalised inputs repeat an earlier record's."""
    conflicting_duplicates: int
    """Groups of records with the same inputs but different expected outputs."""
    near_duplicates: tuple[tuple[int, int, float], ...]
    """Pairs of record indices whose inputs are nearly the same (word Jaccard >= 0.8)."""
    leaked_inputs: int
    """Inputs that appear in both the train and the held-out split (explicit splits only)."""
    unlabelled: int
    label_balance: tuple[LabelBalance, ...]
    score_spread: ScoreSpread | None
    warnings: tuple[str, ...]
    """What is wrong with the data for any use (scoring, comparing, mining)."""
    compile_warning: str | None = None
    """Why it is too small to recompile on (``geode compile`` refuses it); said only where compiling."""

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-able data."""
        return _jsonable(
            {
                "dataset_id": self.dataset_id,
                "size": self.size,
                "splits": dict(self.splits),
                "input_fields": list(self.input_fields),
                "output_fields": list(self.output_fields),
                "unique_inputs": self.unique_inputs,
                "distinct_bigrams": round(self.distinct_bigrams, 4),
                "exact_duplicates": self.exact_duplicates,
                "conflicting_duplicates": self.conflicting_duplicates,
                "near_duplicates": [list(p) for p in self.near_duplicates],
                "leaked_inputs": self.leaked_inputs,
                "unlabelled": self.unlabelled,
                "label_balance": [b.__dict__ for b in self.label_balance],
                "score_spread": self.score_spread.__dict__ if self.score_spread else None,
                "warnings": list(self.warnings),
                "compile_warning": self.compile_warning,
            }
        )


def _minhash_candidates(
    token_sets: Sequence[frozenset[str]], *, bands: int = 16, rows: int = 2
) -> set[tuple[int, int]]:
    # Locality-sensitive hashing keeps near-duplicate search roughly linear on large datasets; pairs it
    # proposes are verified with the exact Jaccard below. 16 bands of 2 rows catch pairs above ~0.6.
    rng = random.Random(1729)
    seeds = [rng.getrandbits(32) for _ in range(bands * rows)]
    buckets: dict[tuple[int, tuple[int, ...]], list[int]] = defaultdict(list)
    for idx, tokens in enumerate(token_sets):
        if not tokens:
            continue
        hashed = [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "big") for t in tokens]
        signature = [min((h ^ s) for h in hashed) for s in seeds]
        for band in range(bands):
            buckets[(band, tuple(signature[band * rows : (band + 1) * rows]))].append(idx)
    pairs: set[tuple[int, int]] = set()
    for members in buckets.values():
        if 1 < len(members) <= 200:
            for i, a in enumerate(members):
                for b in members[i + 1 :]:
                    pairs.add((a, b))
    return pairs


def _near_duplicates(
    records: Sequence[Record], by_input: Mapping[str, list[int]]
) -> list[tuple[int, int, float]]:
    firsts = [v[0] for v in by_input.values()]
    token_sets = [frozenset(records[i].input_text.split()) for i in firsts]
    near: list[tuple[int, int, float]] = []
    for a, b in sorted(_minhash_candidates(token_sets)):
        sa, sb = token_sets[a], token_sets[b]
        jaccard = len(sa & sb) / len(sa | sb) if sa | sb else 0.0
        if jaccard >= 0.8:
            near.append((firsts[a], firsts[b], round(jaccard, 3)))
    return near


def _label_balance(records: Sequence[Record], output_fields: Sequence[str]) -> list[LabelBalance]:
    balance: list[LabelBalance] = []
    for name in output_fields:
        values = [normalize_text(r.outputs[name]) for r in records if name in r.outputs]
        counts = Counter(values)
        distinct = len(counts)
        categorical = distinct <= max(2, min(20, len(values) // 3))
        top = tuple(counts.most_common(5))
        share = top[0][1] / len(values) if values else 0.0
        balance.append(LabelBalance(name, distinct, categorical, top, round(share, 4)))
    return balance


def _score_spread(records: Sequence[Record]) -> ScoreSpread | None:
    scores = sorted(r.score for r in records if r.score is not None)
    if not scores:
        return None
    lo, hi = scores[0], scores[-1]
    width = (hi - lo) / 5 or 1.0
    hist = [0] * 5
    for s in scores:
        hist[min(4, int((s - lo) / width))] += 1
    return ScoreSpread(
        count=len(scores),
        mean=round(sum(scores) / len(scores), 4),
        minimum=lo,
        median=scores[len(scores) // 2],
        maximum=hi,
        histogram=tuple(hist),
    )


def _health_warnings(report: HealthReport) -> tuple[str, ...]:
    size = report.size
    warnings: list[str] = []
    if size == 0:
        warnings.append("the dataset is empty")
    elif size < 30:
        warnings.append(f"only {size} examples: one example moves the score by {100 / size:.0f} points")
    if report.exact_duplicates:
        warnings.append(f"{report.exact_duplicates} record(s) repeat earlier inputs")
    if report.conflicting_duplicates:
        warnings.append(f"{report.conflicting_duplicates} input(s) have conflicting expected outputs")
    if report.leaked_inputs:
        warnings.append(f"{report.leaked_inputs} input(s) appear in both the train and held-out splits")
    if report.near_duplicates:
        warnings.append(f"{len(report.near_duplicates)} pair(s) of near-duplicate inputs")
    if report.unlabelled:
        warnings.append(
            f"{report.unlabelled} record(s) have no expected outputs (only metrics that need no labels work)"
        )
    for b in report.label_balance:
        if b.categorical and b.distinct > 1 and b.majority_share >= 0.8:
            warnings.append(
                f"{b.field!r} is imbalanced: {b.majority_share:.0%} of examples are {b.top[0][0]!r}"
            )
        if b.categorical and b.distinct == 1 and size > 1:
            warnings.append(f"{b.field!r} has a single value: a constant answer scores 100%")
    return tuple(warnings)


def _health(ds: Dataset) -> HealthReport:
    records = ds.records
    by_input: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_input[r.input_key].append(i)
    output_fields = tuple(sorted({k for r in records for k in r.outputs}))
    bigrams: list[tuple[str, str]] = []
    for r in records:
        bigrams.extend(itertools.pairwise(r.input_text.split()))
    report = HealthReport(
        dataset_id=ds.id,
        size=len(records),
        splits=dict(Counter(r.split or "unassigned" for r in records)),
        input_fields=tuple(sorted({k for r in records for k in r.inputs})),
        output_fields=output_fields,
        unique_inputs=len(by_input),
        distinct_bigrams=len(set(bigrams)) / len(bigrams) if bigrams else 0.0,
        exact_duplicates=sum(len(v) - 1 for v in by_input.values()),
        conflicting_duplicates=sum(
            1 for v in by_input.values() if len({_canonical(records[i].outputs) for i in v}) > 1
        ),
        near_duplicates=tuple(_near_duplicates(records, by_input)),
        leaked_inputs=sum(
            1 for v in by_input.values() if {records[i].split for i in v} >= {"train", "heldout"}
        ),
        unlabelled=sum(1 for r in records if not r.outputs),
        label_balance=tuple(_label_balance(records, output_fields)),
        score_spread=_score_spread(records),
        warnings=(),
    )
    compile_warning = (
        f"only {report.size} examples: compiling needs at least {MIN_TRAIN} to train and {MIN_HELDOUT} held out"
        if report.size < MIN_TRAIN + MIN_HELDOUT
        else None
    )
    return replace(report, warnings=_health_warnings(report), compile_warning=compile_warning)
