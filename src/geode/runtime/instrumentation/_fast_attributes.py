"""Put Geode's own attribute values on a span without the SDK's per-value cleaning.

The OpenTelemetry SDK passes every attribute through ``_clean_attribute_value`` (type checks, a
recursive walk, a lock per value): for the 27 attributes of a traced ``Predict`` that is a tenth of
what tracing adds on the request thread. The values Geode's callback builds are already plain
``str``/``bool``/``int``/``float`` under non-empty string keys, which the cleaning returns unchanged,
so :func:`set_attributes` stores them directly when

- the span is the SDK's recording span, not ended;
- its attributes have no value-length limit (Geode's provider sets none: the export path truncates)
  and room for all of them under the count limit;
- every key is a non-empty ``str`` and every value's type is exactly one of those four, or a
  ``tuple`` of ``str`` (a program's aliases, on every span of a served run): the SDK turns a sequence
  into a tuple of its cleaned items, which for a tuple of strings is an equal tuple.

Anything else (a user's ``geode_span_attributes``, a list, a tuple of anything but strings, a span
from another SDK, a limit set by ``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT``) goes through
``span.set_attributes``, the SDK's own path: the stored attributes are the same either way
(``tests/unit/runtime/instrumentation`` compares them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.trace import Span

__all__ = ["set_attributes"]

_PLAIN: Final = frozenset({str, bool, int, float})


def _plain(attributes: Mapping[str, Any]) -> bool:
    for key, value in attributes.items():
        if type(key) is not str or not key:
            return False
        kind = type(value)
        if kind not in _PLAIN and not (kind is tuple and all(type(item) is str for item in value)):
            return False
    return True


def set_attributes(span: Span, attributes: Mapping[str, Any]) -> None:
    """``span.set_attributes(attributes)``, storing plain values directly when the SDK would keep them as they are."""
    bounded = getattr(span, "_attributes", None)
    if (
        type(bounded) is BoundedAttributes
        and bounded.max_value_len is None
        and not bounded._immutable  # frozen once the span ends
        and (bounded.maxlen is None or len(bounded) + len(attributes) <= bounded.maxlen)
        and _plain(attributes)
    ):
        # No locks: the callback sets a span's attributes on the thread that opened it, before it
        # ends, and each dict operation is atomic under the GIL.
        stored = bounded._dict
        for key, value in attributes.items():
            if key in stored:
                del stored[key]  # re-setting a key moves it last, as the SDK's dict does
            stored[key] = value
        return
    span.set_attributes(attributes)
