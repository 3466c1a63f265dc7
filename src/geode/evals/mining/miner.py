"""The mining loop and :func:`mine`: read traces, examine, filter, judge, build records, de-duplicate.

The stages live in their own modules (``examine``, ``annotations``, ``records``); :class:`_Miner` runs
them trace by trace, and :func:`mine` reads the source (waiting for given trace ids if asked) and
assembles the :class:`~geode.evals.mining.result.MiningResult`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from geode.errors import DatasetError
from geode.evals.dataset import Dataset, Record
from geode.evals.mining.annotations import (
    _BATCH,
    Annotation,
    AnnotationSource,
    PhoenixAnnotations,
    _Judgement,
)
from geode.evals.mining.examine import SkipReason, _Candidate, _examine, _where_matches
from geode.evals.mining.options import MiningOptions
from geode.evals.mining.records import OutputPolicy, _dedupe, _predictor_records, _record
from geode.evals.mining.result import MiningProgress, MiningResult, _dataset_name, _Tally
from geode.traces.records import TraceRecord
from geode.traces.sources import PhoenixTraceSource, TraceFilter, TraceSource, TraceWait


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
    options: MiningOptions | None = None,
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

    Give either ``options`` or the keyword arguments, which build the same :class:`MiningOptions`.

    Args:
        source: Where the traces are: a ``PhoenixTraceSource``, an ``OtlpFileTraceSource`` (the
            runtime's ``tracing.otlp_file``) or an ``InMemoryTraceSource``.
        program: The program's name as traced (``geode.program.name``: the ``module:attr`` reference,
            the registered name, or the module's class name).
        options: What to read, keep and label (each field is documented on :class:`MiningOptions`).
        since: Runs that started at or after this moment, or within this long before now.
        until: Runs that started before this moment.
        session_id: Runs of this session only.
        where: Attribute filters on the run's root span (:attr:`MiningOptions.where`).
        failures: Only failed runs (:attr:`MiningOptions.failures`).
        max_score: Only runs whose annotation score is at most this.
        annotation_names: Which annotations give a run's score, label and feedback (default: all).
        annotations: Extra annotations, e.g. the runtime's local feedback log.
        annotation_source: Where to read annotations (default: a Phoenix ``source``'s project).
        wait_for: Trace ids of runs that just happened, to wait for (:attr:`MiningOptions.wait_for`).
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
        TypeError: Both ``options`` and keyword arguments were given.
    """
    keywords = MiningOptions(
        TraceFilter(session_id=session_id, start=_start_of(since), end=until),
        where=where,
        failures=failures,
        max_score=max_score,
        annotation_names=annotation_names,
        annotations=tuple(annotations),
        annotation_source=annotation_source,
        wait_for=wait_for,
        wait_timeout_s=wait_timeout_s,
        outputs=outputs,
        pass_score=pass_score,
        near_duplicates=near_duplicates,
        limit=limit,
        name=name,
        progress=progress,
    )
    if options is not None and keywords != MiningOptions():
        raise TypeError("mine takes options or keyword arguments, not both")
    return _mine(source, program, options or keywords)


def _check(program: str, options: MiningOptions) -> None:
    if not program:
        raise DatasetError("mine needs the program's name (geode.program.name on its spans)")
    if options.max_score is not None and not math.isfinite(options.max_score):
        raise DatasetError(f"max_score must be a finite number, got {options.max_score}")
    if options.limit is not None and options.limit < 1:
        raise DatasetError(f"limit must be at least 1, got {options.limit}")
    if options.traces.program not in (None, program):
        raise DatasetError(f"options.traces.program is {options.traces.program!r}, not {program!r}")


def _mine(source: TraceSource, program: str, options: MiningOptions) -> MiningResult:
    started = time.perf_counter()
    _check(program, options)
    annotation_source = options.annotation_source
    own_annotations: PhoenixAnnotations | None = None
    if annotation_source is None and isinstance(source, PhoenixTraceSource):
        own_annotations = PhoenixAnnotations(source.url, source.project)
        annotation_source = own_annotations
    # Failures alone can be filtered where the traces are; with a score condition too, not.
    failed_only = "ERROR" if options.failures and options.max_score is None else None
    filter_ = replace(options.traces, program=program, status=options.traces.status or failed_only)
    miner = _Miner(
        program=program,
        where=dict(options.where or {}),
        failures=options.failures,
        max_score=options.max_score,
        names=frozenset(options.annotation_names) if options.annotation_names else None,
        annotation_source=annotation_source,
        outputs=options.outputs,
        pass_score=options.pass_score,
        progress=options.progress,
    )
    for a in options.annotations:
        miner.extra.setdefault(a.trace_id, []).append(a)
    reading = _read(source, filter_, options, miner)
    try:
        kept = miner.run(reading.traces, options.limit)
    finally:
        if own_annotations is not None:
            own_annotations.close()
    return _result(reading, options, filter_, miner, kept, started)


class _Reading(NamedTuple):
    """How :func:`mine` read its source."""

    traces: Iterable[TraceRecord]
    wait: TraceWait | None
    """The wait for given trace ids, if any."""
    source_used: str
    description: str


def _read(source: TraceSource, filter_: TraceFilter, options: MiningOptions, miner: _Miner) -> _Reading:
    """The traces to mine, the wait for given trace ids (if any), and how the source was read."""
    if not options.wait_for:
        used = f"{source.description}: read the traces there (no wait)"
        return _Reading(source.traces(filter_), None, used, source.description)
    timeout_s = options.wait_timeout_s
    wait = source.wait_for(options.wait_for, timeout_s=timeout_s)
    for trace_id in wait.missing:
        miner.tally.skip(SkipReason.NOT_ARRIVED, trace_id)
    miner.expected = len(wait.traces) + len(wait.missing)
    traces = (t for t in wait.traces if filter_.matches(t))
    source_used = (
        f"{source.description}: waited {wait.elapsed_s:.1f} s for {miner.expected} expected trace(s), "
        f"{len(wait.traces)} complete"
        + (f", {len(wait.missing)} missing at the {timeout_s:g} s deadline" if wait.missing else "")
    )
    return _Reading(traces, wait, source_used, source.description)


def _result(
    reading: _Reading,
    options: MiningOptions,
    filter_: TraceFilter,
    miner: _Miner,
    kept: list[tuple[Record, _Candidate]],
    started: float,
) -> MiningResult:
    program, tally = miner.program, miner.tally
    unique, exact, near = _dedupe(kept, near=options.near_duplicates)
    predictors = _predictor_records(
        unique, outputs=options.outputs, pass_score=options.pass_score, tally=tally
    )
    filters = {
        "since": filter_.start.isoformat() if filter_.start else None,
        "until": filter_.end.isoformat() if filter_.end else None,
        "session_id": filter_.session_id,
        "where": dict(options.where) if options.where else None,
        "failures": options.failures or None,
        "max_score": options.max_score,
        "annotation_names": sorted(options.annotation_names) if options.annotation_names else None,
        "wait_for": list(options.wait_for) if options.wait_for else None,
    }
    dataset = Dataset(
        tuple(record for record, _ in unique),
        name=options.name or _dataset_name(program),
        description=f"Runs of {program} mined from {reading.description}",
        metadata={
            "kind": "mined",
            "program": program,
            "source": reading.source_used,
            "mined_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "filters": {k: v for k, v in filters.items() if v is not None},
        },
    )
    return MiningResult(
        program=program,
        dataset=dataset,
        predictors=predictors,
        source_used=reading.source_used,
        traces_read=tally.traces,
        spans_read=tally.spans,
        skipped=dict(tally.skipped),
        skipped_traces={k: tuple(v) for k, v in tally.skipped_ids.items()},
        filtered=dict(tally.filtered),
        exact_duplicates=exact,
        near_duplicates=near,
        predictor_skipped=dict(tally.predictor_skipped),
        wait=reading.wait,
        annotations_read=tally.annotations + sum(len(v) for v in miner.extra.values()),
        elapsed_s=time.perf_counter() - started,
    )
