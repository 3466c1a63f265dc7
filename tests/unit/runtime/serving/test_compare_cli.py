"""`geode compare-versions` over spans a served canary split wrote to an OTLP-JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dspy
from dspy.signatures.signature import ensure_signature
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from typer.testing import CliRunner

from geode.cli import _register_commands, app
from geode.runtime.runtime import Runtime
from geode.runtime.serving import Candidate, HostedProgram, create_app
from geode.runtime.settings import Settings, TracingSettings
from geode.runtime.tracing.exporters import OtlpJsonFileExporter
from geode.testing import ScriptedLM


def _variant(name: str) -> dspy.Predict:
    signature = ensure_signature("question -> answer", f"Variant {name}.")
    assert signature is not None
    return dspy.Predict(signature)


def test_compare_versions_reads_served_traces_and_feedback(tmp_path: Path, geode_home: Path) -> None:
    spans_file = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OtlpJsonFileExporter(spans_file)))

    def answer(messages: list[dict[str, str]]) -> dict[str, Any]:
        return {"answer": "B" if "Variant B" in messages[0]["content"] else "A"}

    rt = Runtime(
        lm=ScriptedLM(answer),
        settings=Settings(home=geode_home, tracing=TracingSettings(enabled=False)),
        tracer_provider=provider,
    )
    candidate = Candidate(_variant("B"), "v-b", mode="canary", share=0.5)
    served = create_app(rt, [HostedProgram(_variant("A"), name="qa", candidate=candidate)])
    with TestClient(served) as client:
        bodies = [
            client.post("/programs/qa", json={"question": "q", "session_id": f"s{n}"}).json()
            for n in range(20)
        ]
        for body in bodies:
            score = 1.0 if body["version"] == "v-b" else 0.0
            assert (
                client.post("/feedback", json={"trace_id": body["trace_id"], "score": score}).status_code
                == 202
            )
    provider.force_flush()

    _register_commands()
    result = CliRunner().invoke(
        app, ["compare-versions", "qa", "--since", "1h", "--source", str(spans_file), "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = {row["version"]: row for row in json.loads(result.output)}
    canary = sum(b["version"] == "v-b" for b in bodies)
    assert rows["v-b"]["runs"] == canary and rows["base"]["runs"] == 20 - canary
    assert rows["v-b"]["mean_score"] == 1.0 and rows["base"]["mean_score"] == 0.0
    assert rows["v-b"]["roles"] == ["canary"] and rows["v-b"]["errors"] == 0

    table = CliRunner().invoke(app, ["compare-versions", "qa", "--source", str(spans_file)])
    assert table.exit_code == 0 and "qa: versions over the last 1h" in table.output
