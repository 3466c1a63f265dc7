"""The secret-pattern prefilter: it may let text through to the patterns needlessly, never skip a secret."""

from __future__ import annotations

import random
import re

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from geode.runtime.tracing.redaction import (
    REDACTED,
    SECRET_HINTS,
    SECRET_PATTERNS,
    SpanRedactor,
    may_hold_secret,
)
from geode.testing import in_memory_tracing

# One real-looking secret per pattern, in SECRET_PATTERNS order.
SAMPLES = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIabc\n-----END RSA PRIVATE KEY-----",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36",
    "sk-proj-abcdefghijklmnopqrstuvwx",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
    "xoxb-1234567890-abcdefghij",
    "AIzaSyA-abcdefghijklmnopqrstuvwxyz01234",
    "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH",
    "Authorization: BeArEr abcdefgh.ijklmnop",
    "postgres://admin:hunter2@db.internal:5432/app",
)


def test_every_pattern_has_hints_that_its_matches_contain() -> None:
    assert len(SECRET_HINTS) == len(SECRET_PATTERNS) == len(SAMPLES)
    for pattern, hints, sample in zip(SECRET_PATTERNS, SECRET_HINTS, SAMPLES, strict=True):
        match = re.search(pattern, sample)
        assert match is not None, pattern
        text = match.group(0) if "://" not in hints else sample[match.start() - 3 : match.end()]
        assert any(h in (text.lower() if h == "bearer" else text) for h in hints), (pattern, hints)
        assert may_hold_secret(sample)


def test_prefilter_never_changes_what_is_redacted() -> None:
    redactor = SpanRedactor()
    rng = random.Random(7)
    fragments = [
        *SAMPLES,
        "the answer is 42",
        "sk",
        "-",
        "k-",
        "gh",
        "p_",
        "bear",
        "er ",
        ":/",
        "/",
        "@",
        "eyJ",
        "AKI",
        "A",
        " ",
        "\n",
        "[[ ## answer ## ]]",
        "x" * 40,
        "0123456789abcdefghij",
    ]
    checked = hits = 0
    for _ in range(3000):
        text = "".join(rng.choice(fragments) for _ in range(rng.randint(1, 8)))
        full = redactor.clean_text(text)
        filtered = redactor.clean_text(text, scan=may_hold_secret(text))
        assert filtered == full, text
        checked += 1
        hits += REDACTED in full
    assert hits > 100 and checked - hits > 100  # both kinds of text were exercised


def _finished(**kwargs: object) -> ReadableSpan:
    provider, exporter = in_memory_tracing()
    with provider.get_tracer("t").start_as_current_span("s", attributes={"plain": "nothing here"}) as span:
        if "attribute" in kwargs:
            span.set_attribute("tags", ("fine", str(kwargs["attribute"])))
        if "event" in kwargs:
            span.add_event("note", {"detail": str(kwargs["event"])})
        if "status" in kwargs:
            span.set_status(StatusCode.ERROR, str(kwargs["status"]))
    (finished,) = exporter.get_finished_spans()
    return finished


def test_secrets_anywhere_in_a_span_are_still_found() -> None:
    secret = SAMPLES[2]
    in_tuple = _finished(attribute=f"key {secret}")
    assert in_tuple.attributes is not None and in_tuple.attributes["tags"] == ("fine", f"key {REDACTED}")
    in_event = _finished(event=f"token={secret}")
    assert in_event.events[0].attributes == {"detail": f"token={REDACTED}"}
    in_status = _finished(status=f"failed with {secret}")
    assert in_status.status.description == f"failed with {REDACTED}"
    clean = _finished(attribute="sk", event="-")  # hints must not join across values
    assert clean.attributes is not None and clean.attributes["tags"] == ("fine", "sk")


def test_spans_that_need_nothing_come_back_untouched_and_others_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import geode.runtime.tracing.redaction as redaction

    rng = random.Random(11)
    redactor = SpanRedactor(max_attribute_length=64)
    spans = [
        _finished(attribute=" ".join(rng.choice(SAMPLES + ("plain words",) * 8) for _ in range(3)))
        for _ in range(60)
    ]
    fast = [redactor.redact(span) for span in spans]
    monkeypatch.setattr(redaction, "may_hold_secret", lambda text: True)  # every span the long way
    slow = [redactor.redact(span) for span in spans]
    untouched = 0
    for span, quick, full in zip(spans, fast, slow, strict=True):
        assert quick.attributes == full.attributes and quick.status == full.status
        untouched += quick is span
    assert 0 < untouched < len(spans)


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "DB_PASSWORD",
        "aws_secret_access_key",
        "x-api-key",
        "apiKey",
        "AccessKey",
        "private-key",
        "Authorization",
        "refresh_token",
        "sessionid",
        "cookie",
        "client_credentials",
    ],
)
def test_every_secret_name_value_has_a_hint_and_is_redacted(name: str) -> None:
    for text in (f"{name}=s3cr3tvalue", f'{{"{name}": "s3cr3tvalue"}}', f"{name}: 's3cr3tvalue'"):
        assert may_hold_secret(text), text
        cleaned = SpanRedactor().clean_text(text)
        assert "s3cr3tvalue" not in cleaned and REDACTED in cleaned, text


def test_a_hint_in_one_string_does_not_send_the_others_through_the_patterns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every LLM span carries `max_tokens` (a name-value hint) in its invocation parameters; its long
    # prompt holds no hint and must not be scanned, and the span comes back as it was.
    provider, exporter = in_memory_tracing()
    prompt = "Answer the question from the passages. " * 200
    params = '{"temperature": 0.0, "max_tokens": 512}'
    with provider.get_tracer("t").start_as_current_span(
        "llm",
        attributes={"llm.invocation_parameters": params, "llm.input_messages.0.message.content": prompt},
    ):
        pass
    (span,) = exporter.get_finished_spans()
    import geode.runtime.tracing.redaction as redaction

    scanned: list[str] = []
    original = redaction.redact_name_values

    def spy(text: str) -> str:
        scanned.append(text)
        return original(text)

    monkeypatch.setattr(redaction, "redact_name_values", spy)
    redactor = SpanRedactor()
    assert redactor.redact(span) is span
    assert scanned == [params]
    scanned.clear()
    assert redactor.redact(span) is span  # remembered: not even the parameters again
    assert scanned == []


def test_the_memory_of_clean_strings_is_bounded() -> None:
    import geode.runtime.tracing.redaction as redaction

    redactor = SpanRedactor()
    provider, exporter = in_memory_tracing()
    tracer = provider.get_tracer("t")
    for i in range(redaction._UNCHANGED_LIMIT + 10):
        with tracer.start_as_current_span("s", attributes={"v": f"value {i}"}):
            pass
    for span in exporter.get_finished_spans():
        redactor.redact(span)
    assert len(redactor._unchanged) <= redaction._UNCHANGED_LIMIT
    big = "y" * (redaction._UNCHANGED_CHARS // 2 + 1)
    for text in (big, big + "z", big + "zz"):
        redactor._changes(text)
    assert redactor._unchanged_chars <= redaction._UNCHANGED_CHARS
