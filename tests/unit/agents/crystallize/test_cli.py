"""``geode crystallize`` from an OTLP-JSON trace file, and ``geode compare`` of the agent and the workflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.unit.agents.crystallize.scenario import QUESTIONS, oracle
from typer.testing import CliRunner

from geode.agents.crystallize import WorkflowSpec
from geode.cli import _common, _register_commands, app, main
from geode.errors import ConfigError
from geode.evals.evaluate import EvalResult
from geode.evals.report import ProgramComparison
from geode.runtime.phoenix import find_free_port
from geode.runtime.runtime import Runtime
from geode.runtime.settings import PhoenixSettings, Settings, TracingSettings
from geode.testing import ScriptedLM

AGENT = "geode.agents.inventory:agent"


@pytest.fixture(scope="module")
def spans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The inventory agent's runs, traced by a Runtime into an OTLP-JSON file (as in production)."""
    folder = tmp_path_factory.mktemp("traced")
    path = folder / "spans.jsonl"
    settings = Settings(
        home=folder / "home",
        tracing=TracingSettings(otlp_file=path),
        phoenix=PhoenixSettings(port=find_free_port()),  # never a Phoenix that happens to be running
    )
    with Runtime(settings, lm=ScriptedLM(oracle)) as rt:
        for question in QUESTIONS:
            rt.run(AGENT, question=question)
    return path


@pytest.fixture
def runner() -> CliRunner:
    _register_commands()
    return CliRunner()


def test_crystallize_from_a_trace_file(runner: CliRunner, spans: Path, tmp_path: Path) -> None:
    out, py = tmp_path / "wf.json", tmp_path / "wf.py"
    result = runner.invoke(
        app, ["crystallize", AGENT, "--source", str(spans), "--out", str(out), "--emit-python", str(py)]
    )
    assert result.exit_code == 0, result.output
    spec = WorkflowSpec.load(out)
    assert spec.agent_ref == AGENT and spec.source.program == AGENT
    assert [r.label for r in spec.routes] == ["lookup_stock", "calculate", "lookup_stock_each_then_calculate"]
    assert "lookup_stock_each_then_calculate" in result.output and "router over 3" in result.output
    assert "2 LM call(s) per input" in result.output
    assert (
        (tmp_path / "wf.md").read_text(encoding="utf-8").startswith("# Crystallization: inventory-workflow")
    )
    compile(py.read_text(encoding="utf-8"), str(py), "exec")


def test_crystallize_errors_are_one_line(
    spans: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "crystallize",
                AGENT,
                "--source",
                str(spans),
                "--program-name",
                "nobody",
                "--out",
                str(tmp_path / "x.json"),
            ]
        )
    assert exc.value.code == 2
    assert "error: no runs of agent 'inventory' were found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["crystallize", AGENT, "--source", str(tmp_path / "nope.jsonl")])
    assert exc.value.code == 2
    assert "is neither 'phoenix' nor an existing OTLP-JSON file" in capsys.readouterr().err


TASKS = [
    ("How many sprockets are in stock?", "27"),
    ("How many gadgets do we have?", "14"),
    ("What is 6 times 7?", "42"),
    ("How many widgets and gizmos are in stock together?", "3"),
]


@pytest.fixture
def tasks(tmp_path: Path) -> Path:
    data = tmp_path / "tasks.jsonl"
    data.write_text(
        "".join(json.dumps({"inputs": {"question": q}, "outputs": {"answer": a}}) + "\n" for q, a in TASKS)
    )
    return data


@pytest.fixture
def scripted_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's runtime answers with the scripted policy, tracing off."""
    real = _common.Runtime

    def quiet_runtime(settings: Settings) -> Runtime:
        return real(
            settings.model_copy(update={"tracing": TracingSettings(enabled=False)}), lm=ScriptedLM(oracle)
        )

    monkeypatch.setattr(_common, "Runtime", quiet_runtime)


@pytest.mark.usefixtures("scripted_runtime")
def test_compare_agent_and_workflow(runner: CliRunner, spans: Path, tmp_path: Path, tasks: Path) -> None:
    out = tmp_path / "wf.json"
    assert (
        runner.invoke(app, ["crystallize", AGENT, "--source", str(spans), "--out", str(out)]).exit_code == 0
    )
    report = tmp_path / "report"
    result = runner.invoke(
        app,
        [
            "compare",
            AGENT,
            str(out),
            "--dataset",
            str(tasks),
            "--metric",
            "exact_match",
            "--report-dir",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "READY" in result.output and "+0.0 points" in result.output
    saved = json.loads((report / "compare.json").read_text(encoding="utf-8"))
    assert saved["ready"] is True
    assert saved["baseline"]["score"] == saved["candidate"]["score"] == 1.0
    # 3 + 3 + 3 + 5 agent calls against 1 + 1 + 2 + 2 for the workflow.
    assert (saved["baseline"]["lm_calls"], saved["candidate"]["lm_calls"]) == (14, 6)
    assert (report / "compare.png").read_bytes().startswith(b"\x89PNG")
    assert "<table>" in (report / "compare.html").read_text(encoding="utf-8")


@pytest.mark.usefixtures("scripted_runtime")
def test_crystallize_and_compare_in_one_command(
    runner: CliRunner, spans: Path, tmp_path: Path, tasks: Path
) -> None:
    out = tmp_path / "wf.json"
    args = ["crystallize", AGENT, "--source", str(spans), "--out", str(out), "--dataset", str(tasks)]
    result = runner.invoke(app, [*args, "--metric", "exact_match"])
    assert result.exit_code == 0, result.output
    assert "READY" in result.output and "next: geode compare" not in result.output
    report = (tmp_path / "wf.md").read_text(encoding="utf-8")
    # One report: which patterns were taken and why, then whether the workflow held up against the agent.
    assert report.index("**Decision:**") < report.index("## Comparison with the agent")
    assert "READY" in report and "compare.html" in report
    half = runner.invoke(app, [*args])
    assert isinstance(half.exception, ConfigError) and "go together" in str(half.exception)


def _result(program: str, score: float, lm_calls: int) -> EvalResult:
    return EvalResult(
        program=program,
        version=None,
        metric="m",
        dataset_id="ds",
        dataset_name=None,
        split="all",
        model=None,
        score=score,
        n=10,
        errors=0,
        latency_p50_s=1.0,
        latency_p95_s=2.0,
        lm_calls=lm_calls,
        prompt_tokens=0,
        completion_tokens=0,
        cost_usd=None,
        duration_s=1.0,
        num_threads=1,
        started_at="",
        examples=(),
    )


def test_verdict_tolerance() -> None:
    agent = _result("agent", 0.90, 30)
    assert ProgramComparison(agent, _result("wf", 0.885, 12)).ready  # -1.5 points
    worse = ProgramComparison(agent, _result("wf", 0.85, 12))
    assert not worse.ready and worse.delta == pytest.approx(-5.0)
    assert worse.ratio("lm_calls") == pytest.approx(0.4)
    assert "NOT ready. It makes 40% of the LM calls" in worse.verdict
    assert ProgramComparison(agent, _result("wf", 0.85, 12), tolerance=5).ready
