"""Fixtures for instrumentation tests: an in-memory tracer provider with Geode's instrumentation on."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from geode.runtime.instrumentation import instrument, uninstrument
from geode.testing import ScriptedLM, in_memory_tracing, span_tree


@dataclass
class Traced:
    provider: TracerProvider
    exporter: InMemorySpanExporter

    @property
    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def tree(self) -> list[dict[str, Any]]:
        return span_tree(self.spans)

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, f"{len(found)} spans named {name!r}: {[s.name for s in self.spans]}"
        return found[0]

    def of_kind(self, kind: str) -> list[ReadableSpan]:
        return [s for s in self.spans if (s.attributes or {}).get("openinference.span.kind") == kind]

    def trace_ids(self) -> set[int]:
        return {s.context.trace_id for s in self.spans if s.context is not None}

    def shape(self) -> list[Any]:
        """Names and kinds only, nested: easier to compare than the full tree."""
        return _shape(self.tree())

    @staticmethod
    def lm(answers: Sequence[dict[str, Any]] | Any) -> ScriptedLM:
        """A ScriptedLM (like DSPy's DummyLM, it never answers from DSPy's response cache)."""
        return ScriptedLM(answers)


@pytest.fixture
def traced() -> Iterator[Traced]:
    provider, exporter = in_memory_tracing()
    instrument(tracer_provider=provider)
    try:
        yield Traced(provider, exporter)
    finally:
        uninstrument()


def _shape(tree: list[dict[str, Any]]) -> list[Any]:
    return [
        (n["name"], n["kind"], _shape(n["children"])) if n["children"] else (n["name"], n["kind"])
        for n in tree
    ]
