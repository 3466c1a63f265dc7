"""The dataset schema: a :class:`Record` (one example) and what a dataset file's lines may hold.

The file format is described in :mod:`geode.evals.dataset`; this module validates a line into a
:class:`Record` and says which fields, splits and schema versions there are.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import dspy

from geode.errors import DatasetError
from geode.evals.metrics import FEEDBACK_FIELD, RESERVED_PREFIX, normalize_text

__all__ = ["MIN_HELDOUT", "MIN_TRAIN", "SCHEMA_VERSION", "Record", "Split"]

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
