"""Crystallization against a real Phoenix: agent runs recorded by the Runtime, a human annotation marking one
run wrong, ``geode crystallize --source phoenix`` reading both, and the workflow's own runs back in Phoenix
with the route and the guard's choice on their spans.

The agent is the bundled inventory agent driven by a scripted policy (tests/unit/agents/crystallize/
scenario.py), so the patterns are known: lookups, arithmetic, and both, plus a run that loops and one that
answers wrong.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from tests.unit.agents.crystallize.scenario import QUESTIONS, oracle

import geode
from geode.agents.crystallize import WorkflowSpec
from geode.cli import main
from geode.runtime.phoenix import PhoenixStatus
from geode.runtime.settings import Settings, TracingSettings
from geode.testing import ScriptedLM
from geode.traces.sources import OtlpFileTraceSource, PhoenixTraceSource, TraceFilter

pytestmark = pytest.mark.phoenix

AGENT = "geode.examples.inventory:agent"
WAIT_S = 120.0


def test_crystallize_from_phoenix_with_annotations(
    phoenix: PhoenixStatus,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = f"test-crystallize-{uuid.uuid4().hex[:8]}"
    spans_file = tmp_path / "spans.jsonl"
    settings = Settings(
        home=tmp_path / "home",
        tracing=TracingSettings(endpoint=phoenix.url, project=project, otlp_file=spans_file),
    )
    with geode.Runtime(settings=settings, lm=ScriptedLM(oracle)) as rt:
        for question in QUESTIONS:
            rt.run(AGENT, question=question)
    recorded = list(OtlpFileTraceSource(spans_file).traces())
    assert len(recorded) == len(QUESTIONS)
    wrong = next(t for t in recorded if t.root is not None and "(wrong)" in str(t.root.input_value))
    assert wrong.root is not None

    with PhoenixTraceSource(phoenix.url, project) as source:
        arrived = source.wait_for([t.trace_id for t in recorded], timeout_s=WAIT_S)
        assert arrived.complete, f"Phoenix did not ingest {arrived.missing} within {WAIT_S}s"
    from phoenix.client import Client

    Client(base_url=phoenix.url).spans.add_span_annotation(
        span_id=wrong.root.span_id, annotation_name="correct", score=0.0, explanation="3 x 3 is 9", sync=True
    )

    monkeypatch.setenv("GEODE_TRACING_ENDPOINT", phoenix.url)
    monkeypatch.setenv("GEODE_HOME", str(tmp_path / "home"))
    out = tmp_path / "workflow.json"
    # The annotated run is scored wrong; the others nobody scored, and this test trusts them.
    argv = ["crystallize", AGENT, "--source", "phoenix", "--project", project, "--out", str(out)]
    main_ok([*argv, "--trust-unscored"])
    printed = capsys.readouterr().out
    assert "router over 3" in printed

    spec = WorkflowSpec.load(out)
    assert spec.source.runs == len(QUESTIONS) and spec.source.successful == len(QUESTIONS) - 2
    assert spec.source.failures == {"max_iters": 1, "low score": 1}
    assert spec.source.learned_from == {"unscored": len(QUESTIONS) - 2}
    assert "Phoenix at" in spec.source.description
    calculate = next(p for p in spec.source.patterns if p.label == "calculate")
    # With the wrong run annotated, the calculator's result is the answer in every remaining run.
    assert calculate.derivations["output answer"].startswith("the whole observation of step 1")
    assert (calculate.runs, calculate.attempts) == (3, 4)

    # The workflow answers through the runtime, and its runs land in Phoenix with the route and the choice.
    with geode.Runtime(settings=settings, lm=ScriptedLM(oracle)) as rt:
        assert rt.run(str(out), question="How many sprockets are in stock?").answer == "27"
        assert rt.run(str(out), question="Tell me a joke").answer == "?"
    with PhoenixTraceSource(phoenix.url, project) as source:
        ours = [t for t in OtlpFileTraceSource(spans_file).traces(TraceFilter(program=str(out)))]
        assert len(ours) == 2
        arrived = source.wait_for([t.trace_id for t in ours], timeout_s=WAIT_S)
        assert arrived.complete
        roots = {
            str(t.root.get("geode.fallback.choice")): t.root for t in arrived.traces if t.root is not None
        }
    assert set(roots) == {"primary", "fallback"}
    assert roots["primary"].get("geode.workflow.route") == "lookup_stock"
    assert "router chose 'other'" in str(roots["fallback"].get("geode.fallback.reason"))


def main_ok(argv: list[str]) -> None:
    try:
        main(argv)
    except SystemExit as exc:
        assert not exc.code, f"geode {' '.join(argv)} exited with {exc.code}"
