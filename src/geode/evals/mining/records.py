"""The building stage of mining: examined runs become dataset records, per-predictor records, de-duplicated.

:func:`_record` turns a run and its judgement into a :class:`~geode.evals.dataset.Record` (which traced
outputs it keeps is the :data:`OutputPolicy`); :func:`_predictor_records` does the same for the
predictor calls inside kept runs; :func:`_dedupe` drops exact and near-duplicate inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from geode.errors import DatasetError
from geode.evals.dataset import Dataset, Record
from geode.evals.dataset_health import _near_duplicates
from geode.evals.mining.annotations import _Judgement
from geode.evals.mining.examine import SkipReason, _Candidate, _content_problem, _json_object
from geode.evals.mining.result import _Tally
from geode.traces.records import SpanRecord
from geode.traces.vocab import GeodeAttributes, SpanAttributes

OutputPolicy = Literal["auto", "traced", "none"]
"""Which traced outputs become a record's expected ``outputs``:

- ``auto``: those of runs not known to be bad (no error, no annotation score below ``pass_score``);
  a bad run's outputs are kept under ``metadata["traced_outputs"]`` for someone to correct.
- ``traced``: every run's outputs, whatever its annotations say.
- ``none``: no expected outputs (label them later); the traced ones go to ``metadata``.
"""


# Output fields that are the program's working, not its answer: ChainOfThought's rationale, ReAct's
# trajectory. Per-predictor examples keep them (a predictor's demos need them).
_WORKING_FIELDS: Final = frozenset({"reasoning", "trajectory"})
# What geode.Agent records next to its outputs: its step records and why it stopped. Spans written
# before agents recorded their output fields are recognised by kind.
_AGENT_BOOKKEEPING: Final = frozenset({"steps", "termination"})


def _answer(root: SpanRecord, outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The run's answer: the program's declared outputs, without its working or bookkeeping."""
    declared = root.attributes.get(GeodeAttributes.OUTPUT_FIELDS)
    if isinstance(declared, list | tuple) and declared:
        names = {str(name) for name in declared}
        return {k: v for k, v in outputs.items() if k in names}
    hidden = _WORKING_FIELDS | (_AGENT_BOOKKEEPING if root.kind == "AGENT" else frozenset())
    return {k: v for k, v in outputs.items() if k not in hidden}


def _record(
    candidate: _Candidate,
    judgement: _Judgement,
    *,
    outputs: OutputPolicy,
    pass_score: float,
) -> Record | str:
    root, trace = candidate.root, candidate.trace
    score = judgement.score
    bad = candidate.error is not None or (score is not None and score < pass_score)
    answer = _answer(root, candidate.outputs)
    keep = outputs == "traced" or (outputs == "auto" and not bad)
    metadata: dict[str, Any] = {
        "program": root.get(GeodeAttributes.PROGRAM_NAME),
        "started_at": root.start_time.isoformat(),
        "latency_ms": round(root.duration_ms or 0.0, 3),
        "tokens": {
            "total": trace.total_tokens,
            "prompt": sum(s.prompt_tokens or 0 for s in trace.spans if s.kind == "LLM"),
            "completion": sum(s.completion_tokens or 0 for s in trace.spans if s.kind == "LLM"),
        },
        "lm_calls": sum(1 for s in trace.spans if s.kind == "LLM"),
        "status": root.status,
    }
    if candidate.error is not None:
        metadata["error"] = candidate.error
    if root.session_id:
        metadata["session_id"] = root.session_id
    if not keep and answer:
        metadata["traced_outputs"] = answer
    if judgement.chosen:
        metadata["annotations"] = [a.to_json() for a in judgement.chosen]
    if judgement.label:
        metadata["label"] = judgement.label
    version = root.get_str(GeodeAttributes.PROGRAM_VERSION)
    obj: dict[str, Any] = {
        "inputs": candidate.inputs,
        "outputs": answer if keep else {},
        "trace_id": trace.trace_id,
        "span_id": root.span_id,
        "metadata": metadata,
    }
    if version:
        obj["program_version"] = version
    if score is not None:
        obj["score"] = score
    if judgement.feedback:
        obj["feedback"] = judgement.feedback
    try:
        return Record.from_json(obj, where=f"trace {trace.trace_id}")
    except DatasetError:
        return SkipReason.SCHEMA


def _predictor_records(
    kept: Sequence[tuple[Record, _Candidate]], *, outputs: OutputPolicy, pass_score: float, tally: _Tally
) -> dict[str, Dataset]:
    found: dict[str, list[Record]] = {}
    seen: dict[str, set[str]] = {}
    for record, candidate in kept:
        bad = candidate.error is not None or (record.score is not None and record.score < pass_score)
        keep = outputs == "traced" or (outputs == "auto" and not bad)
        for span in candidate.trace.descendants(candidate.root):
            name = span.get_str(GeodeAttributes.PREDICTOR_NAME)
            if name is None or span.kind == "LLM" or span.get(GeodeAttributes.SIGNATURE) is None:
                continue
            problem = _content_problem(span, (SpanAttributes.INPUT_VALUE, SpanAttributes.OUTPUT_VALUE))
            if problem is not None:
                tally.predictor_skipped[problem] += 1
                continue
            inputs = _json_object(span, SpanAttributes.INPUT_VALUE)
            if not inputs:
                tally.predictor_skipped[SkipReason.NO_INPUTS] += 1
                continue
            traced = _json_object(span, SpanAttributes.OUTPUT_VALUE) or {}
            if span.status == "ERROR":
                tally.predictor_skipped["predictor call failed"] += 1
                continue
            metadata: dict[str, Any] = {
                "predictor": name,
                "signature": span.get_str(GeodeAttributes.SIGNATURE),
                "run_span_id": record.span_id,
                "latency_ms": round(span.duration_ms or 0.0, 3),
            }
            if not keep and traced:
                metadata["traced_outputs"] = traced
            obj: dict[str, Any] = {
                "inputs": inputs,
                "outputs": traced if keep else {},
                "trace_id": record.trace_id,
                "span_id": span.span_id,
                "metadata": metadata,
            }
            for key in ("program_version", "score", "feedback"):
                value = getattr(record, key)
                if value is not None:
                    obj[key] = value
            try:
                example = Record.from_json(obj, where=f"span {span.span_id}")
            except DatasetError:
                tally.predictor_skipped[SkipReason.SCHEMA] += 1
                continue
            keys = seen.setdefault(name, set())
            if example.input_key in keys:
                tally.predictor_skipped["duplicate inputs"] += 1
                continue
            keys.add(example.input_key)
            found.setdefault(name, []).append(example)
    return {name: Dataset(tuple(records), name=name) for name, records in found.items()}


def _dedupe(
    kept: list[tuple[Record, _Candidate]], *, near: bool
) -> tuple[list[tuple[Record, _Candidate]], int, int]:
    # One record per normalised input: the annotated one if any (it carries a label), else the newest.
    best: dict[str, int] = {}
    for i, (record, _) in enumerate(kept):
        current = best.get(record.input_key)
        if current is None or (kept[current][0].score is None and record.score is not None):
            best[record.input_key] = i
    unique = [kept[i] for i in sorted(best.values())]
    exact = len(kept) - len(unique)
    if not near or len(unique) < 2:
        return unique, exact, 0
    # The health report's near-duplicate search (MinHash candidates, word Jaccard >= 0.8), without the
    # rest of the report; drop the later record of each pair.
    records = [r for r, _ in unique]
    pairs = _near_duplicates(records, {r.input_key: [i] for i, r in enumerate(records)})
    dropped: set[int] = set()
    for a, b, _ in sorted(pairs):
        if a not in dropped:
            dropped.add(b)
    return [item for i, item in enumerate(unique) if i not in dropped], exact, len(dropped)
