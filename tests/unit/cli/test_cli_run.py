from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from geode.cli import main
from geode.cli._common import parse_inputs
from geode.errors import InputError
from geode.runtime.programs import register_program
from geode.testing import ScriptedLM


def test_parse_inputs() -> None:
    assert parse_inputs(["a=1", "b:=[1, 2]", "c=x=y"]) == {"a": "1", "b": [1, 2], "c": "x=y"}


@pytest.mark.parametrize(
    ("pairs", "message"),
    [(["a"], "bad --input"), (["=1"], "empty"), (["a=1", "a=2"], "twice"), (["a:={"], "not valid JSON")],
)
def test_parse_inputs_errors(pairs: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_inputs(pairs)


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0)


def test_unknown_program_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["run", "no_such_module_xyz:program", "-i", "q=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: module 'no_such_module_xyz' not found")
    assert "Traceback" not in err


def test_bad_input_syntax_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["run", "geode.examples.qa:program", "-i", "question"]) == 2
    assert "use --input key=value" in capsys.readouterr().err


def test_debug_shows_traceback() -> None:
    with pytest.raises(Exception, match="not found"):
        main(["--debug", "run", "no_such_module_xyz:program", "-i", "q=1"])


def test_run_prints_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import dspy

    from geode.cli import _common

    register_program("cli-test-qa", dspy.Predict("question -> answer"))
    lm = ScriptedLM([{"answer": "Paris"}])
    real = _common.Runtime

    def runtime_with_fake_lm(settings: object) -> object:
        return real(settings, lm=lm)  # type: ignore[arg-type]

    monkeypatch.setattr(_common, "Runtime", runtime_with_fake_lm)
    monkeypatch.setenv("GEODE_TRACING_ENABLED", "false")
    main(["run", "cli-test-qa", "-i", "question=Capital of France?", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["outputs"] == {"answer": "Paris"}


# 40 columns is narrower than the hint itself; 300 wider than it. Unset, rich falls back to 80 off a terminal.
@pytest.mark.parametrize("columns", ["40", "300", None])
def test_run_prints_the_trace_id_and_where_the_spans_went(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, columns: str | None
) -> None:
    import dspy

    from geode.cli import _common
    from geode.traces.otlp_json import iter_spans, read_requests

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    register_program("cli-test-traced", dspy.Predict("question -> answer"))
    real = _common.Runtime

    def runtime_with_fake_lm(settings: object) -> object:
        return real(settings, lm=ScriptedLM([{"answer": "Paris"}] * 2))  # type: ignore[arg-type]

    # A path longer than any terminal line, so the hint could only stay whole by not being wrapped.
    spans_dir = tmp_path / ("a-long-folder-name-" * 6)
    spans_dir.mkdir()
    spans_file = str(spans_dir / "spans.jsonl")
    monkeypatch.setattr(_common, "Runtime", runtime_with_fake_lm)
    monkeypatch.setenv("GEODE_TRACING_OTLP_FILE", spans_file)
    # The spans go to the file only: a Phoenix some other process runs on the default port must not
    # add itself to the hint (the runtime exports to a local Phoenix whenever one answers there).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("GEODE_PHOENIX_PORT", str(closed_port))
    main(["run", "cli-test-traced", "-i", "question=Capital of France?", "--json"])
    trace_id = json.loads(capsys.readouterr().out)["trace_id"]
    recorded = {s.span["traceId"] for request in read_requests(spans_file) for s in iter_spans(request)}
    assert recorded == {trace_id}

    main(["run", "cli-test-traced", "-i", "question=Capital of France?"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["answer", "Paris"]
    # The whole hint on one line, exactly: a user copies the command (and the path) from it.
    # The command shown reads the file the trace is in (trace show reads Phoenix unless told otherwise).
    hint = re.compile(
        rf"trace ([0-9a-f]{{32}}) → {re.escape(spans_file)}  \(geode trace show \1 --source {re.escape(spans_file)}\)"
    )
    assert [line for line in lines if hint.fullmatch(line)] == lines[1:], lines


def test_an_agent_run_is_json_end_to_end_and_summarised_as_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.unit.agents.crystallize.scenario import oracle

    from geode.cli import _common

    real = _common.Runtime
    monkeypatch.setattr(_common, "Runtime", lambda settings: real(settings, lm=ScriptedLM(oracle)))
    monkeypatch.setenv("GEODE_TRACING_ENABLED", "false")
    argv = [
        "run",
        "geode.examples.inventory:agent",
        "-i",
        "question=How many widgets and gadgets are in stock together?",
    ]
    main([*argv, "--json"])
    out = json.loads(capsys.readouterr().out)["outputs"]
    # Step records and the termination are objects, not Python reprs.
    assert out["answer"] == "17"
    assert [s["tool"] for s in out["steps"]] == ["lookup_stock", "lookup_stock", "calculate", "finish"]
    assert out["steps"][0]["args"] == {"item": "widget"} and out["steps"][0]["outcome"] == "ok"
    assert out["termination"]["reason"] == "finish" and out["termination"]["iterations"] == 4
    assert "AgentStep(" not in json.dumps(out) and "TerminationReason" not in json.dumps(out)

    main(argv)
    text = capsys.readouterr().out
    assert '1. lookup_stock(item="widget") → widget: 3 units in stock' in text
    assert "4. finish" in text
    assert "finish: the model called finish (4 iterations, 5 LM calls" in " ".join(text.split())
    assert "AgentStep(" not in text


def test_the_printed_phoenix_link_opens_the_trace(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dspy

    from geode.cli import _common
    from geode.runtime.phoenix import find_free_port

    register_program("cli-test-linked", dspy.Predict("question -> answer"))
    real = _common.Runtime
    monkeypatch.setattr(
        _common, "Runtime", lambda settings: real(settings, lm=ScriptedLM([{"answer": "Paris"}]))
    )
    # Nothing listens there: export fails quietly (telemetry never breaks a run), the link is still right.
    collector = f"http://127.0.0.1:{find_free_port()}"
    monkeypatch.setenv("GEODE_TRACING_ENDPOINT", collector)
    monkeypatch.setenv("GEODE_TRACING_EXPORT_TIMEOUT_S", "0.5")
    main(["run", "cli-test-linked", "-i", "question=Capital of France?"])
    out = " ".join(capsys.readouterr().out.split())
    trace_id = re.search(r"trace ([0-9a-f]{32})", out)
    assert trace_id is not None
    # Phoenix's /redirects/traces/<id> opens the trace in its project (not the home page).
    assert f"{collector}/redirects/traces/{trace_id.group(1)}" in out.replace(" ", "")


def test_the_trace_hint_is_a_command_that_works_where_the_trace_went() -> None:
    from pathlib import Path

    from geode.cli.run import _trace_hint

    tid = "0123456789abcdef0123456789abcdef"
    assert _trace_hint(tid, "http://127.0.0.1:6006/v1/traces", Path("/x/spans.jsonl")) == (
        f"trace {tid} → http://127.0.0.1:6006/redirects/traces/{tid}  (geode trace show {tid})"
    )
    # Only in a file: the command reads that file (quoted for the shell when it needs to be).
    assert _trace_hint(tid, None, Path("/my traces/spans.jsonl")) == (
        f"trace {tid} → /my traces/spans.jsonl  (geode trace show {tid} --source '/my traces/spans.jsonl')"
    )
    # Nowhere: no command that would fail, but what to do to keep traces.
    nowhere = _trace_hint(tid, None, None)
    assert nowhere is not None and "was not recorded" in nowhere and "trace show" not in nowhere
    assert _trace_hint(None, None, None) is None
