"""Mining traced runs into datasets: real programs on a scripted LM, traced by the runtime."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import dspy
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import geode
from geode.errors import DatasetError
from geode.evals.dataset import load_dataset
from geode.evals.mining import Annotation, MiningProgress, SkipReason, label_score, mine
from geode.runtime.phoenix import find_free_port
from geode.runtime.settings import PhoenixSettings, Settings, TracingSettings
from geode.testing import DraftThenAnswer, ScriptedLM, in_memory_tracing
from geode.traces.sources import InMemoryTraceSource, OtlpFileTraceSource
from geode.traces.vocab import GeodeAttributes

QUESTIONS = [
    "What is the capital of France?",
    "what is the capital of france",  # the same question, normalised
    "Who wrote the play Hamlet?",
    "How many legs does a spider have?",
    "explode: what is 2 + 2?",  # the program raises
    "What is the boiling point of water at sea level in degrees Celsius?",
    "What is the boiling point of water at sea level in degrees Celsius today?",  # near duplicate
]


class Ask(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def _model(messages: list[dict[str, str]]) -> dict[str, str]:
    question = messages[-1]["content"].split("[[ ## question ## ]]")[-1].split("[[")[0].strip()
    if "reasoning" not in messages[0]["content"]:
        return {"draft": f"draft for {question}"}
    return {"reasoning": "I know this.", "answer": f"answer to {question}"}


def _run_all(
    rt: geode.Runtime, program: dspy.Module, questions: Sequence[str], **kwargs: object
) -> list[str]:
    ids: list[str] = []
    for q in questions:
        try:
            trace_id = geode.trace_id_of(rt.run(program, question=q, **kwargs))  # type: ignore[arg-type]
            assert trace_id is not None
            ids.append(trace_id)
        except ValueError:
            continue
    return ids


@pytest.fixture
def traced() -> Iterator[tuple[InMemoryTraceSource, list[str]]]:
    provider, exporter = in_memory_tracing()
    rt = geode.Runtime(lm=ScriptedLM(_model), tracer_provider=provider)
    ids = _run_all(rt, DraftThenAnswer(), QUESTIONS, session_id="s-1")
    rt.close()
    yield InMemoryTraceSource(exporter), ids


def test_root_spans_become_records_with_their_run(traced: tuple[InMemoryTraceSource, list[str]]) -> None:
    source, ids = traced
    result = mine(source, "DraftThenAnswer", near_duplicates=False)
    assert result.traces_read == len(QUESTIONS)
    assert result.exact_duplicates == 1
    by_question = {r.inputs["question"]: r for r in result.dataset}
    hamlet = by_question["Who wrote the play Hamlet?"]
    # ChainOfThought's reasoning is the program's working, not its answer.
    assert dict(hamlet.outputs) == {"answer": "answer to Who wrote the play Hamlet?"}
    assert hamlet.trace_id == ids[2]
    trace = source.trace(ids[2])
    assert trace.root is not None and hamlet.span_id == trace.root.span_id
    assert hamlet.metadata["latency_ms"] > 0
    assert hamlet.metadata["tokens"]["total"] == trace.total_tokens > 0
    assert hamlet.metadata["lm_calls"] == 2
    assert hamlet.metadata["session_id"] == "s-1"
    failed = next(r for r in result.dataset if r.inputs["question"].startswith("explode"))
    assert failed.metadata["error"] == {"type": "ValueError", "message": "the calculator exploded"}
    assert failed.outputs == {} and failed.metadata["status"] == "ERROR"
    # Newest first, like the traces.
    starts = [r.metadata["started_at"] for r in result.dataset]
    assert starts == sorted(starts, reverse=True)


def test_mined_jsonl_loads_back_as_dspy_examples(
    traced: tuple[InMemoryTraceSource, list[str]], tmp_path: Path
) -> None:
    source, _ = traced
    result = mine(source, "DraftThenAnswer")
    files = result.save(tmp_path / "mined.jsonl", predictors_dir=tmp_path / "predictors")
    assert [p.name for p in files] == ["mined.jsonl", "answer.predict.jsonl", "draft.jsonl"]
    loaded = load_dataset(tmp_path / "mined.jsonl")
    assert loaded.id == result.dataset.id
    assert loaded.metadata["program"] == "DraftThenAnswer"
    examples = loaded.examples()
    assert all(isinstance(e, dspy.Example) for e in examples)
    assert set(examples[0].inputs().keys()) == {"question"}
    draft = load_dataset(tmp_path / "predictors" / "draft.jsonl").examples()[0]
    assert set(draft.inputs().keys()) == {"question"} and draft.draft.startswith("draft for")


def test_per_predictor_examples_come_from_the_predictor_spans(
    traced: tuple[InMemoryTraceSource, list[str]],
) -> None:
    source, _ = traced
    result = mine(source, "DraftThenAnswer", near_duplicates=False)
    assert set(result.predictors) == {"draft", "answer.predict"}
    answer = result.predictors["answer.predict"].records[0]
    # The predictor's own signature: it sees the draft and writes the reasoning too (demos need both).
    assert set(answer.inputs) == {"question", "draft"}
    assert set(answer.outputs) == {"reasoning", "answer"}
    assert answer.metadata["signature"] == "question, draft -> reasoning, answer"
    assert answer.trace_id in {r.trace_id for r in result.dataset}
    assert answer.span_id != next(r.span_id for r in result.dataset if r.trace_id == answer.trace_id)
    # The failed run still called `draft`; its outputs are withheld like the run's.
    drafts = result.predictors["draft"].records
    assert len(drafts) == len(result.dataset)
    failed = next(d for d in drafts if d.inputs["question"].startswith("explode"))
    assert failed.outputs == {} and "traced_outputs" in failed.metadata


def test_exact_and_near_duplicates_are_dropped(traced: tuple[InMemoryTraceSource, list[str]]) -> None:
    source, _ = traced
    result = mine(source, "DraftThenAnswer")
    assert (result.exact_duplicates, result.near_duplicates) == (1, 1)
    assert len(result.dataset) == len(QUESTIONS) - 2
    assert result.health.exact_duplicates == 0 and not result.health.near_duplicates
    kept = mine(source, "DraftThenAnswer", near_duplicates=False)
    assert len(kept.dataset) == len(QUESTIONS) - 1


def test_labels_come_from_annotations(traced: tuple[InMemoryTraceSource, list[str]]) -> None:
    source, ids = traced
    france, hamlet, spider = ids[0], ids[2], ids[3]
    notes = [
        Annotation(france, "user_feedback", label="thumbs_down", explanation="too slow", at=1.0),
        Annotation(france, "user_feedback", label="thumbs_up", explanation="great", at=2.0),  # changed mind
        Annotation(hamlet, "correctness", score=0.2, explanation="wrong author", annotator_kind="LLM"),
        Annotation(hamlet, "user_feedback", score=0.0, label="wrong", source="local"),
        Annotation(spider, "correctness", score=1.0, annotator_kind="CODE"),
    ]
    result = mine(source, "DraftThenAnswer", annotations=notes, near_duplicates=False)
    by_trace = {r.trace_id: r for r in result.dataset}
    assert by_trace[france].score == 1.0 and by_trace[france].feedback == "great"
    assert by_trace[france].metadata["label"] == "thumbs_up"
    assert by_trace[hamlet].score == pytest.approx(0.1)
    assert by_trace[hamlet].feedback == "wrong author"
    assert by_trace[hamlet].outputs == {}  # judged bad: the traced answer is not a label
    assert by_trace[hamlet].metadata["traced_outputs"] == {"answer": "answer to Who wrote the play Hamlet?"}
    assert {a["name"] for a in by_trace[hamlet].metadata["annotations"]} == {"correctness", "user_feedback"}
    assert by_trace[spider].outputs  # judged good: the traced answer is the label
    assert result.health.score_spread is not None and result.health.score_spread.count == 3

    only_judge = mine(source, "DraftThenAnswer", annotations=notes, annotation_names=["correctness"])
    assert {r.trace_id: r.score for r in only_judge.dataset if r.score is not None} == {
        hamlet: 0.2,
        spider: 1.0,
    }

    low = mine(source, "DraftThenAnswer", annotations=notes, max_score=0.5)
    assert [r.trace_id for r in low.dataset] == [hamlet]
    assert low.filtered == {"unscored": 4, "score above 0.5": 2}

    traced_all = mine(source, "DraftThenAnswer", annotations=notes, outputs="traced", max_score=0.5)
    assert traced_all.dataset.records[0].outputs == {"answer": "answer to Who wrote the play Hamlet?"}


def test_failures_filter_and_bad_runs(traced: tuple[InMemoryTraceSource, list[str]]) -> None:
    source, ids = traced
    failed = mine(source, "DraftThenAnswer", failures=True)
    assert [r.inputs["question"] for r in failed.dataset] == ["explode: what is 2 + 2?"]
    # Failed *or* low-scored when both are asked.
    notes = [Annotation(ids[2], "correctness", score=0.0)]
    bad = mine(source, "DraftThenAnswer", failures=True, max_score=0.4, annotations=notes)
    assert {r.inputs["question"] for r in bad.dataset} == {"explode: what is 2 + 2?", QUESTIONS[2]}


def test_session_time_and_where_filters() -> None:
    provider, exporter = in_memory_tracing()
    rt = geode.Runtime(lm=ScriptedLM(_model), tracer_provider=provider)
    program = DraftThenAnswer()
    _run_all(rt, program, QUESTIONS[2:4], session_id="a", metadata={"tier": "gold"})
    _run_all(rt, program, QUESTIONS[5:6], session_id="b", metadata={"tier": "free"})
    rt.close()
    source = InMemoryTraceSource(exporter)
    assert len(mine(source, "DraftThenAnswer", session_id="a").dataset) == 2
    assert len(mine(source, "DraftThenAnswer", where={"metadata.tier": "free"}).dataset) == 1
    where = mine(source, "DraftThenAnswer", where={"session.id": "b", "metadata.tier": "free"})
    assert len(where.dataset) == 1 and where.filtered == {"where": 2}
    assert len(mine(source, "DraftThenAnswer", since=timedelta(minutes=5)).dataset) == 3
    assert not mine(source, "DraftThenAnswer", since=datetime.now(UTC) + timedelta(minutes=1)).dataset
    assert not mine(source, "SomeOtherProgram").dataset
    assert len(mine(source, "DraftThenAnswer", limit=2).dataset) == 2


def _without(source: InMemoryTraceSource, drop: set[str]) -> InMemoryTraceSource:
    return InMemoryTraceSource([s for s in source.records() if s.span_id not in drop])


def test_partial_traces_are_skipped_and_counted(traced: tuple[InMemoryTraceSource, list[str]]) -> None:
    source, ids = traced
    hamlet, spider, water = (source.trace(t) for t in (ids[2], ids[3], ids[4]))
    # A lost CHAIN span in the middle leaves its LLM span orphaned; a lost root loses the run.
    middle = next(
        s for s in hamlet.spans if s.get(GeodeAttributes.PREDICTOR_NAME) == "draft" and s.kind != "LLM"
    )
    assert spider.root is not None
    partial = _without(source, {middle.span_id, spider.root.span_id})
    # A span the exporter marked as cut by redaction or truncation.
    assert water.root is not None
    records = [
        dataclasses.replace(s, attributes={**s.attributes, GeodeAttributes.TRUNCATED: True})
        if s.span_id == water.root.span_id
        else s
        for s in partial.records()
    ]
    result = mine(InMemoryTraceSource(records), "DraftThenAnswer", near_duplicates=False)
    assert result.skipped == {SkipReason.MISSING_SPANS: 1, SkipReason.NO_ROOT: 1, SkipReason.TRUNCATED: 1}
    assert result.skipped_traces == {
        SkipReason.MISSING_SPANS: (hamlet.trace_id,),
        SkipReason.NO_ROOT: (spider.trace_id,),
        SkipReason.TRUNCATED: (water.trace_id,),
    }
    assert len(result.dataset) == len(QUESTIONS) - 1 - 3


def test_redacted_and_truncated_runs_from_the_real_redactor() -> None:
    provider, exporter = in_memory_tracing(TracingSettings.model_construct(hide_inputs=True))
    rt = geode.Runtime(lm=ScriptedLM(_model), tracer_provider=provider)
    _run_all(rt, DraftThenAnswer(), QUESTIONS[2:4])
    rt.close()
    hidden = mine(InMemoryTraceSource(exporter), "DraftThenAnswer")
    assert hidden.skipped == {SkipReason.REDACTED: 2} and not hidden.dataset

    provider, exporter = in_memory_tracing(TracingSettings.model_construct(max_attribute_length=120))
    rt = geode.Runtime(lm=ScriptedLM(_model), tracer_provider=provider)
    _run_all(rt, DraftThenAnswer(), ["Why? " * 40, QUESTIONS[2]])
    rt.close()
    cut = mine(InMemoryTraceSource(exporter), "DraftThenAnswer")
    assert cut.skipped == {SkipReason.TRUNCATED: 1}
    assert [r.inputs["question"] for r in cut.dataset] == [QUESTIONS[2]]
    # The secret-shaped part of an input is redacted: that run is not a faithful example either.
    provider, exporter = in_memory_tracing()
    rt = geode.Runtime(lm=ScriptedLM(_model), tracer_provider=provider)
    _run_all(rt, DraftThenAnswer(), ["Is sk-abcdefghijklmnopqrstuvwx a valid key?"])
    rt.close()
    assert mine(InMemoryTraceSource(exporter), "DraftThenAnswer").skipped == {SkipReason.REDACTED: 1}


def _file_runtime(tmp_path: Path) -> geode.Runtime:
    settings = Settings(
        home=tmp_path / "home",
        tracing=TracingSettings(otlp_file=tmp_path / "spans.jsonl"),
        phoenix=PhoenixSettings(port=find_free_port()),  # nothing listens: spans go to the file only
    )
    return geode.Runtime(settings, lm=ScriptedLM(_model))


def test_mining_an_otlp_file_gives_the_same_dataset_as_memory(tmp_path: Path) -> None:
    rt = _file_runtime(tmp_path)
    # The same runs reach both: the runtime's file pipeline and an in-memory exporter.
    exporter = InMemorySpanExporter()
    assert isinstance(rt.tracer_provider, TracerProvider)
    rt.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    _run_all(rt, DraftThenAnswer(), QUESTIONS)
    rt.close()
    from_file = mine(OtlpFileTraceSource(tmp_path / "spans.jsonl"), "DraftThenAnswer")
    from_memory = mine(InMemoryTraceSource(exporter), "DraftThenAnswer")
    assert from_file.dataset.id == from_memory.dataset.id
    assert {k: v.id for k, v in from_file.predictors.items()} == {
        k: v.id for k, v in from_memory.predictors.items()
    }
    assert from_file.source_used.startswith("OTLP-JSON file")


def test_waiting_for_given_trace_ids(tmp_path: Path) -> None:
    rt = _file_runtime(tmp_path)
    ids = _run_all(rt, DraftThenAnswer(), QUESTIONS[2:4])
    rt.close()
    never = "f" * 32
    seen: list[MiningProgress] = []
    result = mine(
        OtlpFileTraceSource(tmp_path / "spans.jsonl"),
        "DraftThenAnswer",
        wait_for=[*ids, never],
        wait_timeout_s=0.3,
        progress=seen.append,
    )
    assert result.wait is not None and result.wait.missing == (never,)
    assert {r.trace_id for r in result.dataset} == set(ids)
    assert result.skipped == {SkipReason.NOT_ARRIVED: 1}
    assert "waited" in result.source_used and "2 complete, 1 missing" in result.source_used
    assert seen[-1] == MiningProgress(traces=2, spans=seen[-1].spans, records=2, expected=3)


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression."""
    return str(eval(expression, {"__builtins__": {}}))  # the tests' own tool


_CALCULATE_42 = [
    {"next_thought": "compute", "next_tool_name": "calculate", "next_tool_args": {"expression": "6*7"}},
    {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}},
    {"reasoning": "6*7=42", "answer": "42"},
]
"""An agent's script: one calculator step, finish, then the extracted answer."""


def test_agent_runs_give_per_step_examples() -> None:
    lm = ScriptedLM(_CALCULATE_42)
    provider, exporter = in_memory_tracing()
    rt = geode.Runtime(lm=lm, tracer_provider=provider)
    rt.run(dspy.ReAct(Ask, tools=[calculate]), question="What is 6*7?")
    rt.close()
    result = mine(InMemoryTraceSource(exporter), "ReAct")
    assert [dict(r.outputs) for r in result.dataset] == [{"answer": "42"}]
    react = result.predictors["react"].records
    assert len(react) == 2 and [r.outputs["next_tool_name"] for r in react] == ["calculate", "finish"]
    assert "trajectory" in react[1].inputs


def test_a_geode_agent_is_mined_with_its_signature_outputs_only() -> None:
    # geode.Agent's prediction also carries its step records and termination (with per-step
    # latencies): as expected outputs they made an identical answer score 14% on re-evaluation.
    lm = ScriptedLM(_CALCULATE_42)
    provider, exporter = in_memory_tracing()
    rt = geode.Runtime(lm=lm, tracer_provider=provider)
    agent = geode.Agent(Ask, tools=[calculate], name="calc")
    pred = rt.run(agent, question="What is 6*7?")
    rt.close()
    assert {"steps", "termination"} <= set(pred.keys())
    (record,) = mine(InMemoryTraceSource(exporter), "calc").dataset
    assert dict(record.outputs) == {"answer": "42"}
    (span,) = [
        s for s in exporter.get_finished_spans() if (s.attributes or {}).get(GeodeAttributes.OUTPUT_FIELDS)
    ]
    assert span.attributes is not None
    assert list(cast(Sequence[str], span.attributes[GeodeAttributes.OUTPUT_FIELDS])) == ["answer"]


def test_bad_arguments_are_refused(traced: tuple[InMemoryTraceSource, list[str]]) -> None:
    source, _ = traced
    with pytest.raises(DatasetError, match="program"):
        mine(source, "")
    with pytest.raises(DatasetError, match="max_score"):
        mine(source, "DraftThenAnswer", max_score=float("nan"))
    with pytest.raises(DatasetError, match="limit"):
        mine(source, "DraftThenAnswer", limit=0)


def test_label_scores_and_span_records_helpers() -> None:
    assert [label_score(x) for x in ("👍", "PASS", "wrong", None, "meh")] == [1.0, 1.0, 0.0, None, None]
    assert Annotation("a" * 32, "x", score=0.3, label="thumbs_up").value == 0.3
    assert json.loads(json.dumps(Annotation("a" * 32, "x", label="up").to_json())) == {
        "name": "x",
        "annotator_kind": "HUMAN",
        "source": "phoenix",
        "label": "up",
    }
