"""The served path against a real Phoenix: spans arrive, feedback becomes a span annotation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import dspy
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from geode.cli import _register_commands, app
from geode.runtime.phoenix import PhoenixStatus
from geode.runtime.runtime import Runtime
from geode.runtime.serving import HostedProgram, create_app
from geode.runtime.settings import PhoenixSettings, Settings, TracingSettings
from geode.testing import ScriptedLM
from geode.traces.sources import PhoenixTraceSource

pytestmark = pytest.mark.phoenix


def test_feedback_lands_as_an_annotation_on_the_served_run(
    phoenix: PhoenixStatus, geode_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phoenix.client import Client

    project = f"serve-{int(time.time() * 1000)}"
    # No collector endpoint configured: the runtime finds the local Phoenix by its port, as `geode
    # serve` does next to `geode phoenix`. Feedback must find the same Phoenix (it used not to).
    port = int(phoenix.url.rsplit(":", 1)[1])
    settings = Settings(
        home=geode_home,
        tracing=TracingSettings(project=project, export_timeout_s=10),
        phoenix=PhoenixSettings(port=port),
    )
    rt = Runtime(settings, lm=ScriptedLM(lambda m: {"answer": "Paris"}))
    served = create_app(rt, [HostedProgram(dspy.Predict("question -> answer"), name="qa")])
    with TestClient(served) as client:
        body = client.post(
            "/programs/qa", json={"question": "Capital of France?", "session_id": "s-1"}
        ).json()
        pipeline = rt.export_pipeline
        assert pipeline is not None and pipeline.force_flush()  # the run's spans are on their way to Phoenix
        feedback = client.post(
            "/feedback", json={"trace_id": body["trace_id"], "score": 1, "label": "correct"}
        )
        answer = feedback.json()
        assert feedback.status_code == 202 and "local" in answer["delivered"], feedback.text
        # Delivered at once, or queued and re-sent by the outbox: never only local.
        assert sorted([*answer["delivered"], *answer["pending"]]) == ["local", "phoenix"], answer
        assert rt.feedback_outbox.wait(timeout_s=60), rt.feedback_outbox.last_error
        rt.close()

    source = PhoenixTraceSource(phoenix.url, project)
    waited = source.wait_for([body["trace_id"]], timeout_s=120)
    assert waited.traces, "the served trace never reached Phoenix"
    root = waited.traces[0].root
    assert root is not None and root.session_id == "s-1"

    phoenix_client = Client(base_url=phoenix.url)
    annotations: list[Any] = []
    deadline = time.monotonic() + 60
    while not annotations and time.monotonic() < deadline:
        annotations = list(
            phoenix_client.spans.get_span_annotations(span_ids=[root.span_id], project_identifier=project)
        )
        time.sleep(1)
    assert annotations, "the feedback never became a span annotation"
    annotation = dict(annotations[0])
    assert annotation["name"] == "user_feedback" and annotation["result"]["score"] == 1

    monkeypatch.setenv("PHOENIX_COLLECTOR_ENDPOINT", phoenix.url)
    monkeypatch.setenv("GEODE_TRACING_PROJECT", project)
    _register_commands()
    result = CliRunner().invoke(app, ["compare-versions", "qa", "--since", "1h", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["version"] == "base" and row["runs"] == 1 and row["mean_score"] == 1.0
