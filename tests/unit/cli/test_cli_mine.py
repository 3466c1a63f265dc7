"""``geode mine`` on the OTLP-JSON file of real runs (scripted LM), through the CLI."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

import geode
from geode.cli import _register_commands, app, main
from geode.evals.dataset import load_dataset
from geode.runtime.phoenix import find_free_port
from geode.runtime.programs import register_program
from geode.runtime.settings import PhoenixSettings, Settings, TracingSettings
from geode.testing import ScriptedLM, TicketTriage, triage_answers


@pytest.fixture
def runs(tmp_path: Path, geode_home: Path) -> tuple[str, Path, list[str]]:
    name = f"helpdesk-{uuid.uuid4().hex[:8]}"
    register_program(name, TicketTriage)
    spans = tmp_path / "spans.jsonl"
    # Spans go to the file only: no endpoint, and the local Phoenix port is one nothing listens on.
    settings = Settings(
        home=geode_home,
        tracing=TracingSettings(otlp_file=spans),
        phoenix=PhoenixSettings(port=find_free_port()),
    )
    rt = geode.Runtime(settings, lm=ScriptedLM(triage_answers))
    ids: list[str] = []
    for ticket in ["I was charged twice", "i was charged twice!", "Refund my order", "App crash on start"]:
        try:
            ids.append(geode.trace_id_of(rt.run(name, ticket=ticket, session_id="s-9")) or "")
        except RuntimeError:
            pass
    rt.feedback(ids[2], score=0, comment="should apologise first")
    rt.close()
    return name, spans, ids


def _run(argv: list[str]) -> tuple[int, str]:
    _register_commands()
    result = CliRunner().invoke(app, argv)
    return result.exit_code, result.stdout


def test_mine_writes_dataset_predictor_sets_and_a_summary(
    runs: tuple[str, Path, list[str]], tmp_path: Path
) -> None:
    name, spans, _ = runs
    out = tmp_path / "mined.jsonl"
    code, output = _run(
        ["mine", name, "--source", str(spans), "--out", str(out), "--per-predictor", str(tmp_path / "p")]
    )
    assert code == 0, output
    text = " ".join(output.split())
    assert "read the traces there" in text
    assert "examples written" in text and "dataset health" in text
    assert "compiling needs" not in text  # 3 examples are few to compile, but mining compiles nothing
    data = load_dataset(out)
    assert len(data) == 3  # the repeated ticket is dropped
    refund = next(r for r in data if r.inputs["ticket"] == "Refund my order")
    # The local feedback log gives the label.
    assert refund.score == 0.0 and refund.feedback == "should apologise first" and refund.outputs == {}
    assert {p.name for p in (tmp_path / "p").iterdir()} == {"classify.jsonl", "reply.jsonl"}
    assert len(load_dataset(tmp_path / "p" / "classify.jsonl")) == 3


def test_mine_filters_json_and_wait(runs: tuple[str, Path, list[str]], tmp_path: Path) -> None:
    name, spans, ids = runs
    out = tmp_path / "f.jsonl"
    code, output = _run(["mine", name, "--source", str(spans), "--out", str(out), "--failures", "--json"])
    assert code == 0, output
    summary = json.loads(output)
    # Failures are filtered where the traces are: only the failed run is read.
    assert (summary["records"], summary["traces_read"], summary["filtered"]) == (1, 1, {})
    assert summary["health"]["size"] == 1
    assert load_dataset(out).records[0].metadata["error"]["type"] == "RuntimeError"

    code, output = _run(
        [
            "mine",
            name,
            "--source",
            str(spans),
            "--out",
            str(out),
            "--max-score",
            "0.5",
            "--no-local-feedback",
            "--json",
        ]
    )
    assert json.loads(output)["records"] == 0

    missing = "e" * 32
    argv = ["mine", name, "-s", str(spans), "-o", str(out), "--json", "--wait-timeout", "0.2"]
    code, output = _run([*argv, "--wait-for", ids[0], "--wait-for", missing])
    summary = json.loads(output)
    assert summary["records"] == 1 and summary["skipped"] == {"not complete before the deadline": 1}
    assert "waited" in summary["source"]

    code, output = _run(
        ["mine", name, "-s", str(spans), "-o", str(out), "--json", "--where", "session.id=other"]
    )
    assert json.loads(output)["filtered"] == {"where": 4}


def test_mine_user_errors_are_one_line(
    runs: tuple[str, Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, spans, _ = runs
    out = str(tmp_path / "x.jsonl")
    for argv, message in [
        (["mine", name, "-s", str(spans), "-o", out, "--where", "nokey"], "bad --where"),
        (["mine", name, "-s", str(spans), "-o", out, "--since", "yesterday"], "bad --since"),
        (["mine", name, "-s", str(spans), "-o", out, "--outputs", "some"], "bad --outputs"),
        (["mine", name, "-s", str(tmp_path / "none.jsonl"), "-o", out], "neither 'phoenix' nor"),
        (["mine", "no-such-program", "-s", str(spans), "-o", out], "no runs of 'no-such-program'"),
        (["mine", name, "-s", str(spans), "-o", out, "--wait-for", "xyz"], "not a trace id"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
        assert message in capsys.readouterr().err, argv


def test_mine_filters_that_match_no_run_are_a_warning_not_no_runs(
    tmp_path: Path, geode_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"fine-{uuid.uuid4().hex[:8]}"
    register_program(name, TicketTriage)
    spans = tmp_path / "spans.jsonl"
    settings = Settings(
        home=geode_home,
        tracing=TracingSettings(otlp_file=spans),
        phoenix=PhoenixSettings(port=find_free_port()),
    )
    with geode.Runtime(settings, lm=ScriptedLM(triage_answers)) as rt:
        rt.run(name, ticket="I was charged twice")
    out = tmp_path / "failures.jsonl"
    # The program has runs, none failed: an empty dataset and a warning, not "no runs of <name>".
    main(["mine", name, "--source", str(spans), "--out", str(out), "--failures"])
    printed = capsys.readouterr()
    assert "has runs there, but none matched the filters" in " ".join(printed.err.split())
    assert len(load_dataset(out)) == 0
