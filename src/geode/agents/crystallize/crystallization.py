"""``geode.crystallize``: from an agent and its recorded runs to a workflow spec, in one call."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dspy

from geode.agents.crystallize.build import CrystallizeError, CrystallizeOptions, build_spec
from geode.agents.crystallize.patterns import Analysis, analyze
from geode.agents.crystallize.refs import agent_parts, import_ref
from geode.agents.crystallize.report import render_report
from geode.agents.crystallize.runs import AgentRun, RunScore, runs_from_traces
from geode.agents.crystallize.spec import WorkflowSpec
from geode.agents.crystallize.trust import SpecTrust
from geode.agents.crystallize.workflow import CrystallizedWorkflow
from geode.evals.dataset import Dataset, Record
from geode.evals.metrics import score_value
from geode.traces.records import TraceRecord
from geode.traces.sources import TraceFilter, TraceSource

__all__ = ["Crystallization", "crystallize", "score_runs"]

RunsSource = TraceSource | Iterable[TraceRecord] | Iterable[AgentRun]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Crystallization:
    """The result of :func:`crystallize`: the spec, the analysis behind it and the runs read."""

    spec: WorkflowSpec
    analysis: Analysis
    runs: tuple[AgentRun, ...]
    """The runs of this agent that were analysed."""
    ignored: int
    """Agent runs in the source whose inputs do not match this agent's signature."""
    agent: dspy.Module

    def workflow(self, **kwargs: Any) -> CrystallizedWorkflow:
        """The runnable workflow, guarded by this agent (keyword arguments as for the class)."""
        kwargs.setdefault("agent", self.agent)
        return CrystallizedWorkflow(self.spec, **kwargs)

    def report(self) -> str:
        """Which pattern(s) the workflow took and why, as Markdown."""
        return render_report(self.spec)

    def save(self, path: str | os.PathLike[str], *, trust: SpecTrust | None = None) -> Path:
        """Write the spec as JSON, hashed and signed (by ``trust``'s key; default: the process's)."""
        return self.spec.save(path, trust=trust)


def score_runs(
    runs: Iterable[AgentRun], labelled: Dataset, metric: Callable[..., Any]
) -> dict[str, RunScore]:
    """Score recorded runs against a labelled dataset: the learning signal of ``--labels``.

    A run whose inputs equal a record's (after the dataset's text normalisation) is scored with
    ``metric(record, prediction)``, its outputs standing in for the prediction. Runs with no matching
    record, or whose record has no expected output, stay unscored.

    Returns:
        Judgements keyed by the agent span's id (``source="metric"``), for :func:`crystallize`.
    """
    by_input = {r.input_key: r for r in labelled.records if r.outputs}
    scores: dict[str, RunScore] = {}
    for run in runs:
        if run.problems:
            continue
        record = by_input.get(Record(inputs=dict(run.inputs)).input_key)
        if record is None:
            continue
        try:
            value = score_value(metric(record.to_example(), dspy.Prediction(**run.outputs)))
        except Exception as err:  # a metric bug on one run leaves that run unscored, visibly
            logger.warning("metric failed on run %s: %s", run.span_id, err)
            continue
        scores[run.span_id] = RunScore(score=value, source="metric")
    return scores


def _read(
    source: RunsSource,
    program: str | None,
    limit: int | None,
    scores: Mapping[str, RunScore] | None,
    progress: Callable[[str], None],
) -> tuple[list[AgentRun], str]:
    if isinstance(source, TraceSource):
        progress(f"reading traces from {source.description}")
        traces = list(source.traces(TraceFilter(program=program, limit=limit)))
        return runs_from_traces(traces, scores=scores), source.description
    items = list(source)
    if all(isinstance(item, AgentRun) for item in items):
        runs = [item for item in items if isinstance(item, AgentRun)]
        if program is not None:
            runs = [r for r in runs if r.runs_program(program)]
        return runs, "agent runs"
    traces = [item for item in items if isinstance(item, TraceRecord)]
    if len(traces) != len(items):
        raise CrystallizeError("source must be a TraceSource, TraceRecords or AgentRuns")
    runs = runs_from_traces(traces, scores=scores)
    if program is not None:
        runs = [r for r in runs if r.runs_program(program)]
    return runs, f"{len(traces)} traces"


def _resolve_agent(agent: dspy.Module | str) -> dspy.Module:
    """The agent itself, from a module, a reference to one, or a reference to a factory of one."""
    found: Any = import_ref(agent, what="agent") if isinstance(agent, str) else agent
    if not isinstance(found, dspy.Module) and callable(found):
        found = found()
    if not isinstance(found, dspy.Module):
        raise CrystallizeError(
            f"{agent!r} is not a dspy.Module", hint="point it at a geode.Agent or dspy.ReAct"
        )
    return found


def _runs_of_agent(
    runs: list[AgentRun], signature: type[dspy.Signature], agent_name: str, description: str
) -> list[AgentRun]:
    """The runs whose inputs are this agent's, and failed runs that recorded no inputs at all."""
    inputs = set(signature.input_fields)
    mine = [r for r in runs if set(r.inputs) == inputs or (r.problems and not r.inputs)]
    if not mine:
        other = f" ({len(runs)} runs of other agents)" if runs else ""
        raise CrystallizeError(
            f"no runs of agent {agent_name!r} were found in {description}{other}",
            hint="record some runs first, e.g. through geode.Runtime with tracing on",
        )
    return mine


def crystallize(
    agent: dspy.Module | str,
    source: RunsSource,
    *,
    agent_ref: str | None = None,
    name: str | None = None,
    program: str | None = None,
    limit: int | None = None,
    scores: Mapping[str, RunScore] | None = None,
    min_share: float | None = None,
    options: CrystallizeOptions | None = None,
    description: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Crystallization:
    """Derive a fixed-order workflow from an agent's recorded runs.

    Args:
        agent: The agent (``geode.Agent`` or ``dspy.ReAct``), or its ``package.module:attribute``.
        source: Where its runs are: a :class:`~geode.traces.sources.TraceSource` (Phoenix, an OTLP-JSON
            file, memory), trace records, or :class:`~geode.agents.crystallize.runs.AgentRun` records.
        agent_ref: How the spec names the agent it falls back to (default: ``agent`` when it is a
            reference). Without one, pass the agent when loading the spec.
        name: The workflow's name (default: the agent's name plus ``-workflow``).
        program: Only runs with this ``geode.program.name``.
        limit: At most this many traces (the newest) from a trace source.
        scores: Judgements of runs by trace id or agent span id (Phoenix annotations, feedback logs).
        min_share: Shortcut for ``options.min_share``.
        options: Crystallization settings.
        description: Where the runs came from, for the spec and report (default: the source's own).
        progress: Receives one-line progress messages.

    Raises:
        CrystallizeError: No runs of this agent, none succeeded, or no pattern recurs.
        ConfigError: ``agent`` is not an agent.
        TraceSourceError: The source cannot be read.

    Example:
        >>> import geode
        >>> from geode.examples.inventory import build_agent
        >>> geode.crystallize(build_agent(), [])
        Traceback (most recent call last):
        ...
        geode.agents.crystallize.build.CrystallizeError: no runs of agent 'inventory' were found in agent runs (record some runs first, e.g. through geode.Runtime with tracing on)
    """
    say = progress or (lambda _message: None)
    module = _resolve_agent(agent)
    ref = agent_ref if agent_ref is not None else (agent if isinstance(agent, str) else None)
    signature, tools = agent_parts(module)
    opts = options or CrystallizeOptions()
    if min_share is not None:
        opts = replace(opts, min_share=min_share)
    runs, found_in = _read(source, program, limit, scores, say)
    description = description or found_in
    agent_name = str(getattr(module, "name", None) or type(module).__name__)
    mine = _runs_of_agent(runs, signature, agent_name, description)
    say(f"analysing {len(mine)} runs")
    analysis = analyze(
        mine,
        output_fields=list(signature.output_fields),
        success_threshold=opts.success_threshold,
        unscored_ok=opts.unscored_ok,
        agreement=opts.agreement,
        min_rule_runs=opts.min_rule_runs,
        arg_evidence=opts.arg_evidence,
    )
    spec = build_spec(
        analysis,
        signature,
        tools,
        name=name or f"{agent_name}-workflow",
        agent_ref=ref,
        source=description,
        program=program,
        options=opts,
    )
    say(f"{len(spec.routes)} route(s): {', '.join(r.label for r in spec.routes)}")
    return Crystallization(spec, analysis, tuple(mine), len(runs) - len(mine), module)
