from __future__ import annotations

import contextlib
import json
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import dspy
import pytest

from geode.agents.crystallize import CostCheck
from geode.demo import QUICK, DemoOptions, DemoParts, Progress, run_demo
from geode.demo.pipeline import AGENT_PROGRAM, INCOMPLETE, DemoResult, atomic_write_text, workflow_program
from geode.demo.report import by_hand_commands, summary_rows, write_demo_report
from geode.errors import MissingExtraError
from geode.examples import helpdesk
from geode.retrieval import QdrantStore
from geode.runtime.phoenix import PhoenixServer, PhoenixStatus
from geode.runtime.registry import ProgramRegistry
from geode.runtime.settings import PhoenixSettings, Settings
from geode.testing import HashingEmbedder, ScriptedLM

GOLD = {q.question: q.answer for q in helpdesk.load_questions()}
_FIELDS = re.compile(r"^\d+\. `(\w+)`", re.MULTILINE)
_QUESTION = re.compile(r"\[\[ ## question ## \]\]\n(.*?)\n\n", re.DOTALL)


def _model(messages: list[dict[str, str]]) -> dict[str, Any]:
    """A scripted helpdesk model: search the question, finish, answer right on every other question."""
    system, user = messages[0]["content"], messages[-1]["content"]
    outputs = _FIELDS.findall(system.split("Your output fields are:")[1].split("All interactions")[0])
    found = _QUESTION.findall(user)
    question = found[-1].strip() if found else ""
    if "next_tool_name" in outputs:
        if "[[ ## observation_" in user or "observation_0" in user:
            return {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}}
        return {
            "next_thought": "Search.",
            "next_tool_name": "search",
            "next_tool_args": {"question": question},
        }
    knows = sorted(GOLD).index(question) % 2 == 0 if question in GOLD else False
    # Worded so no passage holds it verbatim: the workflow's answer step stays an LM step.
    answer = f"{GOLD[question]}, says the shop" if knows else "I do not know"
    return {name: (answer if name == "answer" else f"{name} for {question}") for name in outputs}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # A port nothing listens on: no local Phoenix is found, so spans go to the run's file only.
    return Settings(home=tmp_path / "home", phoenix=PhoenixSettings(port=_free_port()))


@pytest.fixture
def parts() -> DemoParts:
    return DemoParts(lm=ScriptedLM(_model), store=QdrantStore.memory(), embedder=HashingEmbedder())


# Tuning on the 41 left-over training questions too is the default; only the whole-loop test pays for it.
OPTIONS = DemoOptions(
    questions=4, held_out=3, validation=3, phoenix=False, include_docs=False, more_tuning=False
)


class Recorder(Progress):
    def __init__(self, interrupt_at: int | None = None) -> None:
        self.lines: list[str] = []
        self.interrupt_at = interrupt_at

    def stage(self, number: int, title: str) -> None:
        if number == self.interrupt_at:
            raise KeyboardInterrupt
        self.lines.append(f"{number}. {title}")

    def info(self, message: str) -> None:
        self.lines.append(message)

    def warn(self, message: str) -> None:
        self.lines.append(f"warning: {message}")

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Any]:
        self.lines.append(f"[{description}]")
        yield lambda done, status: None


def _run(
    settings: Settings,
    parts: DemoParts,
    progress: Progress | None = None,
    *,
    report: bool = False,
    **changes: Any,
) -> DemoResult:
    options = DemoOptions(**{**OPTIONS.__dict__, **changes})
    # The report (three matplotlib plots) is the slow part: only the first test writes one.
    writer = write_demo_report if report else None
    return run_demo(settings, options, parts=parts, progress=progress or Recorder(), write_report=writer)


def test_the_whole_loop_runs_on_a_scripted_model(settings: Settings, parts: DemoParts) -> None:
    progress = Recorder()
    result = _run(settings, parts, progress, report=True, more_tuning=True)

    stages = [line for line in progress.lines if re.match(r"\d\. ", line)]
    # The search tunes on the 4 runs and the 41 training questions neither the agent nor the gate uses.
    assert "and 41 other training questions" in stages[5]
    assert {c["n"] for c in result.search} == {45}
    assert [s[0] for s in stages] == list("12345678")
    assert result.ingest is not None and result.ingest.chunks > 50
    assert result.train_scores == [1.0 if sorted(GOLD).index(q) % 2 == 0 else 0.0 for q in _train_questions()]
    assert result.mining is not None and len(result.mining.dataset) == 4
    assert result.labelled is not None
    assert {r.outputs["answer"] for r in result.labelled.records} <= set(GOLD.values())
    assert result.crystallization is not None
    # Crystallization learned from the runs the metric scored correct, so no wrong answer is a demo.
    analysis = result.crystallization.analysis
    assert analysis.successful == sum(s == 1.0 for s in result.train_scores) == 2
    # The demo crystallizes without demos (they made the small model ramble; measured in docs/benchmarks.md).
    assert [
        d for r in result.crystallization.spec.routes for s in r.steps for d in getattr(s, "demos", ())
    ] == []
    # The scripted agent always searched with the question: the workflow copies it, no LM call for it.
    assert result.cost is not None and result.cost.cheaper and result.kept_agent is None
    # This model's answer depends on the question only, so no candidate beats the workflow on the
    # training runs: not its shape (passages, order), not its instruction.
    assert [c["name"] for c in result.search] == [
        "as crystallized",
        "shape: 1 passage per tool result, tool results first",
        "shape: 1 passage per tool result",
        "instruction: terse, shape: 1 passage per tool result, tool results first",
    ]
    assert [r.label for r in result.rows] == ["agent", "workflow"]
    agent, workflow = result.row("agent"), result.row("workflow")
    assert agent is not None and workflow is not None
    assert workflow.result.lm_calls < agent.result.lm_calls
    assert workflow.result.score == agent.result.score
    assert result.gate is not None and result.gate.decision == "none"
    assert result.skipped == {
        "recompile": "no candidate beat the workflow as crystallized on the training runs"
    }

    # Artifacts: the run folder, complete (no marker), the published spec, the report, the registry.
    assert result.run_dir.name == result.run_id and result.run_dir.is_dir()
    assert not (result.run_dir / INCOMPLETE).exists()
    assert {
        "spans.jsonl",
        "mined.jsonl",
        "labelled.jsonl",
        "heldout.jsonl",
        "workflow.json",
        "summary.json",
    } <= {p.name for p in result.run_dir.iterdir()}
    assert result.workflow_spec.is_file()
    assert result.report is not None and result.report.is_file()
    page = result.report.read_text()
    assert "By hand" in page and "geode crystallize" in page and "data:image/png;base64" in page
    assert (result.report.parent / "compare.html").is_file()
    latest = json.loads((settings.home / "demo" / "latest.json").read_text())
    assert latest == result.summary() == json.loads((result.run_dir / "summary.json").read_text())
    assert [p["name"] for p in latest["programs"]] == ["agent", "workflow"]
    versions = ProgramRegistry(settings.programs_dir).versions(workflow_program(settings))
    assert workflow.version in {v.version for v in versions}
    # The feedback the demo gave each run became the mined records' scores.
    scores = [r.score for r in result.mining.dataset.records]
    assert sorted(s for s in scores if s is not None) == sorted(result.train_scores)

    cells = summary_rows(result)
    assert [c[0] for c in cells] == ["agent", "workflow"] and cells[0][2].endswith("/3)")
    commands = dict(by_hand_commands(result))
    assert commands["mine"].startswith(f"geode mine {AGENT_PROGRAM} --source ")
    # Every path the report, the summary and the commands name exists now that the run is complete.
    named = [
        latest["run_dir"],
        latest["report"],
        latest["workflow_spec"],
        str(result.run_dir / "spans.jsonl"),
    ]
    assert all(Path(p).exists() for p in named)
    assert str(result.run_dir / "spans.jsonl") in commands["mine"] and str(result.run_dir) in page
    spec_source = result.crystallization.spec.source.description
    assert str(result.run_dir / "spans.jsonl") in spec_source


def _train_questions() -> list[str]:
    """The agent's questions: the training questions outside the validation split."""
    training = helpdesk.load_questions("train")
    validation = {q.id for q in helpdesk.pick(training, OPTIONS.validation)}
    rest = [q for q in training if q.id not in validation]
    return [q.question for q in helpdesk.pick(rest, OPTIONS.questions)]


def test_rerun_reuses_the_store_and_fresh_starts_over(settings: Settings, parts: DemoParts) -> None:
    first = _run(settings, parts)
    second = _run(settings, parts)
    assert first.ingest is not None and second.ingest is not None
    assert (
        first.ingest.files > 0 and second.ingest.files == 0 and second.ingest.unchanged == first.ingest.files
    )
    assert second.run_id != first.run_id and first.run_dir.is_dir() and second.run_dir.is_dir()
    # Same runs, same crystallized workflow: the same version ids come back.
    assert [r.version for r in second.rows] == [r.version for r in first.rows]

    fresh = _run(settings, parts, fresh=True)
    assert fresh.ingest is not None and fresh.ingest.files == first.ingest.files
    assert not first.run_dir.exists()  # --fresh dropped the earlier runs
    assert len(list((settings.home / "demo" / "runs").iterdir())) == 1


def test_an_interrupted_run_leaves_nothing_the_next_run_reads(settings: Settings, parts: DemoParts) -> None:
    with pytest.raises(KeyboardInterrupt):
        _run(settings, parts, Recorder(interrupt_at=5))
    runs = settings.home / "demo" / "runs"
    assert [(p / INCOMPLETE).is_file() for p in runs.iterdir()] == [True]
    assert not (settings.home / "demo" / "latest.json").exists()
    assert not (settings.home / "demo" / "workflow.json").exists()
    assert not settings.reports_dir.exists() or not list(settings.reports_dir.iterdir())

    progress = Recorder()
    result = _run(settings, parts, progress)
    assert any("left by an interrupted run" in line for line in progress.lines)
    assert [p.name for p in runs.iterdir()] == [result.run_id]


def test_an_interrupted_report_is_never_published(settings: Settings, parts: DemoParts) -> None:
    def failing_report(result: DemoResult, directory: Path) -> None:
        directory.mkdir(parents=True)
        (directory / "index.html").write_text("<html>half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_demo(settings, OPTIONS, parts=parts, progress=Recorder(), write_report=failing_report)
    assert list(settings.reports_dir.iterdir()) == []
    assert not (settings.home / "demo" / "latest.json").exists()


def test_atomic_write_keeps_the_old_file_when_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "latest.json"
    atomic_write_text(path, "old")

    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["latest.json"]


def test_options_refuse_sizes_the_loop_cannot_use() -> None:
    with pytest.raises(Exception, match="at least 2"):
        DemoOptions(questions=1)
    with pytest.raises(Exception, match="at least 1"):
        DemoOptions(held_out=0)


class _Phoenix(PhoenixServer):
    """A launcher that reports a Phoenix on another port, or a missing server package, without a process."""

    def __init__(self, settings: Settings, *, port: int | None = None, missing: bool = False) -> None:
        super().__init__(settings.phoenix, working_dir=settings.phoenix_dir)
        self.port = port
        self.missing = missing

    def start(self, **kwargs: Any) -> PhoenixStatus:
        if self.missing:
            raise MissingExtraError("the local Phoenix server (`geode phoenix`)", "phoenix")
        url = f"http://127.0.0.1:{self.port}"
        return PhoenixStatus(url, True, "20.0", None, None, None, self.log_path)


def test_a_phoenix_port_held_by_another_program_is_reported(settings: Settings, parts: DemoParts) -> None:
    other = _free_port()
    parts.phoenix = _Phoenix(settings, port=other)
    progress = Recorder()
    result = _run(settings, parts, progress, phoenix=True)
    assert (
        f"warning: port {settings.phoenix.port} is in use by another program; Phoenix uses http://127.0.0.1:{other}"
        in progress.lines
    )
    assert result.phoenix is not None and result.phoenix.url.endswith(f":{other}")


def test_a_missing_phoenix_extra_names_the_install_command_and_the_demo_goes_on(
    settings: Settings, parts: DemoParts
) -> None:
    parts.phoenix = _Phoenix(settings, missing=True)
    progress = Recorder()
    result = _run(settings, parts, progress, phoenix=True)
    assert any(
        "pip install 'geode[phoenix]'" in line and line.startswith("warning:") for line in progress.lines
    )
    assert result.phoenix is None and [r.label for r in result.rows] == ["agent", "workflow"]


def test_with_no_correct_run_the_demo_says_so_and_keeps_the_agent(settings: Settings) -> None:
    def never_right(messages: list[dict[str, str]]) -> dict[str, Any]:
        reply = _model(messages)
        return {k: ("I do not know" if k == "answer" else v) for k, v in reply.items()}

    progress = Recorder()
    parts = DemoParts(lm=ScriptedLM(never_right), store=QdrantStore.memory(), embedder=HashingEmbedder())
    result = _run(settings, parts, progress)

    assert result.train_scores == [0.0] * 4
    assert result.crystallization is None and [r.label for r in result.rows] == ["agent"]
    assert result.kept_agent is not None and "none of the 4 recorded runs succeeded" in result.kept_agent
    assert any(
        line.startswith("warning: no workflow:") and "keeps the agent" in line for line in progress.lines
    )
    assert (
        result.gate is not None and result.gate.decision == "none" and "keeps the agent" in result.gate.reason
    )
    assert not result.workflow_spec.exists()
    assert result.summary()["training"]["kept_agent"] == result.kept_agent


def test_a_single_correct_run_is_learned_from_alone(settings: Settings) -> None:
    first = _train_questions()[0]

    def right_once(messages: list[dict[str, str]]) -> dict[str, Any]:
        reply = _model(messages)
        found = _QUESTION.findall(messages[-1]["content"])
        right = bool(found) and found[-1].strip() == first
        return {
            k: (GOLD[first] if right else "I do not know") if k == "answer" else v for k, v in reply.items()
        }

    progress = Recorder()
    parts = DemoParts(lm=ScriptedLM(right_once), store=QdrantStore.memory(), embedder=HashingEmbedder())
    result = _run(settings, parts, progress)

    assert result.train_scores == [1.0, 0.0, 0.0, 0.0]
    assert any("even a pattern seen once" in line for line in progress.lines)
    assert result.crystallization is not None and result.crystallization.analysis.successful == 1


def test_a_workflow_that_would_cost_more_lm_calls_is_not_kept(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import geode.demo.pipeline as pipeline

    def costly(found: Any) -> CostCheck:
        return CostCheck(agent_lm_calls=2.0, workflow_lm_calls=3.0, covered=1.0, runs=4)

    monkeypatch.setattr(pipeline, "check_cost", costly)
    parts = DemoParts(lm=ScriptedLM(_model), store=QdrantStore.memory(), embedder=HashingEmbedder())
    progress = Recorder()
    result = _run(settings, parts, progress)
    assert result.crystallization is None and [r.label for r in result.rows] == ["agent"]
    assert (
        result.kept_agent is not None
        and "3.0 LM calls per input, no fewer than the agent's 2.0" in result.kept_agent
    )
    assert not result.workflow_spec.exists()


MARKER = "State the figure the shop gives."


def _instructed(messages: list[dict[str, str]]) -> dict[str, Any]:
    """Like :func:`_model`, but the workflow's answer step is always right under the marker instruction."""
    reply = _model(messages)
    if "answer" in reply and MARKER in messages[0]["content"]:
        found = _QUESTION.findall(messages[-1]["content"])
        question = found[-1].strip() if found else ""
        reply["answer"] = f"{GOLD[question]}, says the shop" if question in GOLD else reply["answer"]
    return reply


def test_a_recompilation_that_lifts_on_training_runs_is_promoted_on_validation(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import geode.demo.pipeline as pipeline
    from geode.demo.recompile import instruction_candidate

    marked = instruction_candidate("marked", MARKER)
    monkeypatch.setattr(pipeline, "recompile_candidates", lambda metric, demos=True: [marked])
    parts = DemoParts(lm=ScriptedLM(_instructed), store=QdrantStore.memory(), embedder=HashingEmbedder())
    result = _run(settings, parts)
    assert [c["name"] for c in result.search] == ["as crystallized", "instruction: marked"]
    base, best = result.search
    assert best["score"] == 1.0 > base["score"] and best["lift"] == best["score"] - base["score"]
    assert [r.label for r in result.rows] == ["agent", "workflow", "recompiled"]
    gate = result.gate
    assert gate is not None and gate.decision == "promoted", gate
    assert gate.n == 3 and gate.margin is not None and gate.margin >= 0.05
    recompiled = result.row("recompiled")
    assert recompiled is not None and recompiled.version == gate.candidate
    registry = ProgramRegistry(settings.programs_dir)
    name, promoted = workflow_program(settings), gate.candidate
    assert promoted is not None and registry.active(name) == promoted
    # The registry holds the changed instructions and the validation scores the gate used.
    assert MARKER in json.dumps(registry.load_state(name, promoted)[1])
    assert {s.split for s in registry.info(name, promoted).scores} == {"heldout", "validation"}
    summary = result.summary()
    assert summary["gate"]["decision"] == "promoted" and summary["gate"]["split"] == "validation"


def test_demo_json_prints_one_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import geode.cli.demo as cli_demo
    from geode.cli import _register_commands, app

    home = tmp_path / "home"
    monkeypatch.setenv("GEODE_HOME", str(home))
    monkeypatch.setenv("GEODE_PHOENIX_PORT", str(_free_port()))
    real = cli_demo.run_demo

    def scripted(settings: Settings, options: DemoOptions, **kwargs: Any) -> DemoResult:
        assert (options.questions, options.held_out, options.validation) == (4, 3, 3)
        parts = DemoParts(lm=ScriptedLM(_model), store=QdrantStore.memory(), embedder=HashingEmbedder())
        return real(settings, replace(options, include_docs=False), parts=parts, **kwargs)

    monkeypatch.setattr(cli_demo, "run_demo", scripted)
    _register_commands()
    done = CliRunner().invoke(
        app, ["demo", "--json", "--no-phoenix", "--questions", "4", "--held-out", "3", "--validation", "3"]
    )
    assert done.exit_code == 0, done.output
    doc = json.loads(done.stdout)
    assert [p["name"] for p in doc["programs"]] == ["agent", "workflow"]
    agent = doc["programs"][0]
    assert set(agent) >= {
        "name",
        "version",
        "correct",
        "n",
        "quality",
        "lm_calls_per_question",
        "tokens_per_question",
        "latency_p50_s",
    }
    assert (
        agent["n"] == 3
        and agent["correct"] == round(agent["quality"] * 3)
        and agent["lm_calls_per_question"] > 1
    )
    assert set(doc["gate"]) >= {"decision", "margin"} and doc["phoenix_url"] is None
    assert doc["seconds"] > 0 and Path(doc["report"]).is_file() and Path(doc["run_dir"]).is_dir()
    assert "held-out questions" in done.stderr  # the table and the progress go to stderr


def test_quick_sizes() -> None:
    assert (QUICK.questions, QUICK.held_out, QUICK.validation) == (6, 8, 6)
    assert DemoOptions().held_out == len(helpdesk.load_questions("heldout")) == 23
    assert DemoOptions().questions >= 12


def test_variants_change_only_the_workflows_answer_steps(settings: Settings, parts: DemoParts) -> None:
    from geode.demo.recompile import FALLBACK, TERSE, answer_predictors, variant_candidate
    from geode.evals.dataset import Dataset

    result = _run(settings, parts)
    assert result.crystallization is not None
    workflow = result.crystallization.workflow()
    (answer,) = answer_predictors(workflow)
    assert answer.demos == []  # the demo crystallizes without demos; give it two to cut
    answer.demos = [dspy.Example(question=q, answer=a) for q, a in list(GOLD.items())[:2]]

    def shape(program: Any) -> dict[str, tuple[str, int]]:
        return {name: (str(p.signature.__doc__), len(p.demos)) for name, p in program.named_predictors()}

    before = shape(workflow)

    variant = variant_candidate(instructions=("terse", TERSE), demos=1)
    program = variant.build(workflow, Dataset.from_records([]))
    after = shape(program)
    changed = {name for name in after if after[name] != before[name]}
    assert len(changed) == 1 and not next(iter(changed)).startswith(f"{FALLBACK}.")
    assert after[next(iter(changed))] == (TERSE, 1)
    assert before == shape(workflow)
    assert variant.name == "instruction: terse, demos: 1" and variant.optimizer == "instructions+demos"
    with pytest.raises(ValueError, match="changes"):
        variant_candidate()


def _answer_prompt(lm: ScriptedLM) -> str:
    """The user message of the last call that asked for the workflow's ``answer``."""
    asked = [c for c in lm.calls if "`answer`" in c.messages[0]["content"]]
    return asked[-1].messages[-1]["content"]


def test_a_shape_feeds_one_passage_question_last_and_is_part_of_the_version(
    settings: Settings, parts: DemoParts, tmp_path: Path
) -> None:
    from geode.agents.crystallize import WorkflowShape
    from geode.demo.recompile import answer_predictors

    result = _run(settings, parts)
    assert result.crystallization is not None
    workflow = result.crystallization.workflow()
    shaped = workflow.with_shape(WorkflowShape(passages=1, tool_results_first=True))
    assert workflow.shape.is_default and shaped.shape == WorkflowShape(1, True)
    question = sorted(GOLD)[0]

    prompts = []
    for program in (workflow, shaped):
        lm = ScriptedLM(_model)
        with dspy.context(lm=lm):
            program(question=question)
        prompts.append(_answer_prompt(lm))
    whole, one = prompts
    assert "[1] " in whole and "[2] " in whole and whole.index("question") < whole.index("search_result")
    assert "[1] " in one and "[2] " not in one and one.index("search_result") < one.index("question")

    registry = ProgramRegistry(tmp_path / "programs")
    base, other = registry.save("wf", workflow), registry.save("wf", shaped)
    assert base.version != other.version
    # A workflow as crystallized has no shape in its state: versions saved before shapes keep their ids.
    assert "geode:shape" not in registry.load_state("wf", base.version)[1]
    loaded = registry.load_into("wf", other.version, workflow)
    assert isinstance(loaded, type(workflow)) and loaded.shape == shaped.shape
    (step,) = answer_predictors(loaded)
    assert list(cast(type[dspy.Signature], step.signature).input_fields) == ["search_result", "question"]
    back = registry.load_into("wf", base.version, shaped)
    assert isinstance(back, type(workflow)) and back.shape.is_default
    (step,) = answer_predictors(back)
    assert list(cast(type[dspy.Signature], step.signature).input_fields) == ["question", "search_result"]


def test_a_saved_shape_that_geode_did_not_write_is_refused(settings: Settings, parts: DemoParts) -> None:
    from geode.agents.crystallize import WorkflowShape
    from geode.agents.crystallize.shape import first_passages
    from geode.errors import ProgramLoadError

    result = _run(settings, parts)
    assert result.crystallization is not None
    workflow = result.crystallization.workflow()
    state = workflow.with_shape(WorkflowShape(passages=1)).dump_state()
    assert state["geode:shape"] == {"passages": 1, "tool_results_first": False}
    for bad in (
        {"passages": 0},
        {"passages": "1"},
        {"passages": 1, "rows": 2},
        [1],
        {"tool_results_first": 1},
    ):
        with pytest.raises(ProgramLoadError, match="shape"):
            workflow.deepcopy().load_state({**state, "geode:shape": bad})
    with pytest.raises(ValueError, match="at least 1"):
        WorkflowShape(passages=0)
    # Only text that is a list of numbered passages is cut.
    assert first_passages("[1] a\n\n[2] b\n\n[3] c", 2) == "[1] a\n\n[2] b"
    assert first_passages("see [1] a\n[2] b", 1) == "see [1] a\n[2] b"
    assert (
        first_passages("[1] only", 1) == "[1] only" and first_passages("[1] a\n[2] b", None) == "[1] a\n[2] b"
    )


def test_the_search_prefers_a_lift_then_fewer_calls_then_a_clearly_faster_candidate() -> None:
    from geode.demo.recompile import Candidate, Scored, _better
    from geode.evals.evaluate import EvalResult

    def scored(score: float, calls: int, p50: float) -> Scored:
        result = EvalResult(
            program="wf", version=None, metric="m", dataset_id="d", dataset_name=None, split="train",
            model=None, score=score, n=10, errors=0, latency_p50_s=p50, latency_p95_s=p50, lm_calls=calls,
            prompt_tokens=0, completion_tokens=0, cost_usd=None, duration_s=1.0, num_threads=1,
            started_at="2026-12-07T00:00:00Z", examples=(),
        )  # fmt: skip
        candidate = Candidate("c", "c", lambda w, f: w, "none")
        return Scored(candidate, dspy.Module(), result, 0, 0.5)

    base = scored(0.5, 10, 4.0)
    assert _better(scored(0.6, 20, 9.0), base)  # a lift wins whatever it costs
    assert not _better(scored(0.4, 5, 1.0), base)  # a loss never does
    assert _better(scored(0.5, 9, 9.0), base)  # same score, fewer LM calls
    assert _better(scored(0.5, 10, 2.0), base)  # same score and calls, clearly faster
    assert not _better(scored(0.5, 10, 3.5), base)  # 12% faster is within the noise
    fast = scored(0.5, 10, 0.010)
    assert not _better(scored(0.5, 10, 0.005), fast)  # milliseconds are noise, whatever the ratio
