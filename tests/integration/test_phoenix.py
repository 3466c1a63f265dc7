"""Against a real Phoenix: the launcher starts ``phoenix serve``, spans go in over OTLP/HTTP, and come back
through :class:`PhoenixTraceSource` (``arize-phoenix-client``) exactly as they were written.

One Phoenix serves the whole session (the ``phoenix`` fixture in conftest.py); every test writes to its
own project.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import dspy
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import geode
from geode.agents import DecomposeSolveCombine
from geode.cli import main
from geode.runtime.phoenix import PhoenixServer, PhoenixStatus
from geode.runtime.settings import PhoenixSettings, Settings, TracingSettings
from geode.testing import ScriptedCall, ScriptedLM
from geode.testing.spans import SpanTreeBuilder, agent_run_tree, workflow_run_tree
from geode.traces.records import SpanRecord, TraceRecord
from geode.traces.sources import InMemoryTraceSource, OtlpFileTraceSource, PhoenixTraceSource, TraceFilter

pytestmark = pytest.mark.phoenix

WAIT_S = 120.0
"""Deadline for Phoenix to ingest a test's spans (it manages ~125 spans/s on a busy 2-core machine)."""


def _project() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def _builder_to(phoenix: PhoenixStatus, project: str) -> SpanTreeBuilder:
    builder = SpanTreeBuilder(project=project)
    builder.provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=phoenix.collector_endpoint))
    )
    return builder


def _comparable(span: SpanRecord) -> tuple[object, ...]:
    return (
        span.trace_id,
        span.span_id,
        span.parent_id,
        span.name,
        span.kind,
        span.start_time,
        span.end_time,
        span.status,
        span.status_message,
        span.canonical_attributes(),
        span.exception,
    )


def _same_traces(got: list[TraceRecord], want: list[TraceRecord]) -> None:
    assert [t.trace_id for t in got] == [t.trace_id for t in want]
    for g, w in zip(got, want, strict=True):
        assert [_comparable(s) for s in g.spans] == [_comparable(s) for s in w.spans]


def test_launcher_reuses_the_running_server(phoenix: PhoenixStatus, tmp_path: Path) -> None:
    port = int(phoenix.url.rsplit(":", 1)[1])
    again = PhoenixServer(PhoenixSettings(port=port), working_dir=tmp_path / "phoenix").start()
    assert again.reused and again.running and again.url == phoenix.url
    assert again.version == phoenix.version


def test_spans_come_back_exactly_as_written(phoenix: PhoenixStatus) -> None:
    project = _project()
    builder = _builder_to(phoenix, project)
    agent = builder.emit(agent_run_tree(tool_error="index offline"))
    workflow = builder.emit(workflow_run_tree(), gap_ms=50)
    builder.shutdown()
    with PhoenixTraceSource(phoenix.url, project) as source:
        result = source.wait_for([agent, workflow], timeout_s=WAIT_S)
        assert result.complete, f"Phoenix did not ingest {result.missing} within {WAIT_S}s"
        assert result.source == f"Phoenix at {phoenix.url}, project {project!r}"
        expected = InMemoryTraceSource(builder.exporter)
        _same_traces(list(result.traces), [expected.trace(agent), expected.trace(workflow)])
        trace = source.trace(agent)
        root = trace.root
        assert root is not None and root.kind == "AGENT"
        assert root.tags == ("demo", "unit")
        assert root.metadata == {"team": "geo", "nested": {"a": 1}}
        failed = [s for s in trace.spans if s.status == "ERROR"]
        assert [s.tool_name for s in failed] == ["search"]
        assert failed[0].exception is not None and failed[0].exception.message == "index offline"
        assert trace.total_tokens == 110 + 111


def test_paging_and_filters_match_the_in_memory_reader(phoenix: PhoenixStatus) -> None:
    project = _project()
    builder = _builder_to(phoenix, project)
    ids: list[str] = []
    for i in range(12):
        if i % 3 == 2:
            tree = workflow_run_tree(program="app:workflow", session=f"s-{i % 2}")
        else:
            tree = agent_run_tree(
                program="app:agent",
                session=f"s-{i % 2}",
                iterations=1,
                agent_error="boom" if i == 4 else None,
            )
        ids.append(builder.emit(tree, gap_ms=20))
    builder.shutdown()
    expected = InMemoryTraceSource(builder.exporter)
    # A page size far below the trace count makes every read cross several cursor pages.
    with PhoenixTraceSource(phoenix.url, project, page_size=4) as source:
        assert source.wait_for(ids, timeout_s=WAIT_S).complete
        all_traces = list(expected.traces())
        start, end = all_traces[8].start_time, all_traces[2].start_time
        for wanted in [
            TraceFilter(),
            TraceFilter(program="app:agent"),
            TraceFilter(session_id="s-1"),
            TraceFilter(status="ERROR"),
            TraceFilter(program="app:workflow", session_id="s-0"),
            TraceFilter(start=start, end=end),
            TraceFilter(limit=5),
            TraceFilter(program="app:agent", limit=3),
        ]:
            _same_traces(list(source.traces(wanted)), list(expected.traces(wanted)))
        # SpanQuery conditions: a trace matches when any of its spans does.
        tool_runs = list(source.traces(TraceFilter(where="span_kind == 'TOOL'")))
        assert [t.trace_id for t in tool_runs] == [
            t.trace_id for t in expected.traces(TraceFilter(program="app:agent"))
        ]
        errored = list(source.traces(TraceFilter(where="status_code == 'ERROR'", program="app:agent")))
        assert [t.trace_id for t in errored] == [ids[4]]
        assert project in source.projects()


def test_wait_for_gives_up_at_the_deadline(phoenix: PhoenixStatus) -> None:
    project = _project()
    builder = _builder_to(phoenix, project)
    present = builder.emit(agent_run_tree())
    builder.shutdown()
    with PhoenixTraceSource(phoenix.url, project) as source:
        assert source.wait_for([present], timeout_s=WAIT_S).complete
        result = source.wait_for([present, "0" * 31 + "1"], timeout_s=1.0)
        assert [t.trace_id for t in result.traces] == [present]
        assert result.missing == ("0" * 31 + "1",)
        assert 1.0 <= result.elapsed_s < 10.0


def test_trace_show_reads_phoenix(
    phoenix: PhoenixStatus, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _project()
    builder = _builder_to(phoenix, project)
    first = builder.emit(agent_run_tree(program="app:agent"))
    last = builder.emit(workflow_run_tree(program="app:workflow"), gap_ms=50)
    builder.shutdown()
    monkeypatch.setenv("PHOENIX_COLLECTOR_ENDPOINT", phoenix.url)
    monkeypatch.setenv("COLUMNS", "250")
    with PhoenixTraceSource(phoenix.url, project) as source:
        assert source.wait_for([first, last], timeout_s=WAIT_S).complete

    def run(argv: list[str]) -> str:
        try:
            main(argv)
        except SystemExit as exc:
            assert not exc.code, capsys.readouterr().err
        return capsys.readouterr().out

    out = run(["trace", "show", "--last", "--project", project])
    assert last in out and "Workflow.forward" in out and f"project '{project}'" in out
    out = run(["trace", "show", first, "--project", project])
    assert "AGENT" in out and "search" in out and "100→10 tok" in out
    spans = json.loads(
        run(["trace", "show", "--last", "--program", "app:agent", "--project", project, "--json"])
    )
    assert {s["trace_id"] for s in spans} == {first}


# -- through the runtime --------------------------------------------------------------------------


class QA(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def lookup_stock(item: str) -> int:
    """Units of an item in stock."""
    return {"widget": 7, "gadget": 14}[item]


def search(query: str) -> str:
    """Search the catalogue."""
    return f"3 results for {query}"


def _step(tool: str, **args: object) -> dict[str, object]:
    return {"next_thought": f"use {tool}", "next_tool_name": tool, "next_tool_args": args}


def _answer(text: str) -> dict[str, object]:
    return {"reasoning": "from the trajectory", "answer": text}


def _identity_on_every_span(trace: TraceRecord, program: str) -> None:
    for span in trace.spans:
        assert span.get("geode.program.name") == program, span
        assert span.session_id == "sess-42", span
        assert span.get("user.id") == "user-7", span
        assert span.metadata == {"ticket": "T-1"}, span
        assert span.tags == ("integration",), span


def _llm_usage(trace: TraceRecord) -> list[tuple[int | None, int | None, int | None]]:
    return [(s.prompt_tokens, s.completion_tokens, s.total_tokens) for s in trace.find(kind="LLM")]


def _check_agent(trace: TraceRecord, calls: list[ScriptedCall], tool: str, program: str) -> None:
    assert trace.complete and len(trace.roots) == 1
    root = trace.root
    assert root is not None and root.kind == "AGENT"
    assert root.get("geode.agent.iterations") == 2
    assert root.get("geode.agent.termination") == "finish"
    # One LLM span per LM call, in order, each with the tokens the LM reported.
    assert _llm_usage(trace) == [
        (c.prompt_tokens, c.completion_tokens, c.prompt_tokens + c.completion_tokens) for c in calls
    ]
    llm_parents = [trace.parent(s) for s in trace.find(kind="LLM")]
    assert all(p is not None and p.kind == "CHAIN" for p in llm_parents)  # under their predictor step
    tools = trace.find(kind="TOOL")
    assert [s.tool_name for s in tools] == [tool]
    assert all(s.tool_name != "finish" and s.name != "finish" for s in trace.spans)  # no span for `finish`
    assert tools[0].output_value is not None
    iterations = [s for s in trace.children(root) if s.get("geode.agent.iteration") is not None]
    assert [(s.kind, s.name) for s in iterations] == [("CHAIN", "iteration 1"), ("CHAIN", "iteration 2")]
    numbers = [s.get_int("geode.agent.iteration") for s in iterations]
    # Consecutive; the base differs today (dspy.ReAct spans count from 1, geode.Agent's from 0).
    assert numbers[0] is not None and numbers == [numbers[0], numbers[0] + 1]
    assert trace.parent(tools[0]) in iterations
    _identity_on_every_span(trace, program)


def test_runtime_runs_arrive_in_phoenix_with_tree_and_attributes(
    phoenix: PhoenixStatus, tmp_path: Path
) -> None:
    project = _project()
    spans_file = tmp_path / "spans.jsonl"
    settings = Settings(
        home=tmp_path / "home",
        tracing=TracingSettings(endpoint=phoenix.url, project=project, otlp_file=spans_file),
    )
    geode_agent = geode.Agent("question -> answer", tools=[lookup_stock])
    react = dspy.ReAct(QA, tools=[search])
    workflow = DecomposeSolveCombine()
    lm = ScriptedLM(
        [
            _step("lookup_stock", item="widget"),
            _step("finish"),
            _answer("7"),
            _step("search", query="red widgets"),
            _step("finish"),
            _answer("3"),
            {"subquestions": ["How many widgets?", "How many gadgets?"]},
            {"answer": "7"},
            {"answer": "14"},
            {"answer": "21 in all"},
        ]
    )
    who = {
        "session_id": "sess-42",
        "user_id": "user-7",
        "metadata": {"ticket": "T-1"},
        "tags": ["integration"],
    }
    with geode.Runtime(settings=settings, lm=lm) as rt:
        assert rt.run(geode_agent, question="Widgets in stock?", **who).answer == "7"
        assert rt.run(react, question="How many red widgets?", **who).answer == "3"
        assert rt.run(workflow, question="Widgets and gadgets?", **who).answer == "21 in all"
        names = [rt.resolve(p).name for p in (geode_agent, react, workflow)]
    # Closing the runtime flushed its spans: the OTLP file names the traces to wait for in Phoenix.
    from_file = list(OtlpFileTraceSource(spans_file).traces())
    assert len(from_file) == 3
    by_program = {t.attribute("geode.program.name"): t for t in from_file}
    ids = [by_program[name].trace_id for name in names]

    with PhoenixTraceSource(phoenix.url, project) as source:
        result = source.wait_for(ids, timeout_s=WAIT_S)
        assert result.complete, f"Phoenix did not ingest {result.missing} within {WAIT_S}s"
        agent_trace, react_trace, workflow_trace = result.traces
        # Phoenix returns what the runtime wrote, span for span.
        _same_traces(list(result.traces), [by_program[name] for name in names])

    _check_agent(agent_trace, lm.calls[0:3], "lookup_stock", names[0])
    _check_agent(react_trace, lm.calls[3:6], "search", names[1])

    assert workflow_trace.complete
    root = workflow_trace.root
    assert root is not None and root.kind == "CHAIN"
    assert not workflow_trace.find(kind="TOOL") and not workflow_trace.find(kind="AGENT")
    predictors = [s.get("geode.predictor.name") for s in workflow_trace.find(kind="LLM")]
    assert predictors == ["decompose", "solve", "solve", "combine"]
    assert _llm_usage(workflow_trace) == [
        (c.prompt_tokens, c.completion_tokens, c.prompt_tokens + c.completion_tokens) for c in lm.calls[6:10]
    ]
    _identity_on_every_span(workflow_trace, names[2])
