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

Records and the line schema live in ``dataset_schema``, the health report in ``dataset_health``; this
module holds :class:`Dataset`, its split and :func:`load_dataset`, and re-exports the others' names.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import dspy

from geode.errors import DatasetError
from geode.evals.dataset_health import HealthReport, LabelBalance, ScoreSpread, _health
from geode.evals.dataset_schema import (
    _HEADER_FIELDS,
    MIN_HELDOUT,
    MIN_TRAIN,
    SCHEMA_VERSION,
    Record,
    Split,
    _canonical,
    _check_schema_version,
    _jsonable,
    _sha256,
)

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
