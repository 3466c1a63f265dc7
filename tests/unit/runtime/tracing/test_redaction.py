"""Redaction and truncation before export: inputs, outputs, messages, documents, exceptions, secrets."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import dspy
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from geode.errors import ConfigError
from geode.runtime.instrumentation import instrument, uninstrument
from geode.runtime.settings import TracingSettings
from geode.runtime.tracing import SpanRedactor
from geode.runtime.tracing.redaction import HIDDEN, REDACTED
from geode.testing import ScriptedLM, in_memory_tracing

SECRET = "sk-proj-abcdefghijklmnopqrstuvwx"
QA: Any = "question -> answer"


@dataclass
class Passage:
    id: str
    text: str
    score: float
    metadata: dict[str, Any]


class Docs(dspy.Module):
    geode_span_kind: ClassVar[str] = "RETRIEVER"

    def forward(self, query: str) -> dspy.Prediction:
        return dspy.Prediction(
            passages=[
                Passage("p1", f"the key is {SECRET}; ssn 123-45-6789", 0.5, {"owner": "alice@example.com"})
            ]
        )


def leaky_tool(account: str) -> str:
    """Looks up an account."""
    raise PermissionError(f"account {account} denied for token {SECRET}")


def _run(settings: TracingSettings) -> list[ReadableSpan]:
    """Run a retriever, a ReAct agent with a failing tool, and return the exported spans."""
    provider, exporter = in_memory_tracing(settings)
    instrument(tracer_provider=provider)
    try:
        script = [
            {
                "next_thought": "Check.",
                "next_tool_name": "leaky_tool",
                "next_tool_args": {"account": "ACC-42"},
            },
            {"next_thought": "Stop.", "next_tool_name": "finish", "next_tool_args": {}},
            {"reasoning": "denied", "answer": "no access for ACC-42"},
        ]
        with dspy.context(lm=ScriptedLM(script)):
            Docs()(query="where is the key")
            dspy.ReAct(QA, tools=[leaky_tool], max_iters=3)(question="Open ACC-42")
    finally:
        uninstrument()
    return list(_exported(exporter))


def _exported(exporter: InMemorySpanExporter) -> Iterator[ReadableSpan]:
    yield from exporter.get_finished_spans()


def _span(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name]
    return span


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _exception(span: ReadableSpan) -> dict[str, Any]:
    (event,) = [e for e in span.events if e.name == "exception"]
    return dict(event.attributes or {})


def _settings(**values: Any) -> TracingSettings:
    return TracingSettings.model_construct(**values)


def test_secrets_are_redacted_everywhere_by_default() -> None:
    spans = _run(_settings())
    for span in spans:
        text = json.dumps({**_attrs(span), "events": [dict(e.attributes or {}) for e in span.events]})
        assert SECRET not in text, span.name
        assert SECRET not in (span.status.description or ""), span.name
    docs = _attrs(_span(spans, "Docs"))
    assert docs["retrieval.documents.0.document.content"] == f"the key is {REDACTED}; ssn 123-45-6789"
    assert docs["geode.redacted"] is True
    tool = _span(spans, "leaky_tool")
    assert _exception(tool)["exception.message"] == f"account ACC-42 denied for token {REDACTED}"
    assert SECRET not in _exception(tool)["exception.stacktrace"]
    # Spans with nothing to redact are exported as they were.
    assert "geode.redacted" not in _attrs(_span(spans, "iteration 2"))


def test_user_patterns_apply_to_documents_and_metadata() -> None:
    spans = _run(_settings(redact_patterns=(r"\d{3}-\d{2}-\d{4}", r"(?i)[a-z]+@example\.com")))
    docs = _attrs(_span(spans, "Docs"))
    assert docs["retrieval.documents.0.document.content"] == f"the key is {REDACTED}; ssn {REDACTED}"
    assert json.loads(docs["retrieval.documents.0.document.metadata"]) == {"owner": REDACTED}


def test_hide_inputs_hides_inputs_input_messages_and_exception_messages() -> None:
    spans = _run(_settings(hide_inputs=True))
    for span in spans:
        attributes = _attrs(span)
        if "input.value" in attributes:
            assert attributes["input.value"] == HIDDEN, span.name
        for key, value in attributes.items():
            if key.startswith("llm.input_messages.") and key.endswith(".message.content"):
                assert value == HIDDEN
            if key.startswith("llm.input_messages.") and key.endswith(".message.role"):
                assert value in ("system", "user")
    tool = _span(spans, "leaky_tool")
    assert _exception(tool)["exception.message"] == HIDDEN
    assert "ACC-42" not in _exception(tool)["exception.stacktrace"]
    assert "ACC-42" not in (tool.status.description or "")
    assert tool.status.status_code is StatusCode.ERROR
    # Outputs stay.
    assert _attrs(_span(spans, "leaky_tool")).get("output.value") is None
    assert "no access" in _attrs(_span(spans, "ReAct"))["output.value"]


def test_hide_outputs_hides_outputs_and_retrieved_documents() -> None:
    spans = _run(_settings(hide_outputs=True))
    docs = _attrs(_span(spans, "Docs"))
    assert docs["retrieval.documents.0.document.content"] == HIDDEN
    assert docs["retrieval.documents.0.document.metadata"] == HIDDEN
    assert docs["retrieval.documents.0.document.id"] == "p1"
    assert docs["retrieval.documents.0.document.score"] == 0.5
    assert docs["input.value"] == "where is the key"
    for span in spans:
        attributes = _attrs(span)
        if "output.value" in attributes:
            assert attributes["output.value"] == HIDDEN, span.name
        for key, value in attributes.items():
            if key.startswith("llm.output_messages.") and key.endswith(".message.content"):
                assert value == HIDDEN


def test_hide_messages_hides_llm_content_only() -> None:
    spans = _run(_settings(hide_messages=True))
    llm = [s for s in spans if _attrs(s).get("openinference.span.kind") == "LLM"]
    assert llm
    for span in llm:
        attributes = _attrs(span)
        assert "input.value" not in attributes  # an LLM span's input is its messages
        assert attributes["output.value"] == HIDDEN
        assert attributes["llm.input_messages.1.message.content"] == HIDDEN
        assert attributes["llm.input_messages.1.message.role"] == "user"
        assert attributes["llm.output_messages.0.message.content"] == HIDDEN
        assert attributes["llm.token_count.total"] > 0
    assert json.loads(_attrs(_span(spans, "ReAct"))["input.value"]) == {"question": "Open ACC-42"}


def test_long_values_are_truncated_with_a_marker_and_flag() -> None:
    redactor = SpanRedactor(max_attribute_length=100)
    provider, exporter = in_memory_tracing()
    with provider.get_tracer("t").start_as_current_span(
        "big",
        attributes={
            "input.value": json.dumps({"text": "x" * 1000}),
            "input.mime_type": "application/json",
            "tag.tags": ("short", "y" * 500),
            "llm.token_count.total": 7,
        },
    ):
        pass
    (span,) = exporter.get_finished_spans()
    cleaned = redactor.redact(span)
    attributes = _attrs(cleaned)
    assert len(attributes["input.value"]) == 100
    assert attributes["input.value"].endswith("chars]")
    assert attributes["input.mime_type"] == "text/plain"
    assert attributes["tag.tags"][0] == "short"
    assert len(attributes["tag.tags"][1]) == 100
    assert attributes["llm.token_count.total"] == 7
    assert attributes["geode.truncated"] is True
    assert "geode.redacted" not in attributes
    assert cleaned.context == span.context and cleaned.parent == span.parent


def test_a_clean_span_is_passed_through_unchanged() -> None:
    provider, exporter = in_memory_tracing()
    with provider.get_tracer("t").start_as_current_span("plain", attributes={"input.value": "hello"}):
        pass
    (span,) = exporter.get_finished_spans()
    assert SpanRedactor().redact(span) is span


def test_invalid_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        SpanRedactor(patterns=("(unclosed",))


def test_secret_name_values_in_invocation_parameters_are_redacted() -> None:
    params = json.dumps(
        {"aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG", "max_tokens": 512, "author": "ann"}
    )
    cleaned = json.loads(SpanRedactor().clean_text(params))
    assert cleaned == {"aws_secret_access_key": REDACTED, "max_tokens": 512, "author": "ann"}
    assert SpanRedactor().clean_text("db_password=hunter2 temperature=0.1") == (
        f"db_password={REDACTED} temperature=0.1"
    )


def test_pii_is_redacted_only_when_asked() -> None:
    text = "mail ana.b@example.co.uk or +44 20 7946 0958, card 4111-1111-1111-1111, order 1234567890123"
    assert SpanRedactor().clean_text(text) == text
    assert SpanRedactor(redact_pii=True).clean_text(text) == (
        "mail [EMAIL] or [PHONE], card [CARD], order 1234567890123"  # not a Luhn number: kept
    )
    spans = _run(_settings(redact_pii=True))
    docs = _attrs(_span(spans, "Docs"))
    assert json.loads(docs["retrieval.documents.0.document.metadata"]) == {"owner": "[EMAIL]"}
    assert docs["geode.redacted"] is True


@pytest.mark.parametrize(
    "text",
    [
        "a-" * 100_000 + "=",
        "password" + " " * 100_000,
        "x" * 200_000 + "@" + "a." * 50_000,
        "1 " * 100_000,
        "+1" + " 2" * 100_000,
    ],
    ids=["dashes", "spaces", "email", "digits", "phone"],
)
def test_redaction_time_is_linear_in_adversarial_input(text: str) -> None:
    redactor = SpanRedactor(redact_pii=True)
    start = time.perf_counter()
    redactor.clean_text(text)
    assert time.perf_counter() - start < 1.0
