"""Trace mining: a program's traced runs become an eval dataset and per-predictor examples.

Every run of a program leaves a trace whose root span carries ``geode.program.name``, the run's inputs
(``input.value``) and outputs (``output.value``) as JSON. :func:`mine` reads those traces from any
:class:`~geode.traces.sources.TraceSource` (Phoenix, the runtime's OTLP-JSON file, memory) and turns
each into a dataset :class:`~geode.evals.dataset.Record`: inputs, outputs, trace and span ids, program
version, latency, tokens and error. The predictor spans inside (``geode.predictor.name``) become one
dataset per predictor, the shape optimizers use as demos.

Labels come from annotations: Phoenix span annotations on the root span and trace annotations (human
thumbs, LLM-judge or code scores), plus feedback passed in (the runtime's local feedback log). Traces
that cannot give a faithful example are skipped and counted by reason: no root span, spans whose
parent is missing, unfinished spans, redacted or truncated inputs/outputs, inputs that are not a JSON
object. Exact and near-duplicate inputs are dropped (the dataset health report's definitions).

Mining right after a run must not guess whether the backend has caught up: pass ``wait_for`` with the
run's trace ids, and :func:`mine` waits for exactly those traces (bounded by ``wait_timeout_s``) and
says so in :attr:`MiningResult.source_used`; or read the runtime's own OTLP-JSON file, which has every
span as soon as it is exported.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Final, Literal, Protocol, cast

from geode.errors import DatasetError, TraceSourceError
from geode.evals.dataset import Dataset, HealthReport, Record, _near_duplicates
from geode.traces.records import SpanRecord, TraceRecord
from geode.traces.sources import PhoenixTraceSource, TraceFilter, TraceSource, TraceWait
from geode.traces.vocab import GeodeAttributes, SpanAttributes

__all__ = [
    "Annotation",
    "AnnotationSource",
    "MiningProgress",
    "MiningResult",
    "OutputPolicy",
    "PhoenixAnnotations",
    "PhoenixDatasetLink",
    "SkipReason",
    "label_score",
    "mine",
    "upload_to_phoenix",
]

OutputPolicy = Literal["auto", "traced", "none"]
"""Which traced outputs become a record's expected ``outputs``:

- ``auto``: those of runs not known to be bad (no error, no annotation score below ``pass_score``);
  a bad run's outputs are kept under ``metadata["traced_outputs"]`` for someone to correct.
- ``traced``: every run's outputs, whatever its annotations say.
- ``none``: no expected outputs (label them later); the traced ones go to ``metadata``.
"""


class SkipReason:
    """Why a trace gave no example (the keys of :attr:`MiningResult.skipped`)."""

    NO_ROOT: Final = "no root span"
    MISSING_SPANS: Final = "missing child spans"
    """A span's parent is not in the trace: the exporter or the backend lost part of it."""
    UNFINISHED: Final = "unfinished run"
    REDACTED: Final = "redacted content"
    TRUNCATED: Final = "truncated content"
    NO_INPUTS: Final = "inputs not recorded"
    SCHEMA: Final = "inputs/outputs do not fit the dataset schema"
    NOT_ARRIVED: Final = "not complete before the deadline"


# Values that mean "hidden" when a writer other than Geode's redactor masked a value.
_HIDDEN_VALUES: Final = frozenset({"__REDACTED__", "<redacted>"})
# Output fields that are the program's working, not its answer: ChainOfThought's rationale, ReAct's
# trajectory. Per-predictor examples keep them (a predictor's demos need them).
_WORKING_FIELDS: Final = frozenset({"reasoning", "trajectory"})
# What geode.Agent records next to its outputs: its step records and why it stopped. Spans written
# before agents recorded their output fields are recognised by kind.
_AGENT_BOOKKEEPING: Final = frozenset({"steps", "termination"})
_POSITIVE: Final = frozenset(
    {"thumbs_up", "thumbs-up", "thumbsup", "up", "👍", "good", "correct", "pass", "passed", "yes",
     "positive", "true", "1", "helpful", "right"}
)  # fmt: skip
_NEGATIVE: Final = frozenset(
    {"thumbs_down", "thumbs-down", "thumbsdown", "down", "👎", "bad", "incorrect", "wrong", "fail",
     "failed", "no", "negative", "false", "0", "unhelpful"}
)  # fmt: skip
_BATCH: Final = 100
"""Traces per annotation lookup (Phoenix takes at most 100 ids per request)."""


def label_score(label: str | None) -> float | None:
    """A score for a thumbs-style label: ``1.0`` for up/correct/pass, ``0.0`` for down/wrong/fail.

    Example:
        >>> label_score("thumbs_up"), label_score("Incorrect"), label_score("maybe")
        (1.0, 0.0, None)
    """
    if label is None:
        return None
    text = label.strip().lower()
    if text in _POSITIVE:
        return 1.0
    if text in _NEGATIVE:
        return 0.0
    return None


# -- annotations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Annotation:
    """One judgement of one run: a Phoenix span or trace annotation, or user feedback."""

    trace_id: str
    name: str
    """The annotation's name (``user_feedback``, ``correctness``...)."""
    score: float | None = None
    label: str | None = None
    explanation: str | None = None
    annotator_kind: str = "HUMAN"
    """``HUMAN``, ``LLM`` or ``CODE``."""
    span_id: str | None = None
    """The annotated span (``None`` for a trace annotation)."""
    source: str = "phoenix"
    """Where it was read: ``phoenix`` or ``local`` (the runtime's feedback log)."""
    at: float | None = None
    """When it was made or last updated (seconds since the epoch), to pick the latest per name."""

    @property
    def value(self) -> float | None:
        """The score, or else the score of a thumbs-style label (see :func:`label_score`)."""
        if self.score is not None and math.isfinite(self.score):
            return self.score
        return label_score(self.label)

    def to_json(self) -> dict[str, Any]:
        """The annotation as recorded in a mined record's ``metadata["annotations"]``."""
        out: dict[str, Any] = {
            "name": self.name,
            "annotator_kind": self.annotator_kind,
            "source": self.source,
        }
        for key in ("score", "label", "explanation", "span_id"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


class AnnotationSource(Protocol):
    """Somewhere annotations of traced runs can be read."""

    @property
    def description(self) -> str:
        """Where the annotations come from, for messages."""
        ...

    def annotations(self, runs: Sequence[tuple[str, str]]) -> list[Annotation]:
        """Annotations of these runs, given as ``(trace_id, root_span_id)`` pairs.

        Raises:
            TraceSourceError: The annotations cannot be read.
        """
        ...


class PhoenixAnnotations:
    """Span annotations on runs' root spans and trace annotations, read from a Phoenix project.

    Uses Phoenix's REST API (``GET /v1/projects/{project}/span_annotations`` and ``.../trace_annotations``,
    the endpoints ``arize-phoenix-client`` calls) over ``httpx``: importing ``phoenix.client`` costs
    about 20 s of CPU in an environment that also has the Phoenix server installed. Notes (annotations
    named ``note``, which Phoenix's UI reserves for free text) are left out, as the client does.

    Args:
        url: Phoenix's base URL.
        project: The project the runs were traced to.
        api_key: For a Phoenix with authentication.
        timeout_s: Per-request timeout.
    """

    def __init__(
        self, url: str, project: str, *, api_key: str | None = None, timeout_s: float = 30.0
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.project = project
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    @property
    def description(self) -> str:
        """Where the annotations come from."""
        return f"Phoenix annotations at {self.url}, project {self.project!r}"

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def annotations(self, runs: Sequence[tuple[str, str]]) -> list[Annotation]:
        """Span annotations of the root spans and trace annotations of the traces of ``runs``."""
        trace_of_span = {span_id: trace_id for trace_id, span_id in runs}
        found: list[Annotation] = []
        for start in range(0, len(runs), _BATCH):
            batch = runs[start : start + _BATCH]
            for item in self._pages("span_annotations", "span_ids", [s for _, s in batch]):
                trace_id = trace_of_span.get(str(item.get("span_id")))
                if trace_id is not None:
                    found.append(_from_phoenix(item, trace_id, str(item.get("span_id"))))
            for item in self._pages("trace_annotations", "trace_ids", [t for t, _ in batch]):
                found.append(_from_phoenix(item, str(item.get("trace_id")), None))
        return found

    def _pages(self, what: str, key: str, ids: list[str]) -> Iterator[dict[str, Any]]:
        import httpx

        cursor: str | None = None
        while True:
            params: dict[str, Any] = {key: ids, "limit": 1000, "exclude_annotation_names": ["note"]}
            if cursor:
                params["cursor"] = cursor
            try:
                response = self._http.get(f"v1/projects/{self.project}/{what}", params=params)
                if response.status_code == 404:
                    return  # no such project yet, or a Phoenix without trace annotations
                response.raise_for_status()
                payload = cast(dict[str, Any], response.json())
            except (httpx.HTTPError, ValueError) as err:
                raise TraceSourceError(
                    f"cannot read {what.replace('_', ' ')} from {self.description}: {err}",
                    hint="check that Phoenix is up (`geode phoenix`), or mine without labels",
                ) from err
            yield from cast(list[dict[str, Any]], payload.get("data") or [])
            cursor = payload.get("next_cursor")
            if not cursor:
                return


def _from_phoenix(item: Mapping[str, Any], trace_id: str, span_id: str | None) -> Annotation:
    result = item.get("result") or {}
    score = result.get("score")
    label = result.get("label")
    explanation = result.get("explanation")
    updated = item.get("updated_at") or item.get("created_at")
    at: float | None = None
    if isinstance(updated, str):
        try:
            at = datetime.fromisoformat(updated).timestamp()
        except ValueError:
            at = None
    return Annotation(
        trace_id=trace_id,
        name=str(item.get("name") or "annotation"),
        score=float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None,
        label=str(label) if label is not None else None,
        explanation=str(explanation) if explanation else None,
        annotator_kind=str(item.get("annotator_kind") or "HUMAN"),
        span_id=span_id,
        source="phoenix",
        at=at,
    )


@dataclass(frozen=True)
class _Judgement:
    """The annotations of one run, reduced to a score, a label and textual feedback."""

    annotations: tuple[Annotation, ...] = ()
    names: frozenset[str] | None = None

    @cached_property
    def chosen(self) -> tuple[Annotation, ...]:
        # The latest annotation per name: a changed mind replaces the first verdict, and the same
        # feedback read from Phoenix and from the local log counts once.
        latest: dict[str, Annotation] = {}
        for a in self.annotations:
            if self.names is not None and a.name not in self.names:
                continue
            kept = latest.get(a.name)
            if kept is None or (a.at or 0.0) >= (kept.at or 0.0):
                latest[a.name] = a
        return tuple(latest[name] for name in sorted(latest))

    @property
    def score(self) -> float | None:
        values = [v for v in (a.value for a in self.chosen) if v is not None]
        return sum(values) / len(values) if values else None

    @property
    def label(self) -> str | None:
        labels = [(a.name, a.label) for a in self.chosen if a.label]
        if not labels:
            return None
        return labels[0][1] if len(labels) == 1 else "; ".join(f"{n}={v}" for n, v in labels)

    @property
    def feedback(self) -> str | None:
        texts = [a.explanation for a in self.chosen if a.explanation]
        return "; ".join(dict.fromkeys(texts)) or None


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MiningProgress:
    """Handed to :func:`mine`'s ``progress`` callback after each trace."""

    traces: int
    """Traces read so far."""
    spans: int
    """Spans in those traces."""
    records: int
    """Records mined so far (before de-duplication)."""
    expected: int | None
    """How many traces will be read, when known (waiting for given trace ids)."""


@dataclass(frozen=True)
class MiningResult:
    """What :func:`mine` produced and everything it left out, with the reasons."""

    program: str
    dataset: Dataset
    """One record per kept run, newest first."""
    predictors: Mapping[str, Dataset]
    """Per named predictor (``geode.predictor.name``): one record per call in the kept runs."""
    source_used: str
    """Which source was read and how: waited for given trace ids, or read what was there."""
    traces_read: int
    spans_read: int
    skipped: Mapping[str, int]
    """Traces that gave no example, by :class:`SkipReason`."""
    skipped_traces: Mapping[str, tuple[str, ...]]
    """The trace ids behind :attr:`skipped` (at most 20 per reason)."""
    filtered: Mapping[str, int]
    """Faithful traces that did not pass the filters, by filter."""
    exact_duplicates: int
    """Runs dropped because an earlier kept run had the same normalised inputs."""
    near_duplicates: int
    """Runs dropped because a kept run's inputs were nearly the same (word Jaccard >= 0.8)."""
    predictor_skipped: Mapping[str, int]
    """Predictor calls left out of the per-predictor datasets, by reason."""
    wait: TraceWait | None
    """The result of waiting for ``wait_for`` trace ids, if :func:`mine` waited."""
    annotations_read: int
    elapsed_s: float

    @cached_property
    def health(self) -> HealthReport:
        """The mined dataset's health: size, diversity, duplicates, label balance, score spread."""
        return self.dataset.health()

    @property
    def spans_per_s(self) -> float:
        """Mining throughput."""
        return self.spans_read / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def save(self, path: str | Path, *, predictors_dir: str | Path | None = None) -> list[Path]:
        """Write the dataset as JSON Lines and, with ``predictors_dir``, one file per predictor.

        Returns:
            The files written (the dataset first).
        """
        written = [self.dataset.save(path)]
        if predictors_dir is not None:
            folder = Path(predictors_dir)
            for name, data in sorted(self.predictors.items()):
                written.append(data.save(folder / f"{_slug(name, 'predictor')}.jsonl"))
        return written

    def summary(self) -> dict[str, Any]:
        """The counts as plain JSON-able data."""
        return {
            "program": self.program,
            "dataset_id": self.dataset.id,
            "records": len(self.dataset),
            "predictors": {k: len(v) for k, v in sorted(self.predictors.items())},
            "source": self.source_used,
            "traces_read": self.traces_read,
            "spans_read": self.spans_read,
            "skipped": dict(self.skipped),
            "filtered": dict(self.filtered),
            "exact_duplicates": self.exact_duplicates,
            "near_duplicates": self.near_duplicates,
            "predictor_skipped": dict(self.predictor_skipped),
            "annotations_read": self.annotations_read,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def _slug(text: str, fallback: str) -> str:
    """A file-name-safe form of a program or predictor name."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-") or fallback


# -- mining ---------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    trace: TraceRecord
    root: SpanRecord
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    error: dict[str, str] | None


@dataclass
class _Tally:
    traces: int = 0
    spans: int = 0
    records: int = 0
    annotations: int = 0
    skipped: Counter[str] = field(default_factory=Counter[str])
    skipped_ids: dict[str, list[str]] = field(default_factory=dict[str, list[str]])
    filtered: Counter[str] = field(default_factory=Counter[str])
    predictor_skipped: Counter[str] = field(default_factory=Counter[str])

    def skip(self, reason: str, trace_id: str) -> None:
        self.skipped[reason] += 1
        ids = self.skipped_ids.setdefault(reason, [])
        if len(ids) < 20:
            ids.append(trace_id)


def _program_root(trace: TraceRecord, program: str) -> SpanRecord | None:
    """The shallowest span of the run of ``program`` (the trace root, unless a caller's span wraps it)."""
    for span, _ in trace.walk():
        if program in span.program_names:
            return span
    return None


def _content_problem(span: SpanRecord, keys: Sequence[str]) -> str | None:
    if span.get(GeodeAttributes.TRUNCATED) is True:
        return SkipReason.TRUNCATED
    if span.get(GeodeAttributes.REDACTED) is True:
        return SkipReason.REDACTED
    for key in keys:
        value = span.get_str(key)
        if value is not None and (value in _HIDDEN_VALUES or "…[truncated " in value):
            return SkipReason.REDACTED if value in _HIDDEN_VALUES else SkipReason.TRUNCATED
    return None


def _json_object(span: SpanRecord, key: str) -> dict[str, Any] | None:
    raw = span.attributes.get(key)
    if not isinstance(raw, str):
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return cast(dict[str, Any], value) if isinstance(value, dict) else None


def _outputs(span: SpanRecord) -> dict[str, Any]:
    value = _json_object(span, SpanAttributes.OUTPUT_VALUE)
    if value is not None:
        return value
    text = span.output_value
    return {"output": text} if text else {}


def _error_of(trace: TraceRecord, root: SpanRecord) -> dict[str, str] | None:
    if root.status != "ERROR":
        return None
    exception = root.exception or next(
        (s.exception for s in trace.descendants(root) if s.exception is not None), None
    )
    if exception is not None:
        return {"type": exception.type, "message": exception.message}
    return {"type": "error", "message": root.status_message}


def _examine(trace: TraceRecord, program: str) -> _Candidate | str:
    """A candidate run, or the :class:`SkipReason` it cannot be one."""
    if trace.root is None:
        return SkipReason.NO_ROOT
    if not trace.complete:
        return SkipReason.MISSING_SPANS
    root = _program_root(trace, program)
    if root is None:
        return SkipReason.NO_ROOT
    if root.end_time is None:
        return SkipReason.UNFINISHED
    problem = _content_problem(root, (SpanAttributes.INPUT_VALUE, SpanAttributes.OUTPUT_VALUE))
    if problem is not None:
        return problem
    inputs = _json_object(root, SpanAttributes.INPUT_VALUE)
    if not inputs:
        return SkipReason.NO_INPUTS
    return _Candidate(trace, root, inputs, _outputs(root), _error_of(trace, root))


def _where_matches(span: SpanRecord, where: Mapping[str, str]) -> bool:
    for key, wanted in where.items():
        value: Any = span.attributes.get(key)
        if value is None and key.startswith("metadata."):
            value = span.metadata
            for part in key.split(".")[1:]:
                value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return False
        text = value if isinstance(value, str) else json.dumps(value)
        if text != wanted and str(value) != wanted:
            return False
    return True


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


def _start_of(since: datetime | timedelta | None) -> datetime | None:
    if since is None or isinstance(since, datetime):
        return since
    return datetime.now(UTC) - since


@dataclass
class _Miner:
    """The per-trace loop of :func:`mine`: examine, filter, judge (in batches) and build records."""

    program: str
    where: Mapping[str, str]
    failures: bool
    max_score: float | None
    names: frozenset[str] | None
    annotation_source: AnnotationSource | None
    outputs: OutputPolicy
    pass_score: float
    progress: Callable[[MiningProgress], None] | None
    extra: dict[str, list[Annotation]] = field(default_factory=dict[str, list[Annotation]])
    tally: _Tally = field(default_factory=_Tally)
    expected: int | None = None
    kept: list[tuple[Record, _Candidate]] = field(default_factory=list[tuple[Record, _Candidate]])
    batch: list[_Candidate] = field(default_factory=list[_Candidate])

    def run(self, traces: Iterable[TraceRecord], limit: int | None) -> list[tuple[Record, _Candidate]]:
        for trace in traces:
            self.tally.traces += 1
            self.tally.spans += len(trace.spans)
            self.examine(trace)
            if self.progress is not None:
                records = len(self.kept) + len(self.batch)
                self.progress(MiningProgress(self.tally.traces, self.tally.spans, records, self.expected))
            if limit is not None and len(self.kept) >= limit:
                break
        self.flush()
        return self.kept[:limit] if limit is not None else self.kept

    def examine(self, trace: TraceRecord) -> None:
        examined = _examine(trace, self.program)
        if isinstance(examined, str):
            self.tally.skip(examined, trace.trace_id)
        elif self.where and not _where_matches(examined.root, self.where):
            self.tally.filtered["where"] += 1
        elif self.failures and self.max_score is None and examined.error is None:
            self.tally.filtered["not a failure"] += 1
        else:
            self.batch.append(examined)
            if len(self.batch) >= _BATCH:
                self.flush()

    def flush(self) -> None:
        """Read the batch's annotations in one go, then filter by score and build the records."""
        if not self.batch:
            return
        by_trace: dict[str, list[Annotation]] = {}
        if self.annotation_source is not None:
            runs = [(c.trace.trace_id, c.root.span_id) for c in self.batch]
            found = self.annotation_source.annotations(runs)
            self.tally.annotations += len(found)
            for a in found:
                by_trace.setdefault(a.trace_id, []).append(a)
        for candidate in self.batch:
            trace_id = candidate.trace.trace_id
            judgement = _Judgement(
                tuple(by_trace.get(trace_id, [])) + tuple(self.extra.get(trace_id, [])), self.names
            )
            reason = self.score_filter(candidate, judgement.score)
            if reason is not None:
                self.tally.filtered[reason] += 1
                continue
            record = _record(candidate, judgement, outputs=self.outputs, pass_score=self.pass_score)
            if isinstance(record, str):
                self.tally.skip(record, trace_id)
            else:
                self.kept.append((record, candidate))
        self.batch.clear()

    def score_filter(self, candidate: _Candidate, score: float | None) -> str | None:
        """Why the run fails the failures/low-score filters, or ``None`` if it passes them."""
        if not self.failures and self.max_score is None:
            return None
        low = self.max_score is not None and score is not None and score <= self.max_score
        if (self.failures and candidate.error is not None) or low:
            return None
        if self.max_score is None:
            return "not a failure"
        return "unscored" if score is None else f"score above {self.max_score:g}"


def mine(
    source: TraceSource,
    program: str,
    *,
    since: datetime | timedelta | None = None,
    until: datetime | None = None,
    session_id: str | None = None,
    where: Mapping[str, str] | None = None,
    failures: bool = False,
    max_score: float | None = None,
    annotation_names: Sequence[str] | None = None,
    annotations: Iterable[Annotation] = (),
    annotation_source: AnnotationSource | None = None,
    wait_for: Sequence[str] | None = None,
    wait_timeout_s: float = 60.0,
    outputs: OutputPolicy = "auto",
    pass_score: float = 0.5,
    near_duplicates: bool = True,
    limit: int | None = None,
    name: str | None = None,
    progress: Callable[[MiningProgress], None] | None = None,
) -> MiningResult:
    """Mine the traced runs of ``program`` into a dataset and per-predictor datasets.

    Args:
        source: Where the traces are: a ``PhoenixTraceSource``, an ``OtlpFileTraceSource`` (the
            runtime's ``tracing.otlp_file``) or an ``InMemoryTraceSource``.
        program: The program's name as traced (``geode.program.name``: the ``module:attr`` reference,
            the registered name, or the module's class name).
        since: Runs that started at or after this moment, or within this long before now.
        until: Runs that started before this moment.
        session_id: Runs of this session only.
        where: Attribute filters on the run's root span, ``{"geode.program.version": "3f9c..."}``; a
            ``metadata.<key>`` filter looks into the run's metadata. Values compare as text.
        failures: Only failed runs (the root span's status is ERROR). With ``max_score`` too, a run
            qualifies when it failed *or* scored low.
        max_score: Only runs whose annotation score is at most this (unscored runs are left out).
        annotation_names: Which annotations give a run's score, label and feedback (default: all; the
            latest annotation per name counts, and the score is the mean over names).
        annotations: Extra annotations, e.g. the runtime's local feedback log.
        annotation_source: Where to read annotations; default: the Phoenix project of a Phoenix
            ``source``, none for other sources.
        wait_for: Trace ids of runs that just happened: wait until exactly these are complete in the
            source (at most ``wait_timeout_s``) and mine them; ids that do not arrive are skipped as
            :attr:`SkipReason.NOT_ARRIVED`.
        wait_timeout_s: Deadline for ``wait_for``.
        outputs: Which traced outputs become expected outputs (see :data:`OutputPolicy`).
        pass_score: With ``outputs="auto"``, runs scored below this keep no expected outputs.
        near_duplicates: Also drop runs whose inputs nearly repeat a kept run's.
        limit: At most this many records (the newest runs).
        name: The dataset's name (default: derived from ``program``).
        progress: Called after each trace read.

    Returns:
        The dataset, the per-predictor datasets and the accounting of what was left out.

    Raises:
        TraceSourceError: The source cannot be read (Phoenix down, file missing, bad filter).
        DatasetError: A filter argument is invalid.
    """
    started = time.perf_counter()
    if not program:
        raise DatasetError("mine needs the program's name (geode.program.name on its spans)")
    if max_score is not None and not math.isfinite(max_score):
        raise DatasetError(f"max_score must be a finite number, got {max_score}")
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be at least 1, got {limit}")
    own_annotations: PhoenixAnnotations | None = None
    if annotation_source is None and isinstance(source, PhoenixTraceSource):
        own_annotations = PhoenixAnnotations(source.url, source.project)
        annotation_source = own_annotations
    filter_ = TraceFilter(
        program=program,
        session_id=session_id,
        # Failures alone can be filtered where the traces are; with a score condition too, not.
        status="ERROR" if failures and max_score is None else None,
        start=_start_of(since),
        end=until,
    )
    miner = _Miner(
        program=program,
        where=dict(where or {}),
        failures=failures,
        max_score=max_score,
        names=frozenset(annotation_names) if annotation_names else None,
        annotation_source=annotation_source,
        outputs=outputs,
        pass_score=pass_score,
        progress=progress,
    )
    for a in annotations:
        miner.extra.setdefault(a.trace_id, []).append(a)
    wait: TraceWait | None = None
    if wait_for:
        wait = source.wait_for(wait_for, timeout_s=wait_timeout_s)
        for trace_id in wait.missing:
            miner.tally.skip(SkipReason.NOT_ARRIVED, trace_id)
        miner.expected = len(wait.traces) + len(wait.missing)
        traces: Iterable[TraceRecord] = (t for t in wait.traces if filter_.matches(t))
        source_used = (
            f"{source.description}: waited {wait.elapsed_s:.1f} s for {miner.expected} expected trace(s), "
            f"{len(wait.traces)} complete"
            + (f", {len(wait.missing)} missing at the {wait_timeout_s:g} s deadline" if wait.missing else "")
        )
    else:
        traces = source.traces(filter_)
        source_used = f"{source.description}: read the traces there (no wait)"
    try:
        kept = miner.run(traces, limit)
    finally:
        if own_annotations is not None:
            own_annotations.close()
    tally = miner.tally
    unique, exact, near = _dedupe(kept, near=near_duplicates)
    predictors = _predictor_records(unique, outputs=outputs, pass_score=pass_score, tally=tally)
    filters = {
        "since": filter_.start.isoformat() if filter_.start else None,
        "until": until.isoformat() if until else None,
        "session_id": session_id,
        "where": dict(where) if where else None,
        "failures": failures or None,
        "max_score": max_score,
        "annotation_names": sorted(annotation_names) if annotation_names else None,
        "wait_for": list(wait_for) if wait_for else None,
    }
    dataset = Dataset(
        tuple(record for record, _ in unique),
        name=name or _dataset_name(program),
        description=f"Runs of {program} mined from {source.description}",
        metadata={
            "kind": "mined",
            "program": program,
            "source": source_used,
            "mined_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "filters": {k: v for k, v in filters.items() if v is not None},
        },
    )
    return MiningResult(
        program=program,
        dataset=dataset,
        predictors=predictors,
        source_used=source_used,
        traces_read=tally.traces,
        spans_read=tally.spans,
        skipped=dict(tally.skipped),
        skipped_traces={k: tuple(v) for k, v in tally.skipped_ids.items()},
        filtered=dict(tally.filtered),
        exact_duplicates=exact,
        near_duplicates=near,
        predictor_skipped=dict(tally.predictor_skipped),
        wait=wait,
        annotations_read=tally.annotations + sum(len(v) for v in miner.extra.values()),
        elapsed_s=time.perf_counter() - started,
    )


def _dataset_name(program: str) -> str:
    return "mined-" + _slug(program, "program")


# -- Phoenix datasets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PhoenixDatasetLink:
    """A dataset created in Phoenix from mined records."""

    name: str
    dataset_id: str
    version_id: str
    examples: int
    linked_spans: int
    """Examples whose ``span_id`` links back to the run they were mined from."""
    url: str


def upload_to_phoenix(
    dataset: Dataset,
    name: str,
    base_url: str,
    *,
    api_key: str | None = None,
    timeout_s: float = 60.0,
) -> PhoenixDatasetLink:
    """Create (or add a version to) a Phoenix dataset whose examples link back to their runs' spans.

    Each example's input and output are the record's ``inputs`` and ``outputs``; its metadata holds the
    trace id, program version, score, feedback and the mined metadata; its ``span_id`` links it to the
    root span of the run it came from, so Phoenix shows the example's source trace.

    Raises:
        DatasetError: The dataset is empty.
        TraceSourceError: Phoenix is unreachable or refused the upload.
    """
    import httpx

    dataset.require(purpose="upload a dataset to Phoenix")
    url = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    try:
        httpx.get(url + "/healthz", timeout=min(timeout_s, 5.0), headers=headers).raise_for_status()
    except httpx.HTTPError as err:
        raise TraceSourceError(
            f"cannot create Phoenix dataset {name!r}: {url} is not reachable ({type(err).__name__})",
            hint="start Phoenix with `geode phoenix`, or leave out --phoenix-dataset",
        ) from err
    from phoenix.client import Client

    examples: list[dict[str, Any]] = []
    for record in dataset.records:
        meta: dict[str, Any] = {"geode_dataset_id": dataset.id, "geode_example_id": record.key}
        for key in ("trace_id", "program_version", "score", "feedback"):
            value = getattr(record, key)
            if value is not None:
                meta[key] = value
        meta.update(json.loads(json.dumps(dict(record.metadata), default=str)))
        example: dict[str, Any] = {
            "input": dict(record.inputs),
            "output": dict(record.outputs),
            "metadata": meta,
        }
        if record.span_id:
            example["span_id"] = record.span_id
        examples.append(example)
    client = Client(base_url=url, api_key=api_key)
    try:
        created = client.datasets.create_dataset(
            name=name,
            examples=examples,
            dataset_description=dataset.description or f"Geode dataset {dataset.id}",
            timeout=max(1, int(timeout_s)),
        )
    except (httpx.HTTPError, ValueError) as err:
        raise TraceSourceError(f"Phoenix at {url} refused dataset {name!r}: {err}") from err
    return PhoenixDatasetLink(
        name=name,
        dataset_id=created.id,
        version_id=created.version_id,
        examples=len(created.examples),
        linked_spans=sum(1 for e in examples if "span_id" in e),
        url=f"{url}/datasets/{created.id}/examples",
    )
