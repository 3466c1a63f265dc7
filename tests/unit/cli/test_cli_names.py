"""One program, one name: an agent run as an instance, by reference and served is filed under the
name it was given, and every command that reads runs finds it by that name or any alias."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.unit.agents.crystallize.scenario import oracle

import geode
from geode.cli import main
from geode.errors import ConfigError
from geode.runtime.phoenix import find_free_port
from geode.runtime.programs import resolve
from geode.runtime.serving import HostedProgram, create_app
from geode.runtime.settings import PhoenixSettings, Settings, TracingSettings
from geode.testing import ScriptedLM
from geode.traces.sources import OtlpFileTraceSource, TraceFilter

APP = """
import geode
from geode.examples.inventory import lookup_stock

agent = geode.Agent("question -> answer", tools=[lookup_stock], name="trial-agent")
other = geode.Agent("question -> answer", tools=[lookup_stock], name="other-agent")
"""


def _exit(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Runs of one agent started three ways (by reference, as an instance, served), in a span file."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    spans = tmp_path / "spans.jsonl"
    settings = Settings(
        home=tmp_path / "home",
        tracing=TracingSettings(otlp_file=spans),
        phoenix=PhoenixSettings(port=find_free_port()),  # never a Phoenix that happens to be running
    )
    ref = f"{app}:agent"
    with geode.Runtime(settings, lm=ScriptedLM(oracle)) as rt:
        rt.run(ref, question="How many widgets are in stock?")
        rt.run(resolve(ref).module, question="How many gadgets are in stock?")
        served = create_app(rt, [HostedProgram(ref)])
        with TestClient(served) as client:
            routes = [str(getattr(r, "path", "")) for r in served.routes]
            assert "/programs/trial-agent" in routes
            answer = client.post(
                "/programs/trial-agent", json={"question": "How many sprockets are in stock?"}
            )
            assert answer.status_code == 200, answer.text
        rt.run(f"{app}:other", question="How many gizmos are in stock?")
    monkeypatch.setenv("GEODE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GEODE_TRACING_ENABLED", "false")
    return app, spans


def test_the_name_given_is_the_name_everywhere(recorded: tuple[Path, Path]) -> None:
    app, spans = recorded
    ref = f"{app}:agent"
    resolved = resolve(ref)
    assert resolved.name == "trial-agent" and resolved.aliases == (ref, "Agent")
    source = OtlpFileTraceSource(spans)
    traces = list(source.traces(TraceFilter(program="trial-agent")))
    # Three runs, three ways of starting them, one name.
    assert len(traces) == 3 and {t.program_names[0] for t in traces} == {"trial-agent"}
    # The reference is an alias of the runs started by it (an instance does not know its reference).
    assert len(list(source.traces(TraceFilter(program=ref)))) == 2


def test_commands_find_the_runs_by_any_alias(
    recorded: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app, spans = recorded
    for program in ("trial-agent", f"{app}:agent"):
        assert _exit(["trace", "show", "--last", "--program", program, "--source", str(spans), "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown[0]["attributes"]["geode.program.name"] == "trial-agent"
    out = tmp_path / "mined.jsonl"
    assert _exit(["mine", f"{app}:agent", "--source", str(spans), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 4  # a header and the three runs
    capsys.readouterr()

    # A name nobody ran: the error lists the programs that have runs, with their aliases.
    assert _exit(["mine", "triel-agent", "--source", str(spans), "--out", str(tmp_path / "x.jsonl")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no runs of 'triel-agent'" in err
    assert "trial-agent (also" in err and "other-agent (also" in err


def test_an_alias_of_two_programs_is_an_error_naming_both(
    recorded: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app, spans = recorded
    # Both agents are geode.Agent instances: the class name is an alias of each.
    argv = ["crystallize", f"{app}:agent", "--source", str(spans), "--program-name", "Agent"]
    with pytest.raises(ConfigError, match="'Agent' names runs of 2 programs: other-agent, trial-agent"):
        main(["--debug", *argv, "--out", str(tmp_path / "w.json")])


def test_trace_show_and_mine_refuse_an_alias_of_two_programs(
    recorded: tuple[Path, Path], tmp_path: Path
) -> None:
    _, spans = recorded
    out = tmp_path / "mined.jsonl"
    for argv in (
        ["trace", "show", "--last", "--program", "Agent", "--source", str(spans)],
        ["mine", "Agent", "--source", str(spans), "--out", str(out)],
    ):
        with pytest.raises(ConfigError, match="'Agent' names runs of 2 programs: other-agent, trial-agent"):
            main(["--debug", *argv])
    assert not out.exists()
