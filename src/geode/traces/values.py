"""Span attribute and field values, and their coercion from what trace readers return.

Phoenix's REST dicts and dataframe rows, OTLP-JSON and OpenTelemetry SDK spans each shape attributes,
timestamps, statuses and ids their own way; these helpers turn them into the values a
:class:`~geode.traces.spans.SpanRecord` holds: flat dotted keys with OpenTelemetry scalar values,
timezone-aware UTC datetimes, ``UNSET``/``OK``/``ERROR``, lowercase hex ids.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, cast

from geode.errors import TraceSourceError

__all__ = [
    "OTLP_STATUS",
    "AttributeValue",
    "SpanStatus",
    "from_ns",
    "hex_id",
    "is_missing",
    "scalars",
    "to_datetime",
    "to_status",
    "unflatten",
]

Scalar = str | bool | int | float
AttributeValue = Scalar | tuple[Scalar, ...]
"""A span attribute value as OpenTelemetry allows it: a scalar or a homogeneous tuple of scalars."""

SpanStatus = Literal["UNSET", "OK", "ERROR"]

_STATUSES: Final[frozenset[str]] = frozenset({"UNSET", "OK", "ERROR"})
OTLP_STATUS: Final[dict[int, SpanStatus]] = {0: "UNSET", 1: "OK", 2: "ERROR"}
"""OTLP's numeric status codes (opentelemetry-proto ``Status.StatusCode``)."""


def is_missing(value: Any) -> bool:
    """Whether a reader's value means "absent": ``None``, NaN, or pandas' ``NaT``/``NA``."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    # pandas' NaT and NA are not floats but compare unequal to themselves.
    try:
        return bool(value != value)
    except (TypeError, ValueError):
        return False


def unflatten(flat: Mapping[str, Any]) -> Any:
    """Rebuild nested JSON from dotted keys, as Phoenix expands it (all-digit levels become lists)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):  # a key both a leaf and a parent: keep the leaf
                break
            node = cast(dict[str, Any], child)
        else:
            node[leaf] = list(cast(tuple[Any, ...], value)) if isinstance(value, tuple) else value
    return _listify(nested)


def _listify(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    items = {k: _listify(v) for k, v in cast(dict[str, Any], value).items()}
    if items and all(k.isdigit() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            yield from _flatten(cast(Mapping[str, Any], value), f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _scalar(value: Any) -> AttributeValue | None:
    if isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, list | tuple):
        items = [_scalar(v) for v in cast(Iterable[Any], value)]
        return tuple(v for v in items if v is not None and not isinstance(v, tuple))
    if hasattr(value, "tolist"):  # numpy arrays and scalars from a dataframe
        return _scalar(value.tolist())
    if hasattr(value, "item"):
        return _scalar(value.item())
    if value is None:
        return None
    return str(value)


def scalars(attributes: Mapping[str, Any]) -> dict[str, AttributeValue]:
    """Flatten nested mappings to dotted keys and coerce values to OpenTelemetry attribute values."""
    result: dict[str, AttributeValue] = {}
    for key, value in _flatten(attributes):
        scalar = _scalar(value)
        if scalar is not None:
            result[key] = scalar
    return result


def to_status(value: Any) -> SpanStatus:
    """A status as written by a reader (``"ok"``, ``"STATUS_CODE_ERROR"``...); anything else is ``UNSET``."""
    text = str(value or "UNSET").upper().removeprefix("STATUS_CODE_")
    return cast(SpanStatus, text) if text in _STATUSES else "UNSET"


def to_datetime(value: Any) -> datetime:
    """A timezone-aware UTC datetime from a datetime, pandas Timestamp, ISO string, or epoch number.

    Raises:
        TraceSourceError: ``value`` is none of these.
    """
    if isinstance(value, datetime):
        moment = value
    elif hasattr(value, "to_pydatetime"):  # pandas.Timestamp
        moment = value.to_pydatetime()
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError as err:
            raise TraceSourceError(f"not an ISO timestamp: {value!r}") from err
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return from_ns(int(value)) if value > 1e14 else datetime.fromtimestamp(value, UTC)
    else:
        raise TraceSourceError(f"not a timestamp: {value!r}")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def from_ns(ns: int) -> datetime:
    """A UTC datetime from nanoseconds since the epoch."""
    # Exactly Phoenix's conversion (phoenix.trace.otel), so a span read from an OTLP file or from memory
    # has the same microsecond timestamps as the same span read back from Phoenix.
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


def hex_id(value: Any, digits: int) -> str:
    """A trace or span id as ``digits`` lowercase hex digits.

    Raises:
        ValueError: ``value`` is not such an id.
    """
    text = str(value).lower()
    if len(text) != digits or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"{value!r} is not a {digits}-digit hex id")
    return text
