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
from geode.runtime.runtime import Runtime, trace_id_of
from geode.runtime.settings import PhoenixSettings, Settings, TracingSettings
from geode.testing import ScriptedLM

AGENT = "geode.examples.inventory:agent"


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


# The right answer to every recorded question (the "(wrong)" run answered 10).
GOLD = {
    "How many widgets are in stock?": "3",
    "How many gadgets are in stock?": "14",
    "How many sprockets do we have in stock?": "27",
    "Is any gizmo in stock? Give the number of units.": "0",
    "How many widgets do we have?": "3",
    "How many gadgets do we have left?": "14",
    "What is 12 times 7?": "84",
    "What is 1234 plus 5678?": "6912",
    "What is 9 times 9? (retry)": "81",
    "How many widgets and gadgets are in stock together?": "17",
    "How many sprockets and widgets are in stock together?": "30",
    "How many gadgets and gizmos are in stock together?": "14",
    "How many widgets are in stock? (loop)": "3",
    "What is 3 times 3? (wrong)": "9",
}


@pytest.fixture
def labels(tmp_path: Path) -> Path:
    path = tmp_path / "labels.jsonl"
    path.write_text(
        "".join(
            json.dumps({"inputs": {"question": q}, "outputs": {"answer": a}}) + "\n" for q, a in GOLD.items()
        )
    )
    return path


def test_unscored_runs_are_not_learned_from(runner: CliRunner, spans: Path, tmp_path: Path) -> None:
    # Completed is not correct: the "(wrong)" run completed with a wrong answer. Nobody scored these
    # runs, so crystallization refuses, and says how to score them.
    result = runner.invoke(
        app, ["crystallize", AGENT, "--source", str(spans), "--out", str(tmp_path / "w.json")]
    )
    assert result.exit_code != 0
    message = str(result.exception)
    assert "none of the 14 recorded runs succeeded (1 max_iters, 13 unscored)" in message
    assert "--labels" in message and "--trust-unscored" in message
    assert not (tmp_path / "w.json").exists()


def test_runs_scored_by_a_metric_on_labels_are_learned_from(
    runner: CliRunner, spans: Path, tmp_path: Path, labels: Path
) -> None:
    out = tmp_path / "wf.json"
    args = ["crystallize", AGENT, "--source", str(spans), "--out", str(out)]
    result = runner.invoke(app, [*args, "--labels", str(labels), "--metric", "exact_match"])
    assert result.exit_code == 0, result.output
    spec = WorkflowSpec.load(out)
    # 12 runs answered right; the wrong one is scored wrong, the looping one never finished.
    assert spec.source.learned_from == {"metric": 12} and spec.source.successful == 12
    assert spec.source.failures == {"low score": 1, "max_iters": 1}
    assert "learned from: 12 runs scored correct by the metric on labelled data" in result.output
    report = (tmp_path / "wf.md").read_text(encoding="utf-8")
    assert "**Learned from:** 12 runs scored correct by the metric on labelled data." in report
    half = runner.invoke(app, [*args, "--labels", str(labels)])
    assert isinstance(half.exception, ConfigError) and "need --metric" in str(half.exception)


def test_runs_scored_by_feedback_are_learned_from(
    runner: CliRunner, tmp_path: Path, geode_home: Path
) -> None:
    # Feedback, as rt.feedback and POST /feedback give it, lands in the home's feedback log; crystallize
    # reads it for the traced runs and learns only from the runs scored correct.
    spans = tmp_path / "spans.jsonl"
    settings = Settings(
        home=geode_home,
        tracing=TracingSettings(otlp_file=spans),
        phoenix=PhoenixSettings(port=find_free_port()),
    )
    with Runtime(settings, lm=ScriptedLM(oracle)) as rt:
        for question in QUESTIONS:
            result = rt.run(AGENT, question=question)
            trace_id = trace_id_of(result)
            assert trace_id is not None
            right = str(getattr(result, "answer", "")).strip() == GOLD[question]
            if "(wrong)" in question or right:
                rt.feedback(trace_id, score=1.0 if right else 0.0)
    out = tmp_path / "wf.json"
    result = runner.invoke(app, ["crystallize", AGENT, "--source", str(spans), "--out", str(out)])
    assert result.exit_code == 0, result.output
    spec = WorkflowSpec.load(out)
    assert spec.source.learned_from == {"feedback": 12} and spec.source.successful == 12
    assert spec.source.failures == {"low score": 1, "max_iters": 1}
    assert "12 runs scored correct by feedback" in " ".join(result.output.split())


def test_crystallize_from_a_trace_file(runner: CliRunner, spans: Path, tmp_path: Path) -> None:
    out, py = tmp_path / "wf.json", tmp_path / "wf.py"
    result = runner.invoke(
        app,
        [
            "crystallize",
            AGENT,
            "--source",
            str(spans),
            "--out",
            str(out),
            "--emit-python",
            str(py),
            "--trust-unscored",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "13 runs unscored but trusted" in result.output
    spec = WorkflowSpec.load(out)
    assert spec.source.unscored_ok and spec.source.learned_from == {"unscored": 13}
    # The agent's runs are filed under its one name, Agent(name="inventory"), whatever it was run by.
    assert spec.agent_ref == AGENT and spec.source.program == "inventory"
    assert [r.label for r in spec.routes] == ["lookup_stock", "calculate", "lookup_stock_each_then_calculate"]
    assert "lookup_stock_each_then_calculate" in result.output and "router over 3" in result.output
    # The patterns table is laid out whole off a terminal: no pattern name is cut.
    rows = [line for line in result.output.splitlines() if "│" in line]
    assert any("lookup_stock_each_then_calculate" in row for row in rows)
    assert "2 LM call(s) per input" in result.output
    # The router workflow's expected calls against the agent's on the same runs.
    assert "cost: the workflow would make" in " ".join(result.output.split())
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
    err = capsys.readouterr().err
    assert "error: no runs of 'nobody' in OTLP-JSON file" in err
    # The error lists the programs that do have runs, with their aliases.
    assert "programs with runs there: inventory (also geode.examples.inventory:agent, Agent)" in err
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
    args = ["crystallize", AGENT, "--source", str(spans), "--out", str(out), "--trust-unscored"]
    assert runner.invoke(app, args).exit_code == 0
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
    result = runner.invoke(app, [*args, "--metric", "exact_match", "--trust-unscored"])
    assert result.exit_code == 0, result.output
    assert "READY" in result.output and "next: geode compare" not in result.output
    report = (tmp_path / "wf.md").read_text(encoding="utf-8")
    # One report: which patterns were taken and why, then whether the workflow held up against the agent.
    assert report.index("**Decision:**") < report.index("## Comparison with the agent")
    assert "READY" in report and "compare.html" in report
    half = runner.invoke(app, [*args])
    assert isinstance(half.exception, ConfigError) and "need --metric" in str(half.exception)


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
