"""Eval datasets: a versioned JSON Lines schema, content-hash ids, deterministic splits, health reports.

A dataset file holds one JSON object per line. The first line may be a header; every other line is a
record::

    {"schema_version": 1, "name": "capitals", "description": "...", "metadata": {...}}
    {"inputs": {"question": "Capital of France?"}, "outputs": {"answer": "Paris"}}
    {"inputs": {"question": "..."}, "outputs": {...}, "trace_id": "...", "span_id": "...",
     "program_version": "...", "score": 0.0, "feedback": "wrong city", "split": "heldout"}

``outputs`` (or its alias ``labels``) holds the expected outputs; ``score`` and ``feedback`` carry an
annotation of the traced answer (``feedback`` reaches GEPA as textual feedback); ``split`` pins a record
to ``train`` or ``heldout``. Records may repeat ``schema_version``. Unknown fields are refused, so a
typo never silently drops a label.

A dataset's id is a hash of its records' content: the same examples give the same id wherever they
are stored, and a changed label gives a new id. Program versions record the id they were compiled and
scored on.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import dspy

from geode.errors import DatasetError
from geode.evals.metrics import FEEDBACK_FIELD, RESERVED_PREFIX, normalize_text

__all__ = [
    "MIN_HELDOUT",
    "MIN_TRAIN",
    "SCHEMA_VERSION",
    "Dataset",
    "DatasetSplit",
    "HealthReport",
    "LabelBalance",
    "Record",
    "ScoreSpread",
    "load_dataset",
]

SCHEMA_VERSION = 1
"""The dataset schema version this Geode reads and writes."""

MIN_TRAIN = 4
"""Fewest training examples ``geode compile`` accepts by default."""

MIN_HELDOUT = 5
"""Fewest held-out examples ``geode compile`` accepts by default: no optimizing without eval data."""

Split = Literal["train", "heldout"]
_SPLITS: dict[str, Split] = {"train": "train", "heldout": "heldout", "held-out": "heldout", "test": "heldout"}
_RECORD_FIELDS = frozenset(
    {
        "inputs",
        "outputs",
        "labels",
        "id",
        "trace_id",
        "span_id",
        "program_version",
        "score",
        "feedback",
        "split",
        "schema_version",
        "metadata",
    }
)
_HEADER_FIELDS = frozenset(
    {"schema_version", "name", "description", "metadata", "created_at", "source", "kind"}
)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _jsonable(dump())
    return str(value)


def _canonical(value: Any) -> str:
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- records --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One example: the program's inputs, the expected outputs, and where it came from."""

    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any] = field(default_factory=dict[str, Any])
    id: str | None = None
    """A caller-given id; :attr:`key` is the content hash either way."""
    trace_id: str | None = None
    """The trace this example was mined from."""
    span_id: str | None = None
    program_version: str | None = None
    """The program version that produced the traced answer."""
    score: float | None = None
    """An annotation score of the traced answer, in ``[0, 1]`` when it is a pass rate."""
    feedback: str | None = None
    """An annotator's explanation; GEPA reads it as textual feedback."""
    split: Split | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict[str, Any])

    @cached_property
    def key(self) -> str:
        """Content hash of inputs and outputs (16 hex digits)."""
        return _sha256(_canonical({"inputs": self.inputs, "outputs": self.outputs}))[:16]

    @cached_property
    def input_key(self) -> str:
        """Hash of the normalised inputs: equal for records asking the same thing."""
        text = _canonical({k: normalize_text(v) for k, v in self.inputs.items()})
        return _sha256(text)[:16]

    @property
    def input_text(self) -> str:
        """The inputs' values as one normalised string (for diversity and near-duplicate checks)."""
        return " ".join(normalize_text(self.inputs[k]) for k in sorted(self.inputs))

    def to_example(self) -> dspy.Example:
        """A ``dspy.Example`` with the inputs marked as inputs; ``feedback`` rides along as ``geode_feedback``."""
        fields: dict[str, Any] = {**self.inputs, **self.outputs}
        if self.feedback:
            fields[FEEDBACK_FIELD] = self.feedback
        return dspy.Example(**fields).with_inputs(*self.inputs.keys())

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object of the schema (empty optional fields left out)."""
        out: dict[str, Any] = {"inputs": _jsonable(self.inputs), "outputs": _jsonable(self.outputs)}
        for name in ("id", "trace_id", "span_id", "program_version", "score", "feedback", "split"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.metadata:
            out["metadata"] = _jsonable(self.metadata)
        return out

    @classmethod
    def from_example(cls, example: dspy.Example, *, split: Split | None = None) -> Record:
        """A record from a ``dspy.Example`` whose inputs are declared with ``with_inputs``."""
        if not getattr(example, "_input_keys", None):
            raise DatasetError(
                "a dspy.Example without declared inputs cannot become a dataset record",
                hint="call example.with_inputs('field', ...) first",
            )
        inputs = dict(example.inputs().items())
        outputs = {k: v for k, v in example.labels().items() if not k.startswith(RESERVED_PREFIX)}
        feedback = example.get(FEEDBACK_FIELD)
        return cls(inputs=inputs, outputs=outputs, feedback=feedback, split=split)

    @classmethod
    def from_json(cls, obj: Any, *, where: str) -> Record:
        """Validate one JSON object against the schema.

        Args:
            obj: The parsed JSON value.
            where: ``file:line`` for error messages.

        Raises:
            DatasetError: The object does not follow the schema; the message names the field.
        """
        if not isinstance(obj, dict):
            raise DatasetError(f"{where}: a record must be a JSON object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - _RECORD_FIELDS)
        if unknown:
            raise DatasetError(
                f"{where}: unknown field(s) {', '.join(map(repr, unknown))}",
                hint=f"a record may hold {', '.join(sorted(_RECORD_FIELDS))}; put anything else under 'metadata'",
            )
        _check_schema_version(obj.get("schema_version"), where)
        inputs, outputs = _check_fields(obj, where)
        score = obj.get("score")
        if score is not None and (
            isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score)
        ):
            raise DatasetError(f"{where}: 'score' must be a finite number, got {score!r}")
        split = _check_split(obj.get("split"), where)
        for name in ("id", "trace_id", "span_id", "program_version", "feedback"):
            value = obj.get(name)
            if value is not None and not isinstance(value, str):
                raise DatasetError(f"{where}: {name!r} must be a string, got {type(value).__name__}")
        metadata = obj.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise DatasetError(f"{where}: 'metadata' must be a JSON object")
        return cls(
            inputs=inputs,
            outputs=outputs,
            id=obj.get("id"),
            trace_id=obj.get("trace_id"),
            span_id=obj.get("span_id"),
            program_version=obj.get("program_version"),
            score=float(score) if score is not None else None,
            feedback=obj.get("feedback") or None,
            split=split,
            metadata=metadata,
        )


def _check_fields(obj: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    inputs = obj.get("inputs")
    if not isinstance(inputs, dict) or not inputs:
        raise DatasetError(f"{where}: 'inputs' must be a non-empty JSON object of the program's input fields")
    if "outputs" in obj and "labels" in obj:
        raise DatasetError(f"{where}: give 'outputs' or its alias 'labels', not both")
    outputs = obj.get("outputs", obj.get("labels", {}))
    if outputs is None:
        outputs = {}
    if not isinstance(outputs, dict):
        raise DatasetError(f"{where}: 'outputs' must be a JSON object of expected output fields")
    for name, group in (("inputs", inputs), ("outputs", outputs)):
        bad = [k for k in group if not isinstance(k, str) or not k.isidentifier()]
        if bad:
            raise DatasetError(f"{where}: {name} field names must be identifiers, got {bad[0]!r}")
        reserved = [k for k in group if k.startswith(RESERVED_PREFIX)]
        if reserved:
            raise DatasetError(f"{where}: field {reserved[0]!r} uses the reserved prefix {RESERVED_PREFIX!r}")
    both = sorted(set(inputs) & set(outputs))
    if both:
        raise DatasetError(
            f"{where}: field(s) {', '.join(map(repr, both))} appear in both inputs and outputs"
        )
    return inputs, outputs


def _check_split(value: Any, where: str) -> Split | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in _SPLITS:
        raise DatasetError(f"{where}: 'split' must be 'train' or 'heldout', got {value!r}")
    return _SPLITS[value.lower()]


def _check_schema_version(value: Any, where: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise DatasetError(f"{where}: 'schema_version' must be an integer, got {value!r}")
    if value > SCHEMA_VERSION or value < 1:
        raise DatasetError(
            f"{where}: dataset schema_version {value} is not supported (this Geode reads version {SCHEMA_VERSION})",
            hint="upgrade Geode, or re-export the dataset with this version",
        )


# -- health ---------------------------------------------------------------------------------------


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


# -- datasets -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSplit:
    """A deterministic train / held-out split of one dataset."""

    train: Dataset
    heldout: Dataset
    heldout_fraction: float
    seed: int

    def require(
        self, *, min_train: int = MIN_TRAIN, min_heldout: int = MIN_HELDOUT, purpose: str = "compile"
    ) -> None:
        """Refuse a split too small to optimize on and still measure the result.

        Raises:
            DatasetError: Either side is smaller than asked; the message gives the numbers.
        """
        problems = []
        if len(self.train) < min_train:
            problems.append(f"{len(self.train)} training example(s) (need {min_train})")
        if len(self.heldout) < min_heldout:
            problems.append(f"{len(self.heldout)} held-out example(s) (need {min_heldout})")
        if problems:
            total = len(self.train) + len(self.heldout)
            raise DatasetError(
                f"cannot {purpose}: the dataset ({total} examples) splits into " + " and ".join(problems),
                hint="add examples (geode needs held-out data to tell whether a candidate is better), "
                "or change --heldout",
            )


@dataclass(frozen=True)
class Dataset:
    """Records plus a header; its :attr:`id` is a hash of the records' content.

    Example:
        >>> ds = Dataset.from_records([{"inputs": {"q": "2+2?"}, "outputs": {"a": "4"}}])
        >>> ds.examples()[0].inputs().toDict()
        {'q': '2+2?'}
    """

    records: tuple[Record, ...]
    name: str | None = None
    description: str | None = None
    source: str | None = None
    """The file it was loaded from, if any."""
    metadata: Mapping[str, Any] = field(default_factory=dict[str, Any])

    @cached_property
    def id(self) -> str:
        """``ds-`` and 16 hex digits of the hash of every record's content, in order."""
        digest = hashlib.sha256()
        for record in self.records:
            digest.update(_canonical(record.to_json()).encode("utf-8"))
            digest.update(b"\n")
        return f"ds-{digest.hexdigest()[:16]}"

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def examples(self) -> list[dspy.Example]:
        """The records as ``dspy.Example`` objects, inputs marked."""
        return [r.to_example() for r in self.records]

    def with_records(self, records: Iterable[Record], *, suffix: str | None = None) -> Dataset:
        """A dataset with the same header and other records."""
        name = f"{self.name}/{suffix}" if self.name and suffix else self.name
        return Dataset(tuple(records), name, self.description, self.source, self.metadata)

    def split(self, *, heldout_fraction: float = 0.3, seed: int = 0) -> DatasetSplit:
        """Split into train and held-out, the same way every time.

        Records with a ``split`` field stay there. The others are assigned by a hash of their
        normalised inputs and ``seed``, so the split does not depend on file order and records asking
        the same thing always land on the same side (no train/held-out leakage from duplicates).

        Args:
            heldout_fraction: Share of unassigned records held out, in ``(0, 1)``.
            seed: Changes which records are held out.
        """
        if not 0.0 < heldout_fraction < 1.0:
            raise DatasetError(f"the held-out fraction must be between 0 and 1, got {heldout_fraction}")
        assigned: dict[int, Split] = {i: r.split for i, r in enumerate(self.records) if r.split is not None}
        groups: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(self.records):
            if i not in assigned:
                groups[r.input_key].append(i)
        unassigned = sum(len(v) for v in groups.values())
        target = round(unassigned * heldout_fraction)
        if unassigned >= 2 and target == 0:
            target = 1
        if unassigned >= 2 and target >= unassigned:
            target = unassigned - 1
        order = sorted(groups, key=lambda key: _sha256(f"{seed}:{key}"))
        held = 0
        for key in order:
            side: Split = "heldout" if held < target else "train"
            for i in groups[key]:
                assigned[i] = side
            if side == "heldout":
                held += len(groups[key])
        train = [r for i, r in enumerate(self.records) if assigned[i] == "train"]
        heldout = [r for i, r in enumerate(self.records) if assigned[i] == "heldout"]
        return DatasetSplit(
            train=self.with_records(train, suffix="train"),
            heldout=self.with_records(heldout, suffix="heldout"),
            heldout_fraction=heldout_fraction,
            seed=seed,
        )

    def require(self, min_size: int = 1, *, purpose: str = "evaluate") -> None:
        """Refuse an empty or too-small dataset with the reason.

        Raises:
            DatasetError: Fewer than ``min_size`` records.
        """
        where = f" {self.source!r}" if self.source else ""
        if not self.records:
            raise DatasetError(
                f"cannot {purpose}: the dataset{where} has no examples",
                hint='add JSON Lines records like {"inputs": {...}, "outputs": {...}}',
            )
        if len(self.records) < min_size:
            raise DatasetError(
                f"cannot {purpose}: the dataset{where} has {len(self.records)} example(s), at least {min_size} needed"
            )

    def health(self) -> HealthReport:
        """Size, diversity, duplicates, label balance and score spread, with warnings."""
        return _health(self)

    def header(self) -> dict[str, Any]:
        """The header line written by :meth:`save`."""
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": "geode.dataset"}
        if self.name:
            out["name"] = self.name
        if self.description:
            out["description"] = self.description
        if self.metadata:
            out["metadata"] = _jsonable(self.metadata)
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the dataset as JSON Lines (header first), atomically."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(self.header(), ensure_ascii=False) + "\n")
                for record in self.records:
                    fh.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def from_records(
        cls, records: Iterable[Mapping[str, Any] | Record], *, name: str | None = None
    ) -> Dataset:
        """A dataset from record objects or JSON-shaped dicts (validated like file lines)."""
        built = [
            r if isinstance(r, Record) else Record.from_json(dict(r), where=f"record {i + 1}")
            for i, r in enumerate(records)
        ]
        return cls(tuple(built), name=name)

    @classmethod
    def from_examples(cls, examples: Iterable[dspy.Example], *, name: str | None = None) -> Dataset:
        """A dataset from ``dspy.Example`` objects with declared inputs."""
        return cls(tuple(Record.from_example(e) for e in examples), name=name)


def load_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Read a dataset file: JSON Lines (``.jsonl``), or a JSON array of records (``.json``).

    Raises:
        DatasetError: The file is missing, unreadable, truncated, or a line breaks the schema; the
            message names the file and line.
    """
    source = Path(path)
    if not source.exists():
        raise DatasetError(f"dataset file {str(source)!r} does not exist")
    if source.is_dir():
        raise DatasetError(f"{str(source)!r} is a directory, not a dataset file")
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DatasetError(
            f"{str(source)!r} is not UTF-8 text (byte {err.start}): is it a dataset file?"
        ) from err
    except OSError as err:
        raise DatasetError(f"cannot read {str(source)!r}: {err.strerror}") from err
    lines: list[tuple[int, Any]] = []
    if source.suffix == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DatasetError(
                f"{source}:{err.lineno}: invalid JSON ({err.msg}); is the file truncated?"
            ) from err
        if not isinstance(data, list):
            raise DatasetError(f"{source}: a .json dataset must be an array of records")
        lines = [(i + 1, obj) for i, obj in enumerate(data)]
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                lines.append((lineno, json.loads(line)))
            except json.JSONDecodeError as err:
                raise DatasetError(
                    f"{source}:{lineno}: invalid JSON ({err.msg} at column {err.colno})",
                    hint="each line must be one complete JSON object; a cut-off last line means a truncated file",
                ) from err
    header: dict[str, Any] = {}
    if lines and isinstance(lines[0][1], dict) and "inputs" not in lines[0][1]:
        lineno, header = lines.pop(0)
        unknown = sorted(set(header) - _HEADER_FIELDS)
        if unknown:
            raise DatasetError(
                f"{source}:{lineno}: the header line has unknown field(s) {', '.join(map(repr, unknown))}",
                hint=f"a header may hold {', '.join(sorted(_HEADER_FIELDS))}; a record needs 'inputs'",
            )
        if "schema_version" not in header:
            raise DatasetError(
                f"{source}:{lineno}: the header line needs 'schema_version' (records need 'inputs')"
            )
        _check_schema_version(header.get("schema_version"), f"{source}:{lineno}")
    records = tuple(Record.from_json(obj, where=f"{source}:{lineno}") for lineno, obj in lines)
    metadata = header.get("metadata") or {}
    return Dataset(
        records=records,
        name=header.get("name") or source.stem,
        description=header.get("description"),
        source=str(source),
        metadata=metadata if isinstance(metadata, dict) else {},
    )
