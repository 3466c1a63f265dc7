"""The runtime's tracing: set up from settings or a given provider, per-runtime routing, bounded close."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest

from geode.runtime.instrumentation import is_instrumented, uninstrument
from geode.runtime.runtime import Runtime
from geode.runtime.settings import PhoenixSettings, Settings, TracingSettings
from geode.testing import ScriptedLM, in_memory_tracing
from geode.traces.otlp_json import decode_attributes, iter_spans, read_requests


@pytest.fixture(autouse=True)
def _clean_instrumentation() -> Iterator[None]:
    yield
    uninstrument()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(tmp_path: Path, **tracing: Any) -> Settings:
    return Settings(
        home=tmp_path / "home", tracing=TracingSettings(**tracing), phoenix=PhoenixSettings(port=_free_port())
    )


def test_runtime_traces_runs_to_its_otlp_file_with_identity(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    rt = Runtime(_settings(tmp_path, otlp_file=path), lm=ScriptedLM([{"answer": "Paris"}]))
    assert rt.tracer_provider is not None
    assert is_instrumented()
    rt.run(
        dspy.Predict("question -> answer"), session_id="s-9", user_id="u-1", tags=["web"], question="Capital?"
    )
    rt.close()
    assert not is_instrumented(), "instrumentation started by the runtime ends with it"

    spans = [decode_attributes(s.span["attributes"]) for r in read_requests(path) for s in iter_spans(r)]
    assert sorted(a["openinference.span.kind"] for a in spans) == ["CHAIN", "LLM"]
    for attributes in spans:
        assert attributes["session.id"] == "s-9"
        assert attributes["user.id"] == "u-1"
        assert attributes["tag.tags"] == ("web",)
        assert attributes["geode.program.name"]


def test_runtime_uses_a_given_provider_and_only_flushes_it(tmp_path: Path) -> None:
    provider, exporter = in_memory_tracing()
    rt = Runtime(_settings(tmp_path), lm=ScriptedLM([{"answer": "a"}]), tracer_provider=provider)
    assert rt.tracer_provider is provider
    rt.run(dspy.Predict("question -> answer"), session_id="s", question="q")
    rt.close()
    assert len(exporter.get_finished_spans()) == 2
    with provider.get_tracer("still").start_as_current_span("open"):
        pass
    assert len(exporter.get_finished_spans()) == 3, "the caller's provider must not be shut down"


def test_two_runtimes_each_get_their_own_spans(tmp_path: Path) -> None:
    first_provider, first = in_memory_tracing()
    second_provider, second = in_memory_tracing()
    rt1 = Runtime(_settings(tmp_path), lm=ScriptedLM([{"answer": "1"}]), tracer_provider=first_provider)
    rt2 = Runtime(_settings(tmp_path), lm=ScriptedLM([{"answer": "2"}] * 2), tracer_provider=second_provider)
    rt2.run(dspy.Predict("question -> answer"), question="two")
    rt1.run(dspy.Predict("question -> answer"), question="one")
    assert {s.name for s in first.get_finished_spans()} == {"Predict", "scripted"}
    assert {s.name for s in second.get_finished_spans()} == {"Predict", "scripted"}
    assert "one" in str(first.get_finished_spans()[-1].attributes)
    assert "two" in str(second.get_finished_spans()[-1].attributes)
    rt1.close()
    assert is_instrumented(), "the second runtime still needs instrumentation"
    rt2.run(dspy.Predict("question -> answer"), question="again")
    rt2.close()
    assert not is_instrumented()


def test_disabled_tracing_builds_nothing(tmp_path: Path) -> None:
    rt = Runtime(_settings(tmp_path, enabled=False), lm=ScriptedLM([{"answer": "x"}]))
    assert rt.tracer_provider is None
    assert not is_instrumented()
    assert rt.run(dspy.Predict("question -> answer"), question="q").answer == "x"
    rt.close()


def test_close_returns_within_the_deadline_when_the_collector_hangs(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        rt = Runtime(
            _settings(tmp_path, endpoint=url, export_timeout_s=0.5), lm=ScriptedLM([{"answer": "x"}] * 3)
        )
        for _ in range(3):
            started = time.monotonic()
            rt.run(dspy.Predict("question -> answer"), question="q")
            assert time.monotonic() - started < 0.5
        started = time.monotonic()
        rt.close()
        assert time.monotonic() - started < 1.5
    finally:
        listener.close()


def test_each_run_hands_back_its_own_trace_id(tmp_path: Path) -> None:
    import asyncio

    from opentelemetry import trace

    from geode.runtime.runtime import trace_id_of

    provider, exporter = in_memory_tracing()
    program = dspy.Predict("question -> answer")
    lm = ScriptedLM([{"answer": str(i)} for i in range(4)])
    with Runtime(Settings(home=tmp_path), lm=lm, tracer_provider=provider) as rt:
        first = rt.run(program, question="a")
        second = asyncio.run(rt.arun(program, question="b"))
        # Inside the application's own span the run joins that trace, and says so.
        with provider.get_tracer("app").start_as_current_span("request") as outer:
            third = rt.run(program, question="c")
        outer_trace = format(outer.get_span_context().trace_id, "032x")

    roots = {
        format(s.context.trace_id, "032x")
        for s in exporter.get_finished_spans()
        if s.parent is None and s.name != "request" and s.context is not None
    }
    ids = [trace_id_of(first), trace_id_of(second)]
    assert all(i is not None and len(i) == 32 for i in ids)
    assert set(ids) == roots and ids[0] != ids[1]
    assert trace_id_of(third) == outer_trace
    assert "_geode_trace_id" not in first.keys()  # not an output field
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_untraced_runs_have_no_trace_id(tmp_path: Path) -> None:
    from geode.runtime.runtime import trace_id_of

    settings = Settings(home=tmp_path, tracing=TracingSettings(enabled=False))
    with Runtime(settings, lm=ScriptedLM([{"answer": "x"}])) as rt:
        assert trace_id_of(rt.run(dspy.Predict("question -> answer"), question="q")) is None
