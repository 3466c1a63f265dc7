"""Recorded agent runs, read back from traces as typed :class:`AgentRun` records.

An agent run is an AGENT span (``geode.Agent`` and ``dspy.ReAct`` both get one from the runtime's
instrumentation) and everything below it. Its inputs and outputs are the span's ``input.value`` and
``output.value`` (JSON), its tool calls the TOOL spans below it in start order (arguments from
``input.value``, observation from ``output.value``, error from the span status), and how it ended the
``geode.agent.termination`` attribute. A score comes from the evaluation span around the run
(``geode.eval.score``) or from judgements the caller passes in (Phoenix annotations, the feedback log,
a metric against a labelled dataset).

What crystallization learns from: a run *succeeds* when it completed and was scored at least the
threshold. A run nobody scored is *unknown*: it never counts as a success unless the caller says
unscored runs may (``unscored_ok``), because a completed run can still be wrong.

Only the outermost AGENT span of a trace counts as a run: a sub-agent called as a tool is part of its
parent's run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from geode.traces.records import SpanRecord, SpanStatus, TraceRecord
from geode.traces.sources import TraceFilter, TraceSource
from geode.traces.vocab import GeodeAttributes, SpanAttributes

__all__ = ["AgentRun", "RunScore", "ScoreSource", "ToolCall", "read_runs", "runs_from_traces"]

_AGENT = "AGENT"
_TOOL = "TOOL"
_LLM = "LLM"
# Keys of an agent's prediction that are its machinery, not its outputs.
_INTERNAL_OUTPUTS = frozenset({"trajectory", "steps", "termination", "reasoning"})
# Terminations after which the agent's outputs were extracted from a finished trajectory.
_COMPLETED = frozenset({"finish", "repeated_call"})


ScoreSource = Literal["feedback", "metric", "eval"]
"""Where a run's score came from: feedback (annotations, ``rt.feedback``, ``POST /feedback``), a metric
against a labelled dataset, or the evaluation span the run was recorded under."""

UNSCORED: Final = "unscored"
"""The failure reason of a completed run nobody scored (unless unscored runs are trusted)."""


@dataclass(frozen=True)
class RunScore:
    """A judgement of one run: a score in ``[0, 1]`` and/or an annotator's text, and where it came from."""

    score: float | None = None
    feedback: str | None = None
    source: ScoreSource = "feedback"


@dataclass(frozen=True)
class ToolCall:
    """One tool call of a run, from its TOOL span."""

    tool: str
    args: Mapping[str, Any]
    observation: str | None
    """What the tool returned, as recorded (text; JSON for structured results)."""
    error: str | None
    """Why the call failed (scrubbed by the agent), ``None`` when it returned."""
    span_id: str

    @property
    def ok(self) -> bool:
        """True when the tool returned."""
        return self.error is None


@dataclass(frozen=True)
class AgentRun:
    """One recorded agent run: inputs, the tool calls in order, outputs, and how it went."""

    trace_id: str
    span_id: str
    """The AGENT span's id."""
    program: str | None
    """``geode.program.name`` of the run."""
    agent: str | None
    """``agent.name``."""
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    """The agent's outputs (its signature's output fields; trajectory and steps left out)."""
    calls: tuple[ToolCall, ...]
    termination: str | None
    """``geode.agent.termination``: ``finish``, ``max_iters``, ``budget``, ``repeated_call``, ``error``."""
    status: SpanStatus
    started: datetime
    duration_ms: float | None
    lm_calls: int
    tokens: int
    score: float | None = None
    feedback: str | None = None
    problems: tuple[str, ...] = field(default=())
    score_source: ScoreSource | None = None
    """Where :attr:`score` came from (``None`` when unscored)."""
    aliases: tuple[str, ...] = ()
    """``geode.program.aliases`` of the run: other names of its program."""

    def runs_program(self, program: str) -> bool:
        """Whether the run is of ``program`` (by its name or an alias)."""
        return program == self.program or program in self.aliases

    """Why the run could not be read completely (truncated attributes, undecodable JSON)."""

    @property
    def completed(self) -> bool:
        """True when the agent finished normally and produced every output it has."""
        if self.status == "ERROR" or self.problems:
            return False
        if self.termination is not None and self.termination not in _COMPLETED:
            return False
        return bool(self.outputs) and all(_present(v) for v in self.outputs.values())

    def succeeded(self, threshold: float = 0.5, *, unscored_ok: bool = False) -> bool:
        """Completed and scored at least ``threshold``; an unscored run only with ``unscored_ok``."""
        if not self.completed:
            return False
        if self.score is None:
            return unscored_ok
        return self.score >= threshold

    def failure(self, threshold: float = 0.5, *, unscored_ok: bool = False) -> str | None:
        """Why the run does not count as a success (``None`` when it does), for reports."""
        if self.problems:
            return "unreadable"
        if self.status == "ERROR":
            return "error"
        if self.termination is not None and self.termination not in _COMPLETED:
            return self.termination
        if not self.outputs or not all(_present(v) for v in self.outputs.values()):
            return "no outputs"
        if self.score is None:
            return None if unscored_ok else UNSCORED
        if self.score < threshold:
            return "low score"
        return None

    @property
    def kind(self) -> str:
        """How the run is known to be good, for the report: ``feedback``, ``metric``, ``eval`` or ``unscored``."""
        return self.score_source or UNSCORED

    @property
    def ok_calls(self) -> tuple[ToolCall, ...]:
        """The calls whose tool returned."""
        return tuple(c for c in self.calls if c.ok)


def _present(value: Any) -> bool:
    if value is None:
        return False
    return not (isinstance(value, str) and not value.strip())


def _json_object(text: str | None) -> tuple[dict[str, Any] | None, str | None]:
    if text is None:
        return None, "no recorded value"
    try:
        value = json.loads(text)
    except ValueError:
        return None, "not JSON"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object"
    return value, None


def _kwargs(value: dict[str, Any]) -> dict[str, Any]:
    # DSPy hands callbacks a module call's bound arguments, which may arrive as {"kwargs": {...}}.
    nested = value.get("kwargs")
    if set(value) <= {"args", "kwargs"} and isinstance(nested, dict):
        return nested
    return value


def _tool_error(span: SpanRecord) -> str | None:
    if span.status != "ERROR" and span.get(GeodeAttributes.TOOL_ERROR) is not True:
        return None
    if span.status_message:
        return span.status_message
    exc = span.exception
    if exc is not None:
        return f"{exc.type.rsplit('.', 1)[-1]}: {exc.message}"
    return "the tool failed"


def _owned(trace: TraceRecord, span: SpanRecord, owner: SpanRecord) -> bool:
    """Whether the nearest AGENT or TOOL ancestor of ``span`` is ``owner``."""
    parent = trace.parent(span)
    while parent is not None:
        if parent.span_id == owner.span_id:
            return True
        if parent.kind in (_AGENT, _TOOL):
            return False
        parent = trace.parent(parent)
    return False


def _score_around(trace: TraceRecord, span: SpanRecord) -> float | None:
    parent = trace.parent(span)
    while parent is not None:
        value = parent.get(GeodeAttributes.EVAL_SCORE)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        parent = trace.parent(parent)
    return None


def _top_agents(trace: TraceRecord) -> list[SpanRecord]:
    found = []
    for span in trace.spans:
        if span.kind != _AGENT:
            continue
        parent = trace.parent(span)
        while parent is not None and parent.kind != _AGENT:
            parent = trace.parent(parent)
        if parent is None:
            found.append(span)
    return found


def _run(trace: TraceRecord, span: SpanRecord, scores: Mapping[str, RunScore]) -> AgentRun:
    problems: list[str] = []
    if span.get(GeodeAttributes.TRUNCATED) is True:
        problems.append("the agent span's attributes were truncated")
    inputs, why = _json_object(span.input_value)
    if inputs is None:
        problems.append(f"inputs: {why}")
    outputs, why = _json_object(span.output_value)
    if outputs is None and span.status != "ERROR":
        problems.append(f"outputs: {why}")
    calls = []
    lm_calls = tokens = 0
    for below in trace.descendants(span):
        if below.kind == _LLM and _owned(trace, below, span):
            lm_calls += 1
            tokens += below.total_tokens or 0
        if below.kind != _TOOL or not _owned(trace, below, span):
            continue
        args, why = _json_object(below.input_value)
        if args is None:
            problems.append(f"tool {below.tool_name or below.name} arguments: {why}")
        calls.append(
            ToolCall(
                tool=below.tool_name or below.name,
                args=_kwargs(args or {}),
                observation=below.output_value,
                error=_tool_error(below),
                span_id=below.span_id,
            )
        )
    judged = scores.get(span.span_id) or scores.get(trace.trace_id)
    around = _score_around(trace, span)
    source: ScoreSource | None = None
    if judged is not None and judged.score is not None:
        source = judged.source
    elif around is not None:
        source = "eval"
    termination = span.get(GeodeAttributes.AGENT_TERMINATION)
    program = span.get(GeodeAttributes.PROGRAM_NAME)
    agent = span.get(SpanAttributes.AGENT_NAME)
    return AgentRun(
        trace_id=trace.trace_id,
        span_id=span.span_id,
        program=program if isinstance(program, str) else None,
        agent=agent if isinstance(agent, str) else None,
        inputs=_kwargs(inputs or {}),
        outputs={k: v for k, v in (outputs or {}).items() if k not in _INTERNAL_OUTPUTS},
        calls=tuple(calls),
        termination=termination if isinstance(termination, str) else None,
        status=span.status,
        started=span.start_time,
        duration_ms=span.duration_ms,
        lm_calls=lm_calls,
        tokens=tokens,
        score=judged.score if judged is not None and judged.score is not None else around,
        feedback=judged.feedback if judged is not None else None,
        problems=tuple(problems),
        score_source=source,
        aliases=tuple(n for n in span.program_names if n != program),
    )


def runs_from_traces(
    traces: Iterable[TraceRecord], *, scores: Mapping[str, RunScore] | None = None
) -> list[AgentRun]:
    """Every agent run in ``traces`` (one per outermost AGENT span), oldest first.

    Args:
        traces: Traces from any :class:`~geode.traces.sources.TraceSource`.
        scores: Judgements keyed by trace id or by the AGENT span's id; they win over a score found
            on an evaluation span around the run.
    """
    judged = scores or {}
    runs = [_run(trace, span, judged) for trace in traces for span in _top_agents(trace)]
    runs.sort(key=lambda r: (r.started, r.span_id))
    return runs


def read_runs(
    source: TraceSource,
    filter: TraceFilter | None = None,
    *,
    scores: Mapping[str, RunScore] | None = None,
) -> list[AgentRun]:
    """Read the agent runs matching ``filter`` from ``source`` (see :func:`runs_from_traces`).

    Raises:
        TraceSourceError: The source cannot be read.
    """
    return runs_from_traces(source.traces(filter), scores=scores)
