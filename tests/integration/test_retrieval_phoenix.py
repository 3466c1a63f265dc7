"""The retrieval "done" scenario against a real Phoenix: a folder of docs is ingested with the local
embedder (offline), a ReAct agent's search tool finds the right passage, and the retrieval arrives in
Phoenix as a RETRIEVER span under the tool's span, with its documents' ids, scores and text."""

from __future__ import annotations

import uuid
from pathlib import Path

import dspy
import pytest
from tests.tiers import require_tier

import geode
from geode.retrieval import Ingestor, sample_corpus_dir
from geode.runtime.phoenix import PhoenixStatus
from geode.runtime.settings import Settings, TracingSettings
from geode.testing import ScriptedLM
from geode.traces.sources import OtlpFileTraceSource, PhoenixTraceSource

pytestmark = [pytest.mark.phoenix, pytest.mark.embeddings]
require_tier("embeddings", import_name="sentence_transformers")

WAIT_S = 120.0


class QA(dspy.Signature):
    """Answer the customer's question from the help centre."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def test_agent_search_is_a_retriever_span_in_phoenix(phoenix: PhoenixStatus, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("stove-safety.md", "shipping.md", "returns.md", "gift-cards.md"):
        (docs / name).write_text((sample_corpus_dir() / name).read_text())
    project = f"test-retrieval-{uuid.uuid4().hex[:8]}"
    spans_file = tmp_path / "spans.jsonl"
    settings = Settings(
        home=tmp_path / "home",
        tracing=TracingSettings(endpoint=phoenix.url, project=project, otlp_file=spans_file),
    )
    lm = ScriptedLM(
        [
            {
                "next_thought": "Search.",
                "next_tool_name": "search",
                "next_tool_args": {"query": "fuel on a plane"},
            },
            {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}},
            {"reasoning": "The stove page says so.", "answer": "No: buy fuel at your destination."},
        ]
    )
    with geode.Runtime(settings=settings, lm=lm, adapter=dspy.ChatAdapter()) as rt:
        report = Ingestor(rt.store, rt.embedder).ingest([docs], "help")
        assert report.files == 4
        retriever = rt.retriever("help", k=3)
        expected = retriever(query="fuel on a plane").passages
        agent = dspy.ReAct(QA, tools=[retriever.as_tool()], max_iters=3)
        assert (
            rt.run(agent, question="Can I fly with stove fuel?").answer == "No: buy fuel at your destination."
        )

    (local,) = [t for t in OtlpFileTraceSource(spans_file).traces() if t.find(kind="TOOL")]
    with PhoenixTraceSource(phoenix.url, project) as source:
        result = source.wait_for([local.trace_id], timeout_s=WAIT_S)
        assert result.complete, f"Phoenix did not ingest {result.missing} within {WAIT_S}s"
    (trace,) = result.traces
    (retrieval,) = trace.find(kind="RETRIEVER")
    parent = trace.parent(retrieval)
    assert parent is not None and parent.kind == "TOOL"
    assert retrieval.input_value is not None and "fuel on a plane" in retrieval.input_value
    documents = retrieval.indexed("retrieval.documents")
    assert [d["document.id"] for d in documents] == [p.id for p in expected]
    assert "carry-on luggage" in str(documents[0]["document.content"])
    assert float(str(documents[0]["document.score"])) == pytest.approx(expected[0].score, abs=1e-4)
    # Phoenix parses the metadata JSON; the reader flattens it to document.metadata.<key>.
    metadata = {k: v for k, v in documents[0].items() if k.startswith("document.metadata")}
    assert "stove-safety.md" in str(metadata), documents[0]
