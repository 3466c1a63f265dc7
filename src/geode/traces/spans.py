"""The typed, frozen record of one finished span, and how each trace source's spans become one.

A :class:`SpanRecord` is one finished span, whatever it was read from: Phoenix's REST span dicts or a
row of its spans dataframe (:meth:`SpanRecord.from_phoenix`, :meth:`SpanRecord.from_phoenix_row`), an
OTLP-JSON span (:meth:`SpanRecord.from_otlp_json`) or an OpenTelemetry SDK ``ReadableSpan``
(:meth:`SpanRecord.from_readable_span`).

Attributes are kept flat (``llm.input_messages.0.message.role``), the way OpenTelemetry records them;
:meth:`SpanRecord.indexed` rebuilds the numbered lists and :attr:`SpanRecord.metadata` the metadata
mapping, which Phoenix stores expanded and OTLP keeps as a JSON string.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, cast

from openinference.semconv.trace import SpanAttributes, ToolAttributes

from geode.errors import TraceSourceError
from geode.traces.otlp_json import decode_attributes
from geode.traces.values import (
    OTLP_STATUS,
    AttributeValue,
    SpanStatus,
    from_ns,
    hex_id,
    is_missing,
    scalars,
    to_datetime,
    to_status,
    unflatten,
)
from geode.traces.vocab import GeodeAttributes

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["ExceptionInfo", "SpanEvent", "SpanRecord", "program_names"]

_KIND_KEY: Final = SpanAttributes.OPENINFERENCE_SPAN_KIND
# Attributes whose values are JSON strings, which Phoenix expands into dotted keys on ingest
# (phoenix.trace.attributes.JSON_STRING_ATTRIBUTES), matched with or without the expansion.
_JSON_KEY: Final = re.compile(
    r"^(metadata|tool\.parameters|llm\.prompt_template\.variables|.+\.document\.metadata)(?:\.|$)"
)


def _empty_attributes() -> Mapping[str, AttributeValue]:
    return MappingProxyType({})


@dataclass(frozen=True)
class ExceptionInfo:
    """An exception recorded on a span (its OpenTelemetry ``exception`` event)."""

    type: str
    message: str
    stacktrace: str | None = None


@dataclass(frozen=True)
class SpanEvent:
    """A timestamped event on a span, such as an ``exception``."""

    name: str
    time: datetime
    attributes: Mapping[str, AttributeValue] = field(default_factory=_empty_attributes)


@dataclass(frozen=True, eq=True)
class SpanRecord:
    """One finished span, read from any trace source.

    Equality compares every field; the hash is the span's identity, ``(trace_id, span_id)``.
    """

    trace_id: str
    """32 lowercase hex digits."""
    span_id: str
    """16 lowercase hex digits."""
    parent_id: str | None
    """The parent's ``span_id``; ``None`` for a root span."""
    name: str
    kind: str
    """The OpenInference span kind (``AGENT``, ``LLM``, ``TOOL``, ``CHAIN``...), ``UNKNOWN`` when unset."""
    start_time: datetime
    """Timezone-aware (UTC)."""
    end_time: datetime | None
    status: SpanStatus = "UNSET"
    status_message: str = ""
    attributes: Mapping[str, AttributeValue] = field(default_factory=_empty_attributes, repr=False)
    """Flat attribute keys, always including ``openinference.span.kind``."""
    events: tuple[SpanEvent, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        # Freeze the attribute mapping so a record can be shared between threads and readers.
        if not isinstance(self.attributes, MappingProxyType):
            object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))

    def __hash__(self) -> int:
        return hash((self.trace_id, self.span_id))

    # -- derived values ----------------------------------------------------------------------------

    @property
    def is_root(self) -> bool:
        """True when the span has no parent."""
        return self.parent_id is None

    @property
    def duration_ms(self) -> float | None:
        """Wall time in milliseconds, ``None`` if the span has no end time."""
        if self.end_time is None:
            return None
        return (self.end_time - self.start_time).total_seconds() * 1000.0

    def get(self, key: str, default: AttributeValue | None = None) -> AttributeValue | None:
        """An attribute's value, or ``default``."""
        return self.attributes.get(key, default)

    def get_str(self, key: str) -> str | None:
        """A string attribute, or ``None`` when missing or not a string."""
        value = self.attributes.get(key)
        return value if isinstance(value, str) else None

    def get_int(self, key: str) -> int | None:
        """An integer attribute (whole floats accepted), or ``None`` when missing or not a number."""
        value = self.attributes.get(key)
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return None

    @property
    def program_names(self) -> tuple[str, ...]:
        """``geode.program.name`` then ``geode.program.aliases``: every name the span's program answers to."""
        return program_names(
            self.get(GeodeAttributes.PROGRAM_NAME), self.get(GeodeAttributes.PROGRAM_ALIASES)
        )

    @property
    def input_value(self) -> str | None:
        """``input.value``."""
        return self.get_str(SpanAttributes.INPUT_VALUE)

    @property
    def output_value(self) -> str | None:
        """``output.value``."""
        return self.get_str(SpanAttributes.OUTPUT_VALUE)

    @property
    def tool_name(self) -> str | None:
        """``tool.name`` on TOOL spans."""
        return self.get_str(ToolAttributes.TOOL_NAME)

    @property
    def session_id(self) -> str | None:
        """``session.id``."""
        return self.get_str(SpanAttributes.SESSION_ID)

    @property
    def prompt_tokens(self) -> int | None:
        """``llm.token_count.prompt``."""
        return self.get_int(SpanAttributes.LLM_TOKEN_COUNT_PROMPT)

    @property
    def completion_tokens(self) -> int | None:
        """``llm.token_count.completion``."""
        return self.get_int(SpanAttributes.LLM_TOKEN_COUNT_COMPLETION)

    @property
    def total_tokens(self) -> int | None:
        """``llm.token_count.total``, or prompt + completion when only those are recorded."""
        total = self.get_int(SpanAttributes.LLM_TOKEN_COUNT_TOTAL)
        if total is not None:
            return total
        prompt, completion = self.prompt_tokens, self.completion_tokens
        if prompt is None and completion is None:
            return None
        return (prompt or 0) + (completion or 0)

    def json_attribute(self, key: str) -> Any:
        """A JSON-valued attribute (``metadata``, ``tool.parameters``...) decoded, whichever shape it has.

        Writers store these as JSON strings; Phoenix parses them on ingest and returns them expanded into
        ``<key>.<field>`` attributes. Both give the same value here: the decoded JSON (a string that is
        not JSON comes back as is), or ``None`` when the span has neither shape.
        """
        raw = self.attributes.get(key)
        if isinstance(raw, str):
            try:
                return json.loads(raw)
            except ValueError:
                return raw
        if raw is not None:
            return list(raw) if isinstance(raw, tuple) else raw
        prefix = key + "."
        expanded = {k[len(prefix) :]: v for k, v in self.attributes.items() if k.startswith(prefix)}
        return unflatten(expanded) if expanded else None

    def canonical_attributes(self) -> dict[str, Any]:
        """The attributes with JSON-valued ones decoded: the same dict whichever source the span came from.

        OTLP files and memory keep ``metadata``, ``tool.parameters``, ``llm.prompt_template.variables``
        and documents' ``document.metadata`` as JSON strings; Phoenix returns them expanded. Here each is
        one key holding its decoded value (see :meth:`json_attribute`).
        """
        result: dict[str, Any] = {}
        roots: set[str] = set()
        for key, value in self.attributes.items():
            match = _JSON_KEY.match(key)
            if match is None:
                result[key] = value
            else:
                roots.add(match.group(1))
        for root in roots:
            result[root] = self.json_attribute(root)
        return result

    @property
    def metadata(self) -> dict[str, Any]:
        """The ``metadata`` attribute as a dict (empty when absent or not a JSON object)."""
        value = self.json_attribute(SpanAttributes.METADATA)
        return cast(dict[str, Any], value) if isinstance(value, dict) else {}

    @property
    def tags(self) -> tuple[str, ...]:
        """``tag.tags``."""
        value = self.attributes.get(SpanAttributes.TAG_TAGS)
        if isinstance(value, tuple):
            return tuple(str(v) for v in value)
        return (value,) if isinstance(value, str) else ()

    @property
    def exception(self) -> ExceptionInfo | None:
        """The first exception recorded on the span, if any."""
        for event in self.events:
            if event.name == "exception":
                attrs = event.attributes
                stack = attrs.get("exception.stacktrace")
                return ExceptionInfo(
                    type=str(attrs.get("exception.type", "")),
                    message=str(attrs.get("exception.message", "")),
                    stacktrace=stack if isinstance(stack, str) else None,
                )
        return None

    def indexed(self, prefix: str) -> list[dict[str, AttributeValue]]:
        """Rebuild a numbered attribute list: ``indexed("llm.input_messages")`` gives one dict per message.

        Keys ``<prefix>.<n>.<rest>`` become ``result[n][<rest>]``; gaps in the numbering are dropped.

        Example:
            >>> from datetime import UTC, datetime
            >>> span = SpanRecord("0" * 32, "1" * 16, None, "lm", "LLM", datetime.now(UTC), None,
            ...     attributes={"llm.input_messages.0.message.role": "user"})
            >>> span.indexed("llm.input_messages")
            [{'message.role': 'user'}]
        """
        head = prefix + "."
        items: dict[int, dict[str, AttributeValue]] = defaultdict(dict)
        for key, value in self.attributes.items():
            if not key.startswith(head):
                continue
            number, _, rest = key[len(head) :].partition(".")
            if number.isdigit() and rest:
                items[int(number)][rest] = value
        return [items[n] for n in sorted(items)]

    # -- constructors ------------------------------------------------------------------------------

    @classmethod
    def from_phoenix(cls, span: Mapping[str, Any]) -> SpanRecord:
        """Build a record from a span dict of Phoenix's REST API (``Client().spans.get_spans``).

        Raises:
            TraceSourceError: The dict lacks the span's context, name or start time.
        """
        try:
            context = span["context"]
            trace_id, span_id = str(context["trace_id"]), str(context["span_id"])
            name, start = str(span["name"]), span["start_time"]
        except (KeyError, TypeError) as err:
            raise TraceSourceError(f"Phoenix returned a span without {err}: {dict(span)!r:.200}") from err
        attributes = scalars(span.get("attributes") or {})
        kind = str(span.get("span_kind") or attributes.get(_KIND_KEY) or "UNKNOWN")
        attributes[_KIND_KEY] = kind
        return cls(
            trace_id=trace_id,
            span_id=span_id,
            parent_id=span.get("parent_id") or None,
            name=name,
            kind=kind,
            start_time=to_datetime(start),
            end_time=to_datetime(span["end_time"]) if span.get("end_time") else None,
            status=to_status(span.get("status_code")),
            status_message=str(span.get("status_message") or ""),
            attributes=attributes,
            events=tuple(
                SpanEvent(
                    name=str(e.get("name", "")),
                    time=to_datetime(e.get("timestamp")),
                    attributes=MappingProxyType(scalars(e.get("attributes") or {})),
                )
                for e in span.get("events") or ()
            ),
        )

    @classmethod
    def from_phoenix_row(cls, row: Mapping[str, Any]) -> SpanRecord:
        """Build a record from one row of Phoenix's spans dataframe (``get_spans_dataframe``).

        The row is the dataframe's columns as a mapping (``row.to_dict()``, with ``context.span_id``
        included when it is the index): ``attributes.<key>`` columns become attributes, missing values
        (``NaN``/``None``) are dropped.
        """
        attributes: dict[str, Any] = {}
        for column, value in row.items():
            if column.startswith("attributes.") and not is_missing(value):
                attributes[column.removeprefix("attributes.")] = value
        return cls.from_phoenix(
            {
                "context": {"trace_id": row.get("context.trace_id"), "span_id": row.get("context.span_id")},
                "name": row.get("name"),
                "span_kind": row.get("span_kind"),
                "parent_id": None if is_missing(row.get("parent_id")) else row.get("parent_id"),
                "start_time": row.get("start_time"),
                "end_time": None if is_missing(row.get("end_time")) else row.get("end_time"),
                "status_code": row.get("status_code"),
                "status_message": None
                if is_missing(row.get("status_message"))
                else row.get("status_message"),
                "attributes": attributes,
                "events": [] if is_missing(row.get("events")) else row.get("events"),
            }
        )

    @classmethod
    def from_otlp_json(cls, span: Mapping[str, Any]) -> SpanRecord:
        """Build a record from one span of the OTLP-JSON encoding (``resourceSpans[].scopeSpans[].spans[]``).

        Ids are hex strings, times are nanoseconds since the epoch (as strings or ints), attributes are
        ``[{"key": ..., "value": {"stringValue": ...}}]`` per the OTLP JSON mapping.

        Raises:
            TraceSourceError: The span is not valid OTLP-JSON.
        """
        try:
            trace_id, span_id = hex_id(span["traceId"], 32), hex_id(span["spanId"], 16)
            name, start_ns = str(span["name"]), int(span["startTimeUnixNano"])
        except (KeyError, TypeError, ValueError) as err:
            raise TraceSourceError(f"not an OTLP-JSON span ({err!r}): {dict(span)!r:.200}") from err
        attributes = scalars(decode_attributes(span.get("attributes") or ()))
        kind = str(attributes.get(_KIND_KEY) or "UNKNOWN")
        attributes[_KIND_KEY] = kind
        status = cast(Mapping[str, Any], span.get("status") or {})
        code = status.get("code", 0)
        end_ns = span.get("endTimeUnixNano")
        parent = span.get("parentSpanId") or None
        return cls(
            trace_id=trace_id,
            span_id=span_id,
            parent_id=hex_id(parent, 16) if parent else None,
            name=name,
            kind=kind,
            start_time=from_ns(start_ns),
            end_time=from_ns(int(end_ns)) if end_ns not in (None, "", "0", 0) else None,
            status=OTLP_STATUS.get(code, "UNSET") if isinstance(code, int) else to_status(code),
            status_message=str(status.get("message") or ""),
            attributes=attributes,
            events=tuple(
                SpanEvent(
                    name=str(e.get("name", "")),
                    time=from_ns(int(e.get("timeUnixNano") or start_ns)),
                    attributes=MappingProxyType(scalars(decode_attributes(e.get("attributes") or ()))),
                )
                for e in span.get("events") or ()
            ),
        )

    @classmethod
    def from_readable_span(cls, span: ReadableSpan) -> SpanRecord:
        """Build a record from an OpenTelemetry SDK span (e.g. an ``InMemorySpanExporter``'s output).

        Raises:
            TraceSourceError: The span has no context or start time (it was never started).
        """
        context = span.context
        if context is None or span.start_time is None:
            raise TraceSourceError(f"span {span.name!r} has no context or start time; was it started?")
        attributes = scalars(dict(span.attributes or {}))
        kind = str(attributes.get(_KIND_KEY) or "UNKNOWN")
        attributes[_KIND_KEY] = kind
        return cls(
            trace_id=format(context.trace_id, "032x"),
            span_id=format(context.span_id, "016x"),
            parent_id=format(span.parent.span_id, "016x") if span.parent is not None else None,
            name=span.name,
            kind=kind,
            start_time=from_ns(span.start_time),
            end_time=from_ns(span.end_time) if span.end_time is not None else None,
            status=to_status(span.status.status_code.name),
            status_message=span.status.description or "",
            attributes=attributes,
            events=tuple(
                SpanEvent(e.name, from_ns(e.timestamp), MappingProxyType(scalars(dict(e.attributes or {}))))
                for e in span.events
            ),
        )


def program_names(name: AttributeValue | None, aliases: AttributeValue | None) -> tuple[str, ...]:
    """A span's program name and its aliases, in order, without repeats."""
    names = [name] if isinstance(name, str) else []
    if isinstance(aliases, list | tuple):
        names += [a for a in aliases if isinstance(a, str)]
    return tuple(dict.fromkeys(names))
