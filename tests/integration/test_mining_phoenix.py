"""Against a real Phoenix: runs traced there, ``rt.feedback`` stored as a root-span annotation, an LLM judge's
annotation next to it, ``geode mine`` reading both as labels, and a Phoenix dataset linked to the spans."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest

import geode
from geode.cli import main
from geode.evals.mining import MiningResult, mine
from geode.runtime.feedback import feedback_annotations
from geode.runtime.phoenix import PhoenixStatus
from geode.runtime.programs import register_program
from geode.runtime.serving.feedback import FeedbackRecord, PhoenixFeedback
from geode.runtime.settings import Settings, TracingSettings
from geode.testing import ScriptedLM, TicketTriage, triage_answers
from geode.traces.sources import OtlpFileTraceSource, PhoenixTraceSource

pytestmark = pytest.mark.phoenix

WAIT_S = 120.0
"""Deadline for Phoenix to ingest spans and annotations on a busy 2-core machine."""


def _linked_spans(url: str, dataset_id: str) -> set[str]:
    query = "query ($id: ID!) { node(id: $id) { ... on Dataset { examples { edges { node { span { context { spanId } } } } } } } }"
    edges = httpx.post(
        f"{url}/graphql", json={"query": query, "variables": {"id": dataset_id}}, timeout=30
    ).json()["data"]["node"]["examples"]
    return {e["node"]["span"]["context"]["spanId"] for e in edges["edges"] if e["node"]["span"]}


def test_feedback_and_judge_annotations_become_labels(
    phoenix: PhoenixStatus,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project = f"test-mine-{uuid.uuid4().hex[:8]}"
    name = f"triage-{uuid.uuid4().hex[:6]}"
    register_program(name, TicketTriage)
    settings = Settings(
        home=tmp_path / "home",
        tracing=TracingSettings(endpoint=phoenix.url, project=project, otlp_file=tmp_path / "spans.jsonl"),
    )
    rt = geode.Runtime(settings, lm=ScriptedLM(triage_answers))
    ids: list[str] = []
    for ticket in ["I was charged twice", "Refund my order", "Where is my invoice?", "App crash on start"]:
        try:
            ids.append(geode.trace_id_of(rt.run(name, ticket=ticket)) or "")
        except RuntimeError:
            pass
    receipt = rt.feedback(ids[0], score=0, label="thumbs_down", comment="apologise first", wait_s=WAIT_S)
    # Delivered at once, or queued until Phoenix has ingested the run and re-sent: never only local.
    assert receipt.delivered or receipt.pending == 1, receipt
    assert rt.feedback_outbox.wait(timeout_s=WAIT_S), rt.feedback_outbox.last_error
    rt.close()

    source = PhoenixTraceSource(phoenix.url, project)
    arrived = source.wait_for(ids, timeout_s=WAIT_S)
    assert arrived.complete, arrived.missing
    judged = arrived.traces[1]
    assert judged.root is not None
    # An LLM judge's verdict, stored the way any evaluator stores one: a span annotation on the root.
    judge = PhoenixFeedback(phoenix.url, timeout_s=30)
    judge.send(
        FeedbackRecord(
            trace_id=judged.trace_id,
            span_id=judged.root.span_id,
            name="correctness",
            score=1.0,
            label="correct",
            explanation="polite and on topic",
            annotator_kind="LLM",
        )
    )
    judge.close()

    # Annotations are inserted asynchronously: mine until both are visible, within the deadline.
    deadline = time.monotonic() + WAIT_S
    while True:
        result: MiningResult = mine(source, name, wait_for=ids, wait_timeout_s=WAIT_S)
        scored = {r.trace_id: r for r in result.dataset if r.score is not None}
        if len(scored) == 2 or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert "waited" in result.source_used and result.wait is not None and result.wait.complete
    assert result.annotations_read == 2
    assert scored[ids[0]].score == 0.0 and scored[ids[0]].feedback == "apologise first"
    assert scored[ids[0]].outputs == {}  # thumbs down: the traced reply is not a label
    [feedback_note] = scored[ids[0]].metadata["annotations"]
    first_root = arrived.traces[0].root
    assert first_root is not None
    assert feedback_note["source"] == "phoenix" and feedback_note["span_id"] == first_root.span_id
    assert scored[ids[1]].score == 1.0 and scored[ids[1]].metadata["label"] == "correct"
    assert scored[ids[1]].metadata["annotations"][0]["annotator_kind"] == "LLM"
    assert set(result.predictors) == {"classify", "reply"}
    source.close()

    # The runtime's own file holds the same runs; its labels come from the local feedback log.
    from_file = mine(
        OtlpFileTraceSource(tmp_path / "spans.jsonl"), name, annotations=feedback_annotations(settings)
    )
    key = lambda r: (r.trace_id, r.span_id, json.dumps(dict(r.inputs)), json.dumps(dict(r.outputs)))  # noqa: E731
    unjudged = {ids[0], ids[2]}
    assert {key(r) for r in from_file.dataset if r.trace_id in unjudged} == {
        key(r) for r in result.dataset if r.trace_id in unjudged
    }
    assert {r.trace_id: r.score for r in from_file.dataset if r.score is not None} == {ids[0]: 0.0}

    # The CLI, mining from Phoenix into a Phoenix dataset whose examples link back to their spans.
    monkeypatch.setenv("PHOENIX_COLLECTOR_ENDPOINT", phoenix.url)
    monkeypatch.setenv("GEODE_HOME", str(settings.home))
    out = tmp_path / "mined.jsonl"
    dataset_name = f"mined-{project}"
    argv = ["mine", name, "--source", "phoenix", "--project", project, "--out", str(out)]
    argv += ["--phoenix-dataset", dataset_name, "--json"]
    for trace_id in ids:
        argv += ["--wait-for", trace_id]
    main(argv)
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"] == 3 and summary["phoenix_dataset"]["examples"] == 3
    linked = _linked_spans(phoenix.url, summary["phoenix_dataset"]["dataset_id"])
    assert linked == {t.root.span_id for t in arrived.traces if t.root is not None}
