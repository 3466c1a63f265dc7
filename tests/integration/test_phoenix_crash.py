"""Phoenix killed (SIGKILL) after it took 200+ spans: the runtime keeps answering, mining reads what landed (T09).

Starts its own ``phoenix serve`` (the shared fixture's must not be killed). 70 runs of a two-step
program (5 spans each: 350 spans) are exported and ingested; 20 more are handed to Phoenix and it is
killed at once (SIGKILL, mid-ingest); 60 more runs are made while it is down; Phoenix is started
again on the same data folder and the program is mined.
Must hold: every run answers right while Phoenix is down, each well inside the export deadline; the
losses are counted as ``unreachable``; after the restart, mining reads the runs that landed before
the crash without error, every mined example is a run's own question and answer, and any trace cut
short by the crash is skipped and counted, not mined (``tests/unit/evals/test_mining.py::
test_partial_traces_are_skipped_and_counted`` makes such traces on purpose).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import dspy
import pytest

import geode
from geode.evals.mining import mine
from geode.runtime.phoenix import PhoenixServer, find_free_port
from geode.runtime.runtime import trace_id_of
from geode.runtime.settings import PhoenixSettings, Settings, TracingSettings
from geode.testing import ScriptedLM
from geode.traces.sources import PhoenixTraceSource

pytestmark = pytest.mark.phoenix

EXPORT_TIMEOUT_S = 2.0
WAIT_S = 120.0


class TwoStep(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict("question -> draft")
        self.answer = dspy.Predict("question, draft -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        draft = self.draft(question=question).draft
        return self.answer(question=question, draft=draft)


def _model(messages: list[dict[str, str]]) -> dict[str, Any]:
    last = messages[-1]["content"]
    question = last.split("[[ ## question ## ]]")[-1].split("\n\n")[0].strip()
    if any("[[ ## answer ## ]]" in m["content"] for m in messages):  # the second step's signature
        return {"answer": f"answer to {question}"}
    return {"draft": f"draft of {question}"}


def _kill(pid: int) -> None:
    if os.getpgid(pid) == pid:
        os.killpg(pid, signal.SIGKILL)
    else:
        os.kill(pid, signal.SIGKILL)


def test_t09_phoenix_killed_after_200_spans(tmp_path: Path) -> None:
    phoenix_settings = PhoenixSettings(
        port=find_free_port(), grpc_port=find_free_port(), start_timeout_s=600.0
    )
    server = PhoenixServer(phoenix_settings, working_dir=tmp_path / "phoenix")
    status = server.start()
    assert status.running and status.pid is not None, status
    project = f"t09-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        home=tmp_path / "home",
        tracing=TracingSettings(endpoint=status.url, project=project, export_timeout_s=EXPORT_TIMEOUT_S),
    )
    program = TwoStep()
    try:
        with geode.Runtime(settings=settings, lm=ScriptedLM(_model)) as rt:
            before = [f"before-{n}" for n in range(70)]
            traces = [trace_id_of(rt.run(program, question=q)) for q in before]
            pipeline = rt.export_pipeline
            assert pipeline is not None and pipeline.force_flush(timeout_s=30)
            exported = sum(pipeline.stats.exported.values())
            assert exported >= 200, pipeline.stats
            with PhoenixTraceSource(status.url, project) as source:
                arrived = source.wait_for([t for t in traces if t], timeout_s=WAIT_S)
                assert arrived.complete, f"Phoenix did not ingest {arrived.missing} within {WAIT_S} s"
            # 20 more runs handed to Phoenix just before the kill: it may be mid-ingest of them.
            for n in range(20):
                rt.run(program, question=f"during-{n}")
            pipeline.force_flush(timeout_s=5)
            _kill(status.pid)
            slowest = 0.0
            for n in range(60):
                started = time.perf_counter()
                answer = rt.run(program, question=f"after-{n}").answer
                slowest = max(slowest, time.perf_counter() - started)
                assert answer == f"answer to after-{n}"
            pipeline.force_flush(timeout_s=5)
            lost = pipeline.stats.failed_by_kind.get("unreachable", 0)
        assert slowest < EXPORT_TIMEOUT_S, f"a run took {slowest:.2f} s with Phoenix killed"
        assert lost > 0, pipeline.stats

        restarted = server.start()  # the same data folder: what Phoenix had committed before the kill
        assert restarted.running, restarted
        with PhoenixTraceSource(restarted.url, project) as source:
            result = mine(source, "TwoStep", near_duplicates=False)
        mined = {str(r.inputs["question"]): str(r.outputs.get("answer")) for r in result.dataset.records}
        assert mined, result
        assert set(before) <= set(mined), sorted(set(before) - set(mined))
        assert all(not q.startswith("after-") and a == f"answer to {q}" for q, a in mined.items()), mined
        print(
            f"\n[figure] T09: {exported} spans exported before SIGKILL; 60 runs while down, slowest "
            f"{slowest * 1000:.0f} ms, {lost} spans counted unreachable; after restart {len(mined)} runs mined "
            f"(70 before, {sum(q.startswith('during-') for q in mined)} of 20 sent just before the kill), skipped {dict(result.skipped)}"
        )
    finally:
        server.stop()
