from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from geode.cli import main
from geode.cli.trace import render_trace
from geode.runtime.phoenix import find_free_port
from geode.testing.spans import SpanNode, SpanTreeBuilder, agent_run_tree, workflow_run_tree
from geode.traces.otlp_json import dumps_request, encode_spans
from geode.traces.sources import InMemoryTraceSource
from geode.traces.vocab import DocumentAttributes, SpanAttributes


def _text(builder: SpanTreeBuilder, trace_id: str, *, attributes: bool = False) -> str:
    trace = InMemoryTraceSource(builder.exporter).trace(trace_id)
    console = Console(record=True, width=200, color_system=None)
    console.print(render_trace(trace, attributes=attributes))
    return console.export_text()


def test_tree_shows_kind_name_duration_status_tokens_and_key_attributes(builder: SpanTreeBuilder) -> None:
    trace_id = builder.emit(agent_run_tree(program="app:agent", session="s-9", tool_error="index offline"))
    lines = _text(builder, trace_id).splitlines()
    header = lines[0]
    assert trace_id in header and "program app:agent" in header and "session s-9" in header
    assert "7 spans" in header and f"{110 + 111} tokens" in header
    body = "\n".join(lines[1:])
    assert lines[1].startswith("└── ✓ AGENT") and "Agent.forward" in lines[1]
    assert "iterations=2" in lines[1] and "ended=finish" in lines[1]
    llm_lines = [line for line in lines if " LLM " in line]
    assert len(llm_lines) == 2
    assert "100→10 tok" in llm_lines[0] and "model=scripted" in llm_lines[0]
    # Depth is drawn: LLM calls sit under their predictor step, under the agent.
    assert llm_lines[0].index("LLM") == lines[1].index("AGENT") + 8
    tool_lines = [line for line in lines if " TOOL " in line]
    assert "✓ TOOL" in tool_lines[0] and 'args={"query": "x"}' in tool_lines[0]
    assert "✗ TOOL" in tool_lines[1] and "ValueError: index offline" in tool_lines[1]
    assert "ms" in body
    assert "input.value" not in body  # attributes are listed only on request


def test_attributes_flag_lists_every_attribute(builder: SpanTreeBuilder) -> None:
    trace_id = builder.emit(workflow_run_tree())
    text = _text(builder, trace_id, attributes=True)
    assert "geode.workflow.step = 0" in text
    assert "llm.input_messages.1.message.content = workflow step 1" in text
    assert "openinference.span.kind" not in text


def test_retriever_span_summarises_documents(builder: SpanTreeBuilder) -> None:
    prefix = SpanAttributes.RETRIEVAL_DOCUMENTS
    docs = {f"{prefix}.{i}.{DocumentAttributes.DOCUMENT_ID}": f"doc-{i}" for i in range(4)} | {
        f"{prefix}.{i}.{DocumentAttributes.DOCUMENT_SCORE}": 0.9 - i / 10 for i in range(4)
    }
    trace_id = builder.emit(
        SpanNode("run", "CHAIN", children=[SpanNode("Retriever.forward", "RETRIEVER", docs)])
    )
    text = _text(builder, trace_id)
    assert "documents=4" in text and "ids=doc-0,doc-1,doc-2" in text


def test_incomplete_trace_is_flagged(builder: SpanTreeBuilder) -> None:
    trace_id = builder.emit(agent_run_tree())
    without_root = InMemoryTraceSource(builder.spans()[:-1]).trace(trace_id)
    console = Console(record=True, width=200, color_system=None)
    console.print(render_trace(without_root))
    assert "incomplete" in console.export_text()


def _write(builder: SpanTreeBuilder, path: Path) -> None:
    path.write_text(dumps_request(encode_spans(builder.spans())) + "\n")


def _run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_shows_last_and_by_id_from_a_file(
    builder: SpanTreeBuilder,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    agent = builder.emit(agent_run_tree(program="app:agent"))
    workflow = builder.emit(workflow_run_tree(program="app:workflow"), gap_ms=100)
    path = tmp_path / "spans.jsonl"
    _write(builder, path)

    assert _run(["trace", "show", "--last", "--source", str(path)]) == 0
    out = capsys.readouterr().out
    assert workflow in out and "Workflow.forward" in out and f"from OTLP-JSON file {path}" in out

    assert _run(["trace", "show", "--last", "--program", "app:agent", "--source", str(path)]) == 0
    assert agent in capsys.readouterr().out

    assert _run(["trace", "show", agent.upper(), "--source", str(path), "--json"]) == 0
    spans = json.loads(capsys.readouterr().out)
    assert [s["kind"] for s in spans][:3] == ["AGENT", "CHAIN", "LLM"]
    assert spans[2]["attributes"]["llm.token_count.prompt"] == 100


def test_cli_tree_is_never_cut_off_a_terminal(
    builder: SpanTreeBuilder,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Off a terminal rich lays out at 80 columns unless told; a tree must not be cut mid-name there.
    monkeypatch.delenv("COLUMNS", raising=False)
    program = "a.rather.long.package.name.for_the_program:" + "program_" * 8
    trace_id = builder.emit(agent_run_tree(program=program))
    path = tmp_path / "spans.jsonl"
    _write(builder, path)
    assert _run(["trace", "show", "--last", "--source", str(path)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert f"trace {trace_id}  program {program} · " in header and header.endswith("tokens"), header
    assert "…" not in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trace", "show"], "give a TRACE_ID or --last"),
        (["trace", "show", "a" * 32, "--last"], "give a TRACE_ID or --last"),
        (["trace", "show", "a" * 32, "--program", "x"], "--program only narrows --last"),
        (["trace", "show", "--last", "--source", "nowhere.jsonl"], "neither 'phoenix' nor an existing"),
        (["trace", "show", "not-an-id", "--source", "{file}"], "not a trace id"),
        (["trace", "show", "f" * 32, "--source", "{file}"], "is not in OTLP-JSON file"),
        (
            ["trace", "show", "--last", "--program", "nope", "--source", "{file}"],
            "no trace of program 'nope'",
        ),
        (["trace", "show", "--last"], "no Phoenix is running"),
    ],
)
def test_cli_errors_are_one_line(
    argv: list[str],
    message: str,
    builder: SpanTreeBuilder,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEODE_PHOENIX_PORT", str(find_free_port()))  # whatever else runs on 6006
    builder.emit(agent_run_tree())
    path = tmp_path / "spans.jsonl"
    _write(builder, path)
    assert _run([a.replace("{file}", str(path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err
