"""``Runtime.feedback`` and its outbox: stored locally at once, delivered when Phoenix takes it, never lost."""

from __future__ import annotations

import threading
from pathlib import Path

import dspy
import pytest

import geode
from geode.errors import InputError
from geode.evals.mining import mine
from geode.runtime.feedback import (
    FeedbackOutbox,
    RunNotVisible,
    TargetUnavailable,
    feedback_annotations,
    make_feedback_record,
)
from geode.runtime.phoenix import find_free_port
from geode.runtime.serving.feedback import FeedbackRecord, FeedbackSink, read_feedback
from geode.runtime.settings import PhoenixSettings, Settings, TracingSettings
from geode.testing import ScriptedLM
from geode.traces.sources import OtlpFileTraceSource

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ROOT = "00f067aa0ba902b7"


class RecordingSink:
    """The Phoenix sink's stand-in: keeps what it was sent."""

    name = "phoenix"

    def __init__(self) -> None:
        self.sent: list[FeedbackRecord] = []

    def send(self, record: FeedbackRecord) -> None:
        self.sent.append(record)


class SwitchablePhoenix:
    """A feedback target that is down until switched on, and knows runs only once told about them."""

    def __init__(self) -> None:
        self.up = False
        self.roots: dict[str, str] = {}
        self.recording = RecordingSink()
        self.attempts = 0
        self.lock = threading.Lock()

    def root_span(self, record: FeedbackRecord) -> str | None:
        with self.lock:
            self.attempts += 1
            if not self.up:
                raise TargetUnavailable("connection refused")
            if record.trace_id not in self.roots:
                raise RunNotVisible(f"no trace {record.trace_id} yet")
            return self.roots[record.trace_id]

    def sink(self) -> FeedbackSink:
        if not self.up:
            raise TargetUnavailable("connection refused")
        return self.recording


def _outbox(folder: Path, target: SwitchablePhoenix, span_wait_s: float = 120.0) -> FeedbackOutbox:
    return FeedbackOutbox(folder, target, retry_s=(0.01, 0.05), span_wait_s=span_wait_s)


def test_phoenix_down_keeps_feedback_and_sends_it_when_phoenix_is_back(tmp_path: Path) -> None:
    phoenix = SwitchablePhoenix()
    outbox = _outbox(tmp_path, phoenix)
    receipt = outbox.submit(make_feedback_record(TRACE, score=0, comment="wrong city"), timeout_s=0.2)
    assert not receipt.delivered and receipt.pending == 1
    # Durable before anything reached Phoenix: the local log mining reads has it.
    assert [r.explanation for r in read_feedback(receipt.log)] == ["wrong city"]
    assert phoenix.attempts >= 1 and outbox.last_error == "connection refused"
    phoenix.roots[TRACE] = ROOT
    phoenix.up = True
    assert outbox.wait(timeout_s=5.0)
    assert outbox.pending == 0
    [sent] = phoenix.recording.sent
    assert (sent.trace_id, sent.span_id, sent.score, sent.explanation) == (TRACE, ROOT, 0.0, "wrong city")
    outbox.close()


def test_feedback_left_by_a_closed_process_is_sent_by_the_next(tmp_path: Path) -> None:
    down = SwitchablePhoenix()
    first = _outbox(tmp_path, down)
    first.submit(make_feedback_record(TRACE, label="thumbs_down"))
    first.close(timeout_s=1.0)  # Phoenix is down: close does not wait it out
    assert first.pending == 1

    back = SwitchablePhoenix()
    back.up, back.roots = True, {TRACE: ROOT}
    second = _outbox(tmp_path, back)
    other = "a" * 32
    back.roots[other] = "b" * 16
    second.submit(make_feedback_record(other, score=1), timeout_s=5.0)
    assert second.wait(timeout_s=5.0)
    assert sorted((r.trace_id, r.label, r.score) for r in back.recording.sent) == [
        (TRACE, "thumbs_down", None),
        (other, None, 1.0),
    ]
    second.close()


def test_a_run_phoenix_never_shows_becomes_a_trace_annotation(tmp_path: Path) -> None:
    phoenix = SwitchablePhoenix()
    phoenix.up = True
    outbox = _outbox(tmp_path, phoenix, span_wait_s=0.3)
    waiting = make_feedback_record(TRACE, score=1)
    visible = make_feedback_record("c" * 32, score=0)
    phoenix.roots["c" * 32] = "d" * 16
    outbox.submit(waiting)
    outbox.submit(visible)
    # The run Phoenix knows goes first; the other waits for its root span, then annotates the trace.
    assert outbox.wait(visible, timeout_s=5.0)
    assert outbox.wait(waiting, timeout_s=5.0)
    assert [(r.trace_id, r.span_id) for r in phoenix.recording.sent] == [("c" * 32, "d" * 16), (TRACE, None)]
    outbox.close()


def test_feedback_arguments_are_checked() -> None:
    with pytest.raises(InputError, match="score, a label or a comment"):
        make_feedback_record(TRACE)
    with pytest.raises(InputError, match="not a trace id"):
        make_feedback_record("nope", score=1)
    with pytest.raises(InputError, match="finite"):
        make_feedback_record(TRACE, score=float("inf"))
    with pytest.raises(InputError, match="span id"):
        make_feedback_record(TRACE, score=1, span_id="xyz")
    record = make_feedback_record("0x" + TRACE.upper(), score=1, label="up", name=" stars ")
    assert (record.trace_id, record.name, record.score) == (TRACE, "stars", 1.0)


class Echo(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        return self.answer(question=question)


def test_runtime_feedback_with_phoenix_down_never_raises_and_mining_reads_it(tmp_path: Path) -> None:
    closed = find_free_port()  # nothing listens there: Phoenix is down
    settings = Settings(
        home=tmp_path / "home",
        phoenix=PhoenixSettings(port=closed),
        tracing=TracingSettings(otlp_file=tmp_path / "spans.jsonl"),
    )
    rt = geode.Runtime(settings, lm=ScriptedLM([{"answer": "Lyon"}, {"answer": "4"}]))
    wrong = rt.run(Echo(), question="Capital of France?")
    right = rt.run(Echo(), question="2+2?")
    receipt = rt.feedback(wrong, score=0, label="wrong", comment="it is Paris", wait_s=0.5)
    assert not receipt.delivered and receipt.pending == 1
    rt.feedback(geode.trace_id_of(right) or "", label="thumbs_up")
    with pytest.raises(InputError, match="no trace id"):
        rt.feedback(dspy.Prediction(answer="x"), score=1)
    rt.close()  # bounded: Phoenix is down, so it does not wait for delivery

    annotations = feedback_annotations(settings)
    assert [(a.trace_id, a.label, a.source) for a in annotations] == [
        (geode.trace_id_of(wrong), "wrong", "local"),
        (geode.trace_id_of(right), "thumbs_up", "local"),
    ]
    result = mine(OtlpFileTraceSource(tmp_path / "spans.jsonl"), "Echo", annotations=annotations)
    by_question = {r.inputs["question"]: r for r in result.dataset}
    assert by_question["Capital of France?"].score == 0.0
    assert by_question["Capital of France?"].feedback == "it is Paris"
    assert by_question["Capital of France?"].outputs == {}
    assert by_question["2+2?"].score == 1.0 and by_question["2+2?"].outputs == {"answer": "4"}
    # Still waiting for Phoenix, in the outbox under the home.
    assert FeedbackOutbox.for_settings(settings).pending == 2


def test_a_running_replica_delivers_what_a_dead_one_left(tmp_path: Path) -> None:
    # Two outboxes on one state database: the serving replica is idle when the other dies.
    back = SwitchablePhoenix()
    back.up, back.roots = True, {TRACE: ROOT}
    survivor = FeedbackOutbox(tmp_path, back, retry_s=(0.01, 0.05), idle_poll_s=0.05)
    survivor.resume()  # as geode serve does on start, with nothing pending yet
    dead = _outbox(tmp_path, SwitchablePhoenix())  # its Phoenix is unreachable, then it is gone
    dead.submit(make_feedback_record(TRACE, score=0.5))
    dead.close()
    assert survivor.wait(timeout_s=5.0)
    assert [(r.trace_id, r.score) for r in back.recording.sent] == [(TRACE, 0.5)]
    survivor.close()
