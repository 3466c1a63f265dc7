"""Against a real Phoenix: the commands that read runs find a program by its name or any alias.

Two agents share their class name (``Agent``) as an alias; one was run by reference, as an instance and
served, so its runs carry different alias sets. ``trace show --program``, ``mine`` and ``crystallize``
reading from Phoenix accept every alias, refuse the shared one naming both programs, and list the names
that exist when nothing matches.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.tiers import require_tier
from tests.unit.agents.crystallize.scenario import oracle

import geode
from geode.agents.crystallize import CrystallizeError
from geode.cli import main
from geode.errors import ConfigError, InputError, TraceSourceError
from geode.runtime.phoenix import PhoenixStatus
from geode.runtime.programs import resolve
from geode.runtime.serving import HostedProgram, create_app
from geode.runtime.settings import Settings, TracingSettings
from geode.testing import ScriptedLM
from geode.traces.sources import OtlpFileTraceSource, PhoenixTraceSource, TraceFilter, programs_with_runs

pytestmark = pytest.mark.phoenix
require_tier("phoenix", import_name="phoenix.server")

WAIT_S = 120.0
"""Deadline for Phoenix to ingest the spans on a busy 2-core machine."""

APP = """
import geode
from geode.examples.inventory import lookup_stock

agent = geode.Agent("question -> answer", tools=[lookup_stock], name="trial-agent")
other = geode.Agent("question -> answer", tools=[lookup_stock], name="other-agent")
"""


def test_phoenix_filters_accept_every_alias(
    phoenix: PhoenixStatus,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = f"test-alias-{uuid.uuid4().hex[:8]}"
    app = tmp_path / "app.py"
    app.write_text(APP)
    ref, other = f"{app}:agent", f"{app}:other"
    spans = tmp_path / "spans.jsonl"
    settings = Settings(
        home=tmp_path / "home",
        tracing=TracingSettings(endpoint=phoenix.url, project=project, otlp_file=spans),
    )
    with geode.Runtime(settings, lm=ScriptedLM(oracle)) as rt:
        rt.run(ref, question="How many widgets are in stock?")
        rt.run(resolve(ref).module, question="How many gadgets are in stock?")
        with TestClient(create_app(rt, [HostedProgram(ref)])) as client:
            answer = client.post(
                "/programs/trial-agent", json={"question": "How many sprockets are in stock?"}
            )
            assert answer.status_code == 200, answer.text
        rt.run(other, question="How many gizmos are in stock?")
    recorded = [t.trace_id for t in OtlpFileTraceSource(spans).traces()]
    assert len(recorded) == 4
    with PhoenixTraceSource(phoenix.url, project) as source:
        arrived = source.wait_for(recorded, timeout_s=WAIT_S)
        assert arrived.complete, f"Phoenix did not ingest {arrived.missing} within {WAIT_S}s"

        def runs(program: str) -> int:
            return len(list(source.traces(TraceFilter(program=program))))

        # The name finds all three runs; the reference finds the runs it started (by reference and
        # served from it); the class name is an alias of both agents.
        assert (runs("trial-agent"), runs(ref), runs("Agent"), runs("other-agent")) == (3, 2, 4, 1)
        assert [p.name for p in programs_with_runs(source, TraceFilter(program="Agent"))] == [
            "other-agent",
            "trial-agent",
        ]

    monkeypatch.setenv("GEODE_TRACING_ENDPOINT", phoenix.url)
    monkeypatch.setenv("GEODE_HOME", str(tmp_path / "home"))
    from_phoenix = ["--source", "phoenix", "--project", project]

    # trace show: the reference (an alias here: it imports, so the CLI turns it into the name first) and
    # the served route name both find the agent's newest run.
    for program in (ref, "trial-agent"):
        _ok(["trace", "show", "--last", "--program", program, *from_phoenix, "--json"])
        shown = json.loads(capsys.readouterr().out)
        assert shown[0]["attributes"]["geode.program.name"] == "trial-agent"

    # The shared alias is refused by each command, naming both programs.
    both = "'Agent' names runs of 2 programs: other-agent, trial-agent"
    for argv in (
        ["trace", "show", "--last", "--program", "Agent", *from_phoenix],
        ["mine", "Agent", *from_phoenix, "--out", str(tmp_path / "x.jsonl")],
        ["crystallize", ref, *from_phoenix, "--program-name", "Agent", "--out", str(tmp_path / "w.json")],
    ):
        with pytest.raises(ConfigError, match=both):
            main(["--debug", *argv])

    # A name nobody ran: each command's error lists the programs that have runs there, with aliases.
    for argv, error in (
        (["trace", "show", "--last", "--program", "triel-agent", *from_phoenix], TraceSourceError),
        (["mine", "triel-agent", *from_phoenix, "--out", str(tmp_path / "y.jsonl")], InputError),
        (
            [
                "crystallize",
                ref,
                *from_phoenix,
                "--program-name",
                "triel-agent",
                "--out",
                str(tmp_path / "z.json"),
            ],
            CrystallizeError,
        ),
    ):
        with pytest.raises(error) as raised:
            main(["--debug", *argv])
        hint = " ".join(str(getattr(raised.value, "hint", "")).split())
        assert "no runs" in str(raised.value) or "no trace" in str(raised.value)
        assert "trial-agent (also" in hint and "other-agent (also" in hint, hint

    # A reference that no longer imports (the file moved) is taken as recorded: Phoenix must match it
    # on the aliases stored with the runs it started (by reference and served from it).
    app.unlink()
    out = tmp_path / "mined.jsonl"
    _ok(["mine", ref, *from_phoenix, "--out", str(out)])
    assert len(out.read_text().splitlines()) == 3  # a header and two runs


def _ok(argv: list[str]) -> None:
    try:
        main(argv)
    except SystemExit as exc:
        assert not exc.code, f"geode {' '.join(argv)} exited with {exc.code}"
