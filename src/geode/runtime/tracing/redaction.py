"""Redaction and truncation of finished spans, applied on the export path before anything leaves.

OpenInference's own masking (``TraceConfig``) hides ``input.value``/``output.value`` and LLM messages,
but not retrieved documents or exception messages, and it never matches secrets inside values.
:class:`SpanRedactor` does all of that, plus truncation of oversized strings, on a finished
``ReadableSpan``; it runs on the export worker thread, never on the application's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace.status import Status

from geode.errors import ConfigError
from geode.runtime.tracing.otlp_proto import attribute_dict
from geode.traces.vocab import GeodeAttributes, SpanAttributes

__all__ = [
    "HIDDEN",
    "NAME_VALUE_HINTS",
    "REDACTED",
    "SECRET_HINTS",
    "SECRET_PATTERNS",
    "SpanRedactor",
    "may_hold_secret",
    "redact_name_values",
    "redact_pii",
]

HIDDEN: Final = "__REDACTED__"
"""Replaces a whole value hidden by ``hide_inputs``/``hide_outputs``/``hide_messages`` (OpenInference's
marker, so Phoenix users recognise it)."""
REDACTED: Final = "[REDACTED]"
"""Replaces each match of a secret pattern inside a value."""

SECRET_PATTERNS: Final[tuple[str, ...]] = (
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)",
    r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWT
    r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}",  # OpenAI / Anthropic / Stripe-style keys
    r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key id
    r"\bgh[pousr]_[A-Za-z0-9]{20,}\b",  # GitHub tokens
    r"\bgithub_pat_[A-Za-z0-9_]{20,}",
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack tokens
    r"\bAIza[0-9A-Za-z_-]{30,}",  # Google API keys
    r"\bhf_[A-Za-z0-9]{30,}",  # Hugging Face tokens
    r"\b(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}",
    r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)",  # user:password in URLs
)
"""Secret shapes that are always redacted, whatever the settings say."""

SECRET_HINTS: Final[tuple[tuple[str, ...], ...]] = (
    ("-----BEGIN ",),
    ("eyJ",),
    ("sk-", "pk-", "rk-"),
    ("AKIA",),
    ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    ("github_pat_",),
    ("xox",),
    ("AIza",),
    ("hf_",),
    ("bearer",),  # matched in lower case, as the pattern is
    ("://",),
)
"""For each of :data:`SECRET_PATTERNS`, substrings one of which every match contains. A span none of
whose strings contains any of them cannot match, and skips the patterns: running them costs about
0.5 µs per character, most of the export thread's time, on spans that almost never hold a secret."""

_CASED_HINTS: Final = tuple(h for hints in SECRET_HINTS for h in hints if h != "bearer")

# `name=value`, `name: value` and JSON's `"name": "value"` where the name says the value is a secret
# (`password`, `aws_secret_access_key`, `x-api-key`...). Linear by construction: a name may start only
# where no name character precedes it and is at most 64 characters, and whether it is a secret's is
# decided afterwards, on the name alone.
_NAME_VALUE: Final = re.compile(
    r"(?<![A-Za-z0-9_-])(?P<name>[A-Za-z][A-Za-z0-9_-]{0,63})(?P<sep>['\"]?[ \t]*[=:][ \t]*['\"]?)"
    r"(?P<value>[^\s'\",;&{}\[\]]+)"
)
_SECRET_NAME: Final = re.compile(
    r"(?i)(?:^|[_-])(?:password|passwd|passphrase|pwd|secret|token|api[_-]?key|apikey|access[_-]?key"
    r"|private[_-]?key|auth|authorization|credentials?|session[_-]?id|cookie)(?:$|[_-])"
)
NAME_VALUE_HINTS: Final[tuple[str, ...]] = (
    # "passw" and "passph", not "pass": every retrieval prompt says "passages".
    "passw",
    "passph",
    "pwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "accesskey",
    "access_key",
    "access-key",
    "privatekey",
    "private_key",
    "private-key",
    "auth",
    "credential",
    "sessionid",
    "session_id",
    "session-id",
    "cookie",
)
"""Lower-case substrings one of which every secret ``name=value`` contains (see :data:`SECRET_HINTS`)."""


def _redact_value(match: re.Match[str]) -> str:
    if not _SECRET_NAME.search(match.group("name")):
        return match.group(0)
    return f"{match.group('name')}{match.group('sep')}{REDACTED}"


def redact_name_values(text: str) -> str:
    """Redact the values of ``name=value`` pairs whose name says they are secret.

    Example:
        >>> redact_name_values('{"aws_secret_access_key": "wJalrXUtnFEMI", "max_tokens": 512}')
        '{"aws_secret_access_key": "[REDACTED]", "max_tokens": 512}'
    """
    return _NAME_VALUE.sub(_redact_value, text)


# Personal data, redacted only when asked (`GEODE_TRACING_REDACT_PII`): mining reads these spans, and
# an address or a number may be what a question is about. Each pattern starts only where the thing it
# matches can start, and bounds every repetition, so none backtracks more than a constant per start.
_EMAIL: Final = re.compile(r"(?<![\w.%+-])[\w.%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}\b")
_CARD: Final = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?!\d)")
_PHONE: Final = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}(?:[ .-]?\d{1,4}){2,5}|(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]?\d{4})(?![\d])"
)


def _luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = "".join(c for c in match.group(0) if c.isdigit())
    return "[CARD]" if _luhn(digits) else match.group(0)


def redact_pii(text: str) -> str:
    """Replace email addresses, payment card numbers (Luhn-checked) and phone numbers.

    Example:
        >>> redact_pii("mail ana@example.com, card 4111 1111 1111 1111, call +1 415 555 0100")
        'mail [EMAIL], card [CARD], call [PHONE]'
    """
    text = _EMAIL.sub("[EMAIL]", text)
    text = _CARD.sub(_card, text)
    return _PHONE.sub("[PHONE]", text)


_INPUT = SpanAttributes.INPUT_VALUE
_OUTPUT = SpanAttributes.OUTPUT_VALUE
_INPUT_MIME = SpanAttributes.INPUT_MIME_TYPE
_OUTPUT_MIME = SpanAttributes.OUTPUT_MIME_TYPE
_KIND = SpanAttributes.OPENINFERENCE_SPAN_KIND
_IN_MESSAGES = SpanAttributes.LLM_INPUT_MESSAGES + "."
_OUT_MESSAGES = SpanAttributes.LLM_OUTPUT_MESSAGES + "."
_DOCUMENTS = SpanAttributes.RETRIEVAL_DOCUMENTS + "."
# Parts of a message that say what it is rather than what it contains stay visible when hidden.
_MESSAGE_SHAPE_SUFFIXES = (
    ".message.role",
    ".tool_call.function.name",
    ".message_content.type",
    ".message.name",
)
_DOCUMENT_CONTENT_SUFFIXES = (".document.content", ".document.metadata")
_INPUT_LIKE = frozenset({_INPUT, SpanAttributes.LLM_PROMPT_TEMPLATE_VARIABLES, SpanAttributes.LLM_PROMPTS})
_EXCEPTION_MESSAGE = "exception.message"
_EXCEPTION_STACKTRACE = "exception.stacktrace"


_UNCHANGED_LIMIT: Final = 4096
_UNCHANGED_CHARS: Final = 2_000_000
"""Strings (and characters, about 2 MB) remembered as needing no redaction before the memory is emptied."""


def _compile(patterns: Sequence[str]) -> tuple[re.Pattern[str], ...]:
    compiled: list[re.Pattern[str]] = [re.compile("|".join(f"(?:{p})" for p in SECRET_PATTERNS))]
    for pattern in patterns:
        try:
            # Compiled one by one: a user pattern may carry global flags such as (?i).
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise ConfigError(
                f"tracing redact pattern {pattern!r} is not a valid regular expression: {err}",
                hint="fix GEODE_TRACING_REDACT_PATTERNS",
            ) from err
    return tuple(compiled)


def may_hold_secret(text: str) -> bool:
    """Whether ``text`` contains a substring of :data:`SECRET_HINTS` (False: no secret pattern matches).

    Example:
        >>> may_hold_secret("the answer is 4"), may_hold_secret("Authorization: Bearer abc")
        (False, True)
    """
    patterns, names = _hints(text)
    return patterns or names


def _hints(text: str) -> tuple[bool, bool]:
    """Whether ``text`` may match :data:`SECRET_PATTERNS`, and whether it may hold a secret ``name=value``."""
    # Plain loops of `in` tests: CPython's substring search beats one regular expression of the
    # alternatives, and a loop beats any() over a generator on every string of every span.
    lower = text.lower()
    patterns = "bearer" in lower
    if not patterns:
        for hint in _CASED_HINTS:
            if hint in text:
                patterns = True
                break
    for hint in NAME_VALUE_HINTS:
        if hint in lower:
            return patterns, True
    return patterns, False


def _strings_of(span: ReadableSpan) -> tuple[str, int]:
    """Every string a span carries (attribute values, events, status) in one string; the longest's length.

    A separator no hint contains keeps a hint from forming across two values.
    """
    parts: list[str] = []
    for attributes in (attribute_dict(span), *(event.attributes for event in span.events)):
        for value in (attributes or {}).values():
            if isinstance(value, str):
                parts.append(value)
            elif isinstance(value, tuple | list):
                parts.extend(v for v in value if isinstance(v, str))
    if span.status.description:
        parts.append(span.status.description)
    return "\x00".join(parts), max(map(len, parts), default=0)


@dataclass
class _Outcome:
    redacted: bool = False
    truncated: bool = False


class SpanRedactor:
    """Hides, redacts and truncates the attributes, events and status of finished spans.

    Args:
        hide_inputs: Hide ``input.value``, LLM input messages and prompt variables.
        hide_outputs: Hide ``output.value``, LLM output messages and retrieved documents' content
            and metadata.
        hide_messages: Hide LLM input and output messages (and the LLM span's input/output value,
            which repeat them).
        patterns: Extra regular expressions to redact, on top of :data:`SECRET_PATTERNS` and secret
            ``name=value`` pairs (:func:`redact_name_values`).
        max_attribute_length: Longer strings are cut to this many characters (marker included).
        redact_pii: Also replace email addresses, card numbers and phone numbers (:func:`redact_pii`).

    Hiding inputs or outputs also hides exception messages (they routinely quote the values that
    caused them); secret patterns apply to every string, exception messages and stack traces included.

    Example:
        >>> SpanRedactor().clean_text("key=sk-abcdefghijklmnopqrstu")
        'key=[REDACTED]'
    """

    def __init__(
        self,
        *,
        hide_inputs: bool = False,
        hide_outputs: bool = False,
        hide_messages: bool = False,
        patterns: Sequence[str] = (),
        max_attribute_length: int = 32_000,
        redact_pii: bool = False,
    ) -> None:
        if max_attribute_length < 32:
            raise ConfigError(f"max_attribute_length must be at least 32, got {max_attribute_length}")
        self.hide_inputs = hide_inputs
        self.hide_outputs = hide_outputs
        self.hide_messages = hide_messages
        self.max_attribute_length = max_attribute_length
        self.redact_pii = redact_pii
        self._patterns = _compile(patterns)
        self._hide_exceptions = hide_inputs or hide_outputs
        # Whether anything but secrets and length can change a span (hiding, the user's patterns, PII).
        self._rewrites = hide_inputs or hide_outputs or hide_messages or redact_pii or len(self._patterns) > 1
        self._hidden_cache: dict[tuple[str, bool], bool] = {}
        self._unchanged: dict[str, None] = {}
        self._unchanged_chars = 0

    # -- values --------------------------------------------------------------------------------

    def clean_text(self, text: str, outcome: _Outcome | None = None, *, scan: bool = True) -> str:
        """Redact secret patterns (and PII, if asked) in one string, then truncate it to the limit.

        ``scan=False`` skips :data:`SECRET_PATTERNS` and ``name=value`` secrets (user patterns and PII
        still apply): for text that :func:`may_hold_secret` cleared.
        """
        before = text
        names = False
        if scan:
            # Per string: a span is scanned when any of its strings holds a hint (an LLM span's
            # `max_tokens` does), but only the strings holding one can match; a long prompt beside
            # them is not run through the patterns (0.5 µs per character).
            scan, names = _hints(text)
        for pattern in self._patterns if scan else self._patterns[1:]:
            text = pattern.sub(REDACTED, text)
        if names:
            text = redact_name_values(text)
        if self.redact_pii:
            text = redact_pii(text)
        if text != before and outcome is not None:
            outcome.redacted = True
        limit = self.max_attribute_length
        if len(text) > limit:
            marker = f"…[truncated {len(text) - limit} chars]"
            text = text[: max(limit - len(marker), 0)] + marker
            if outcome is not None:
                outcome.truncated = True
        return text

    def _clean_value(self, value: Any, outcome: _Outcome, scan: bool) -> Any:
        if isinstance(value, str):
            return self.clean_text(value, outcome, scan=scan)
        if isinstance(value, tuple | list) and value and isinstance(value[0], str):
            return tuple(self.clean_text(v, outcome, scan=scan) if isinstance(v, str) else v for v in value)
        return value

    def _is_hidden(self, key: str, is_llm: bool) -> bool:
        cached = self._hidden_cache.get((key, is_llm))
        if cached is not None:
            return cached
        hidden = False
        if key in _INPUT_LIKE:
            hidden = self.hide_inputs or (is_llm and self.hide_messages and key == _INPUT)
        elif key == _OUTPUT:
            hidden = self.hide_outputs or (is_llm and self.hide_messages)
        elif key.startswith(_IN_MESSAGES):
            hidden = (self.hide_inputs or self.hide_messages) and not key.endswith(_MESSAGE_SHAPE_SUFFIXES)
        elif key.startswith(_OUT_MESSAGES):
            hidden = (self.hide_outputs or self.hide_messages) and not key.endswith(_MESSAGE_SHAPE_SUFFIXES)
        elif key.startswith(_DOCUMENTS):
            hidden = self.hide_outputs and key.endswith(_DOCUMENT_CONTENT_SUFFIXES)
        if len(self._hidden_cache) < 4096:
            self._hidden_cache[(key, is_llm)] = hidden
        return hidden

    def _clean_attributes(
        self, attributes: Mapping[str, Any], outcome: _Outcome, scan: bool
    ) -> dict[str, Any]:
        is_llm = attributes.get(_KIND) == "LLM"
        cleaned: dict[str, Any] = {}
        cut: list[str] = []
        for key, value in attributes.items():
            if self._is_hidden(key, is_llm):
                cleaned[key] = HIDDEN
                outcome.redacted = True
                continue
            before = outcome.truncated
            cleaned[key] = self._clean_value(value, outcome, scan)
            if outcome.truncated and not before and key in (_INPUT, _OUTPUT):
                cut.append(key)
        # A cut JSON document is no longer JSON; tell Phoenix to show it as text.
        for key in cut:
            cleaned[_INPUT_MIME if key == _INPUT else _OUTPUT_MIME] = "text/plain"
        return cleaned

    def _clean_exception_text(self, text: str, message: str | None, outcome: _Outcome, scan: bool) -> str:
        if self._hide_exceptions and message:
            text = text.replace(message, HIDDEN)
            outcome.redacted = True
        return self.clean_text(text, outcome, scan=scan)

    def _clean_event(self, event: Event, outcome: _Outcome, scan: bool) -> Event:
        attributes = event.attributes or {}
        if event.name != "exception":
            cleaned = {k: self._clean_value(v, outcome, scan) for k, v in attributes.items()}
        else:
            message = attributes.get(_EXCEPTION_MESSAGE)
            message = message if isinstance(message, str) else None
            cleaned = {}
            for key, value in attributes.items():
                if key in (_EXCEPTION_MESSAGE, _EXCEPTION_STACKTRACE) and isinstance(value, str):
                    cleaned[key] = self._clean_exception_text(value, message, outcome, scan)
                else:
                    cleaned[key] = self._clean_value(value, outcome, scan)
        return Event(event.name, cleaned, timestamp=event.timestamp, limit=None)

    def _exception_messages(self, span: ReadableSpan) -> list[str]:
        messages: list[str] = []
        for event in span.events:
            if event.name == "exception" and event.attributes:
                message = event.attributes.get(_EXCEPTION_MESSAGE)
                if isinstance(message, str) and message:
                    messages.append(message)
        return messages

    def _changes(self, text: str) -> bool:
        if text in self._unchanged:
            return False
        if len(text) > self.max_attribute_length:
            return True
        if may_hold_secret(text) and self.clean_text(text) != text:
            return True
        # Span strings repeat (roles, names, a signature's system prompt, invocation parameters):
        # remember the ones that need nothing, so the next span only hashes them.
        self._unchanged_chars += len(text)
        if len(self._unchanged) >= _UNCHANGED_LIMIT or self._unchanged_chars > _UNCHANGED_CHARS:
            self._unchanged.clear()
            self._unchanged_chars = len(text)
        self._unchanged[text] = None
        return False

    def _changes_any(self, attributes: Mapping[str, Any] | None) -> bool:
        """Whether the secret patterns or the length limit change any string of ``attributes``."""
        for value in (attributes or {}).values():
            if isinstance(value, str):
                if self._changes(value):
                    return True
            elif isinstance(value, tuple | list):
                for item in value:
                    if isinstance(item, str) and self._changes(item):
                        return True
        return False

    # -- spans ---------------------------------------------------------------------------------

    def redact(self, span: ReadableSpan) -> ReadableSpan:
        """Return ``span`` with hidden values replaced, secrets redacted and long strings truncated.

        The span is returned unchanged (the same object) when nothing applies; otherwise the copy
        carries ``geode.redacted`` and/or ``geode.truncated``.
        """
        if not (self._rewrites or span.events or span.status.description):
            # The common case (attributes only, secrets and length the only rules): look at each
            # string once, and copy nothing unless one of them changes.
            if not self._changes_any(attribute_dict(span)):
                return span
        text, longest = _strings_of(span)
        scan = may_hold_secret(text)
        if not (scan or self._rewrites or longest > self.max_attribute_length):
            return span  # nothing to hide, redact or cut: the common case, without copying anything
        outcome = _Outcome()
        attributes = self._clean_attributes(attribute_dict(span), outcome, scan)
        events = [self._clean_event(event, outcome, scan) for event in span.events]
        status = span.status
        description = status.description
        if description:
            cleaned = description
            if self._hide_exceptions:
                for message in self._exception_messages(span):
                    if message in cleaned:
                        cleaned = cleaned.replace(message, HIDDEN)
                        outcome.redacted = True
            cleaned = self.clean_text(cleaned, outcome, scan=scan)
            if cleaned != description:
                status = Status(status.status_code, cleaned)
        if not (outcome.redacted or outcome.truncated):
            return span
        if outcome.redacted:
            attributes[GeodeAttributes.REDACTED] = True
        if outcome.truncated:
            attributes[GeodeAttributes.TRUNCATED] = True
        return ReadableSpan(
            name=span.name,
            context=span.get_span_context(),
            parent=span.parent,
            resource=span.resource,
            attributes=attributes,
            events=events,
            links=span.links,
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )
