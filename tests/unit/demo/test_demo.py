from __future__ import annotations

import contextlib
import json
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geode.demo import DemoOptions, DemoParts, Progress, run_demo
from geode.demo.pipeline import AGENT_PROGRAM, DemoResult, atomic_write_text, workflow_program
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
    answer = GOLD[question] if knows else "I do not know"
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


OPTIONS = DemoOptions(questions=4, held_out=3, phoenix=False, include_docs=False)


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
    result = _run(settings, parts, progress, report=True)

    stages = [line for line in progress.lines if re.match(r"\d\. ", line)]
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
    # (The answer step may also be a learned regex: the passages' ids, and so the text around the
    # answer, depend on where the corpus lives. Either way no wrong answer is taught.)
    demos = [d for r in result.crystallization.spec.routes for s in r.steps for d in getattr(s, "demos", ())]
    assert {d["answer"] for d in demos if "answer" in d} <= set(GOLD.values())
    # The scripted agent always searched with the question: the workflow copies it, no LM call for it.
    assert [r.label for r in result.rows] == ["agent", "workflow", "recompiled"]
    agent, workflow = result.row("agent"), result.row("workflow")
    assert agent is not None and workflow is not None
    assert workflow.result.lm_calls < agent.result.lm_calls
    assert workflow.result.score == agent.result.score
    assert result.promotion is not None and not result.skipped

    # Artifacts: the run folder renamed into place, the published spec, the report, the registry.
    assert result.run_dir.name == result.run_id and result.run_dir.is_dir()
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
    assert (result.report.parent / "compare.html").is_file() and (
        result.report.parent / "compile.html"
    ).is_file()
    latest = json.loads((settings.home / "demo" / "latest.json").read_text())
    assert latest["run_id"] == result.run_id and [r["label"] for r in latest["rows"]] == [
        "agent",
        "workflow",
        "recompiled",
    ]
    versions = ProgramRegistry(settings.programs_dir).versions(workflow_program(settings))
    assert workflow.version in {v.version for v in versions}
    # The feedback the demo gave each run became the mined records' scores.
    scores = [r.score for r in result.mining.dataset.records]
    assert sorted(s for s in scores if s is not None) == sorted(result.train_scores)

    cells = summary_rows(result)
    assert [c[0] for c in cells] == ["agent", "workflow", "recompiled"] and cells[0][2].endswith("/3)")
    commands = dict(by_hand_commands(result))
    assert commands["mine"].startswith(f"geode mine {AGENT_PROGRAM} --source ")


def _train_questions() -> list[str]:
    return [q.question for q in helpdesk.pick(helpdesk.load_questions("train"), OPTIONS.questions)]


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
    assert [p.suffix for p in runs.iterdir()] == [".partial"]
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
    assert result.phoenix is None and [r.label for r in result.rows] == ["agent", "workflow", "recompiled"]


def test_with_no_correct_run_the_demo_crystallizes_every_completed_run(settings: Settings) -> None:
    def never_right(messages: list[dict[str, str]]) -> dict[str, Any]:
        reply = _model(messages)
        return {k: ("I do not know" if k == "answer" else v) for k, v in reply.items()}

    progress = Recorder()
    parts = DemoParts(lm=ScriptedLM(never_right), store=QdrantStore.memory(), embedder=HashingEmbedder())
    result = _run(settings, parts, progress)

    assert result.train_scores == [0.0] * 4
    assert any("crystallizing from every completed run instead" in line for line in progress.lines)
    assert result.crystallization is not None and result.crystallization.analysis.successful == 4


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
