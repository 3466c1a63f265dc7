"""The first stage of mining: whether a trace can give a faithful example, and its run's parts.

:func:`_examine` finds the program's run in a trace and returns its inputs, outputs and error, or the
:class:`SkipReason` it cannot be an example (no root, lost spans, unfinished, redacted, truncated...).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from geode.traces.records import SpanRecord, TraceRecord
from geode.traces.vocab import GeodeAttributes, SpanAttributes


class SkipReason:
    """Why a trace gave no example (the keys of :attr:`MiningResult.skipped`)."""

    NO_ROOT: Final = "no root span"
    MISSING_SPANS: Final = "missing child spans"
    """A span's parent is not in the trace: the exporter or the backend lost part of it."""
    UNFINISHED: Final = "unfinished run"
    REDACTED: Final = "redacted content"
    TRUNCATED: Final = "truncated content"
    NO_INPUTS: Final = "inputs not recorded"
    SCHEMA: Final = "inputs/outputs do not fit the dataset schema"
    NOT_ARRIVED: Final = "not complete before the deadline"


# Values that mean "hidden" when a writer other than Geode's redactor masked a value.
_HIDDEN_VALUES: Final = frozenset({"__REDACTED__", "<redacted>"})


@dataclass
class _Candidate:
    trace: TraceRecord
    root: SpanRecord
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    error: dict[str, str] | None


def _program_root(trace: TraceRecord, program: str) -> SpanRecord | None:
    """The shallowest span of the run of ``program`` (the trace root, unless a caller's span wraps it)."""
    for span, _ in trace.walk():
        if program in span.program_names:
            return span
    return None


def _content_problem(span: SpanRecord, keys: Sequence[str]) -> str | None:
    if span.get(GeodeAttributes.TRUNCATED) is True:
        return SkipReason.TRUNCATED
    if span.get(GeodeAttributes.REDACTED) is True:
        return SkipReason.REDACTED
    for key in keys:
        value = span.get_str(key)
        if value is not None and (value in _HIDDEN_VALUES or "…[truncated " in value):
            return SkipReason.REDACTED if value in _HIDDEN_VALUES else SkipReason.TRUNCATED
    return None


def _json_object(span: SpanRecord, key: str) -> dict[str, Any] | None:
    raw = span.attributes.get(key)
    if not isinstance(raw, str):
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return cast(dict[str, Any], value) if isinstance(value, dict) else None


def _outputs(span: SpanRecord) -> dict[str, Any]:
    value = _json_object(span, SpanAttributes.OUTPUT_VALUE)
    if value is not None:
        return value
    text = span.output_value
    return {"output": text} if text else {}


def _error_of(trace: TraceRecord, root: SpanRecord) -> dict[str, str] | None:
    if root.status != "ERROR":
        return None
    exception = root.exception or next(
        (s.exception for s in trace.descendants(root) if s.exception is not None), None
    )
    if exception is not None:
        return {"type": exception.type, "message": exception.message}
    return {"type": "error", "message": root.status_message}


def _examine(trace: TraceRecord, program: str) -> _Candidate | str:
    """A candidate run, or the :class:`SkipReason` it cannot be one."""
    if trace.root is None:
        return SkipReason.NO_ROOT
    if not trace.complete:
        return SkipReason.MISSING_SPANS
    root = _program_root(trace, program)
    if root is None:
        return SkipReason.NO_ROOT
    if root.end_time is None:
        return SkipReason.UNFINISHED
    problem = _content_problem(root, (SpanAttributes.INPUT_VALUE, SpanAttributes.OUTPUT_VALUE))
    if problem is not None:
        return problem
    inputs = _json_object(root, SpanAttributes.INPUT_VALUE)
    if not inputs:
        return SkipReason.NO_INPUTS
    return _Candidate(trace, root, inputs, _outputs(root), _error_of(trace, root))


def _where_matches(span: SpanRecord, where: Mapping[str, str]) -> bool:
    for key, wanted in where.items():
        value: Any = span.attributes.get(key)
        if value is None and key.startswith("metadata."):
            value = span.metadata
            for part in key.split(".")[1:]:
                value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return False
        text = value if isinstance(value, str) else json.dumps(value)
        if text != wanted and str(value) != wanted:
            return False
    return True
