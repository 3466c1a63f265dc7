"""The serving parts on their own: schema, sessions, keys and quotas, limits, trace gate, comparison."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dspy
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from geode.cli.compare_versions import parse_since
from geode.cli.serve import parse_split
from geode.errors import ConfigError, InputError
from geode.examples.qa import FactQA
from geode.runtime.serving import ApiKeys, MemorySessionStore, Quotas, Turn
from geode.runtime.serving.compare import compare_versions
from geode.runtime.serving.errors import RateLimitedError, UnauthorizedError
from geode.runtime.serving.feedback import FeedbackLog, FeedbackRecord, read_feedback
from geode.runtime.serving.limits import json_depth_exceeds
from geode.runtime.serving.sampling import TraceGate, install_trace_gate
from geode.runtime.serving.schema import interface_of, route_name
from geode.runtime.serving.traffic import in_share
from geode.traces.records import SpanRecord, TraceRecord
from geode.traces.vocab import GeodeAttributes, SpanAttributes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_interface_from_signature_and_from_forward() -> None:
    predict = interface_of(dspy.Predict("question, context -> answer, confidence: float"))
    assert predict.input_names == ("question", "context")
    assert predict.output_names == ("answer", "confidence")
    facts = interface_of(FactQA())
    assert facts.input_names == ("question",) and facts.output_names == ("answer",)

    class Bad(dspy.Module):
        def forward(self, session_id: str) -> dspy.Prediction:
            return dspy.Prediction()

        geode_signature = "session_id -> answer"

    with pytest.raises(ConfigError, match="reserves"):
        interface_of(Bad())
    assert route_name("geode.examples.qa:program") == "geode.examples.qa.program"


def test_session_store_bounds_turns_sessions_and_age() -> None:
    clock = Clock()
    store = MemorySessionStore(max_sessions=2, ttl_s=10, max_turns=2, clock=clock)
    for n in range(3):
        store.append("a", Turn({"q": n}, {"a": n}))
    assert [t.inputs["q"] for t in store.turns("a")] == [1, 2]
    store.append("b", Turn({}, {}))
    store.append("c", Turn({}, {}))
    assert store.turns("a") == () and store.evicted == 1
    clock.now += 11
    assert len(store) == 0


def test_api_keys_and_loopback_rule() -> None:
    keys = ApiKeys(["a" * 20, "b" * 20], host="0.0.0.0")
    assert keys.check("Bearer " + "a" * 20, None, "1.2.3.4").startswith("key:")
    assert keys.check(None, "b" * 20, None) != keys.check(None, "a" * 20, None)
    with pytest.raises(UnauthorizedError):
        keys.check("Bearer " + "c" * 20, None, None)
    with pytest.raises(UnauthorizedError):
        keys.check("Basic abc", None, None)
    with pytest.raises(ConfigError, match="16 characters"):
        ApiKeys(["short"], host="127.0.0.1")
    assert ApiKeys([], host="::1").check(None, None, "127.0.0.1") == "addr:127.0.0.1"


def test_quotas_refill_over_time() -> None:
    clock = Clock()
    quotas = Quotas(requests_per_minute=2, tokens_per_hour=100, clock=clock)
    quotas.admit("k")
    quotas.admit("k")
    with pytest.raises(RateLimitedError) as raised:
        quotas.admit("k")
    assert raised.value.retry_after_s == 30
    quotas.admit("other")  # callers do not share buckets
    clock.now += 30
    quotas.admit("k")
    quotas.charge("k", 500)
    clock.now += 60
    with pytest.raises(RateLimitedError, match="token budget"):
        quotas.admit("k")


def test_json_depth() -> None:
    assert not json_depth_exceeds(b'{"a": "[[[[[[[[[[[["}', 2)  # brackets inside strings do not count
    assert json_depth_exceeds(b"[" * 40 + b"]" * 40, 32)
    assert not json_depth_exceeds(b'{"a": [1, {"b": [2]}]}', 4)


def test_in_share_is_deterministic_and_proportional() -> None:
    keys = [f"s{n}" for n in range(2000)]
    chosen = [k for k in keys if in_share(k, 0.25)]
    assert 400 < len(chosen) < 600
    assert chosen == [k for k in keys if in_share(k, 0.25)]


def test_parse_split_and_since() -> None:
    assert parse_split("qa=abc", default_share=0.1).share == 0.1
    assert parse_split("qa=abc:0.5", default_share=0.1).version == "abc"
    with pytest.raises(ConfigError):
        parse_split("qa=abc:2", default_share=0.1)
    assert parse_since("1h") == timedelta(hours=1)
    with pytest.raises(InputError):
        parse_since("soon")


def _gate(ratio: float) -> tuple[TracerProvider, InMemorySpanExporter, TraceGate]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gate = install_trace_gate(provider, {"qa": ratio}, 1.0, hold_s=60)
    assert gate is not None
    return provider, exporter, gate


def _run(provider: TracerProvider, *, fail: bool = False) -> str:
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("root", attributes={GeodeAttributes.PROGRAM_NAME: "qa"}) as root:
        with tracer.start_as_current_span("child") as child:
            if fail:
                child.set_status(Status(StatusCode.ERROR))
        return format(root.get_span_context().trace_id, "032x")


def test_trace_gate_keeps_errors_and_feedback_and_samples_the_rest() -> None:
    provider, exporter, gate = _gate(0.0)
    kept_by_error = _run(provider, fail=True)
    held = [_run(provider) for _ in range(5)]
    exported = {format(s.context.trace_id, "032x") for s in exporter.get_finished_spans() if s.context}
    assert exported == {kept_by_error}
    assert gate.keep(held[0]) is True
    exported = {format(s.context.trace_id, "032x") for s in exporter.get_finished_spans() if s.context}
    assert exported == {kept_by_error, held[0]}
    assert len(exporter.get_finished_spans()) == 4  # both spans of each kept trace
    assert gate.stats.errors == 1 and gate.stats.feedback == 1


def test_trace_gate_ratio_and_expiry() -> None:
    provider, exporter, gate = _gate(0.3)
    clock = Clock()
    gate._clock = clock
    ids = [_run(provider) for _ in range(300)]
    kept = {format(s.context.trace_id, "032x") for s in exporter.get_finished_spans() if s.context}
    assert 50 < len(kept) < 130
    clock.now += 61
    _run(provider)  # any activity expires what waited too long
    assert gate.stats.dropped >= 300 - len(kept) - 1
    assert gate.keep(next(i for i in ids if i not in kept)) is False


def _trace(
    n: int, version: str | None, *, error: bool = False, ms: int = 100, tokens: int = 10
) -> TraceRecord:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    trace_id = f"{n:032x}"
    attrs = {GeodeAttributes.PROGRAM_NAME: "qa"}
    if version:
        attrs[GeodeAttributes.PROGRAM_VERSION] = version
    root = SpanRecord(
        trace_id,
        f"{n:016x}",
        None,
        "qa",
        "CHAIN",
        start,
        start + timedelta(milliseconds=ms),
        status="ERROR" if error else "OK",
        attributes=attrs,
    )
    llm = SpanRecord(
        trace_id,
        f"{n + 1:016x}",
        root.span_id,
        "lm",
        "LLM",
        start,
        start,
        attributes={SpanAttributes.LLM_TOKEN_COUNT_TOTAL: tokens, SpanAttributes.LLM_COST_TOTAL: 0.001},
    )
    return TraceRecord.from_spans([root, llm])


def test_compare_versions_rows(tmp_path: Path) -> None:
    traces = [_trace(n * 2, None, ms=100 + n) for n in range(10)]
    traces += [_trace(100 + n * 2, "v2", error=n == 0, ms=200, tokens=20) for n in range(4)]
    log = FeedbackLog(tmp_path / "fb.jsonl")
    log.send(FeedbackRecord(trace_id=traces[0].trace_id, name="user_feedback", score=1.0))
    log.send(FeedbackRecord(trace_id=traces[10].trace_id, name="user_feedback", score=0.0))
    log.send(FeedbackRecord(trace_id=traces[11].trace_id, name="user_feedback", score=0.5))
    rows = {r.version: r for r in compare_versions(traces, read_feedback(log.path))}
    assert rows["base"].runs == 10 and rows["base"].errors == 0 and rows["base"].mean_score == 1.0
    assert rows["v2"].error_rate == 0.25 and rows["v2"].tokens_per_run == 20
    assert rows["v2"].mean_score == 0.25 and rows["v2"].feedback == 2
    assert rows["v2"].p50_ms == pytest.approx(200)
    assert rows["base"].cost_per_run == pytest.approx(0.001)
