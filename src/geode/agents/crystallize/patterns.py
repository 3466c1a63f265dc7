r"""Patterns in recorded agent runs: which tool sequences recur, and where each argument comes from.

Successful runs are grouped by their *normalised* tool sequence: failed calls are dropped and
consecutive calls of one tool collapse into one step (``search`` twice and ``search`` three times are the same
pattern; the step is marked *repeated*, unless its first call alone has rule-derived arguments, in which case
the later calls count as retries and the step is one call). For every argument of every step, and for every output of the
agent, the runs of a pattern are checked for one derivation that explains them (an input copy, a
constant, an earlier observation, a value a learned expression extracts from one, or an LM step): the
rules are in :mod:`geode.agents.crystallize.derivations`, the extractor learning in
:mod:`geode.agents.crystallize.extractor` (`Derivation` and `learn_extractor` are re-exported here).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from geode.agents.crystallize.derivations import (
    Derivation,
    DerivationKind,
    _canonical,
    _Case,
    _derive,
    _input_rule,
)
from geode.agents.crystallize.extractor import learn_extractor
from geode.agents.crystallize.runs import AgentRun, ToolCall

__all__ = [
    "Analysis",
    "Derivation",
    "DerivationKind",
    "Pattern",
    "StepAnalysis",
    "analyze",
    "learn_extractor",
    "pattern_key",
]


@dataclass(frozen=True)
class StepAnalysis:
    """One step of a pattern: a tool, how its arguments are derived, and the calls it came from."""

    index: int
    tool: str
    repeated: bool
    """Some run called the tool more than once in a row with different arguments."""
    max_calls: int
    """The most calls of this step in one run."""
    args: Mapping[str, Derivation]
    calls: tuple[tuple[ToolCall, ...], ...]
    """Per run of the pattern (in :attr:`Pattern.runs` order), the successful calls of this step."""

    def observation(self, run_index: int) -> str:
        """The step's observation in one run (several calls' observations joined by blank lines)."""
        return _joined(self.calls[run_index])


@dataclass(frozen=True)
class Pattern:
    """A normalised tool sequence shared by some runs, with its steps and output derivations."""

    tools: tuple[str, ...]
    label: str
    runs: tuple[AgentRun, ...]
    """The successful runs that follow it (oldest first)."""
    attempts: int
    """Every run that followed it, failed ones included."""
    share: float
    """Its part of all successful runs."""
    steps: tuple[StepAnalysis, ...]
    outputs: Mapping[str, Derivation]
    retried: int
    """Successful runs of it with a failed tool call or a collapsed repeat (noise the pattern absorbed)."""

    @property
    def success_rate(self) -> float:
        """Successful runs over all runs that followed this pattern."""
        return len(self.runs) / self.attempts if self.attempts else 0.0

    @property
    def lm_derivations(self) -> int:
        """Arguments and outputs that need an LM."""
        derivations = [d for s in self.steps for d in s.args.values()] + list(self.outputs.values())
        return sum(1 for d in derivations if d.kind == "lm")


@dataclass(frozen=True)
class Analysis:
    """What the recorded runs say: how many succeeded, why others failed, and the patterns."""

    runs: int
    successful: int
    failures: Mapping[str, int]
    """Failed runs per reason (``max_iters``, ``error``, ``low score``...)."""
    patterns: tuple[Pattern, ...]
    """Most common first."""
    success_threshold: float
    agreement: float
    min_rule_runs: int
    input_fields: tuple[str, ...] = field(default=())
    output_fields: tuple[str, ...] = field(default=())
    learned_from: Mapping[str, int] = field(default_factory=dict[str, int])
    """Successful runs by how they are known to be good: ``feedback``, ``metric``, ``eval`` (scored at
    least the threshold) and ``unscored`` (only when unscored runs were trusted)."""
    unscored_ok: bool = False
    """Whether completed runs nobody scored counted as successes."""

    @property
    def dominant(self) -> Pattern | None:
        """The most common pattern, if any run succeeded."""
        return self.patterns[0] if self.patterns else None


def _joined(calls: Sequence[ToolCall]) -> str:
    return "\n\n".join(c.observation or "" for c in calls)


def pattern_key(run: AgentRun) -> tuple[str, ...]:
    """A run's normalised tool sequence: successful calls only, consecutive repeats collapsed."""
    key: list[str] = []
    for call in run.ok_calls:
        if not key or key[-1] != call.tool:
            key.append(call.tool)
    return tuple(key)


def _groups(run: AgentRun) -> list[tuple[ToolCall, ...]]:
    groups: list[list[ToolCall]] = []
    for call in run.ok_calls:
        if groups and groups[-1][0].tool == call.tool:
            if all(_canonical(c.args) != _canonical(call.args) for c in groups[-1]):
                groups[-1].append(call)
        else:
            groups.append([call])
    return [tuple(g) for g in groups]


def _label(tools: Sequence[str], repeated: Sequence[bool]) -> str:
    if not tools:
        return "direct_answer"
    return "_then_".join(f"{t}_each" if r else t for t, r in zip(tools, repeated, strict=True))


# -- analysis --------------------------------------------------------------------------------------


def _first_calls(
    grouped: Sequence[Sequence[tuple[ToolCall, ...]]], index: int
) -> list[list[tuple[ToolCall, ...]]]:
    return [[*groups[:index], groups[index][:1], *groups[index + 1 :]] for groups in grouped]


def _copies_from_completed(
    completed: Sequence[AgentRun], index: int, derivations: Mapping[str, Derivation]
) -> tuple[dict[str, Derivation], bool]:
    """The arguments left to an LM step that most completed runs of the pattern copy from an input.

    Returns the replacements and whether they hold for the first call of a repeated step only.
    """
    grouped = [_groups(run) for run in completed]
    for first in (False, True):
        evidence = _first_calls(grouped, index) if first else grouped
        copies: dict[str, Derivation] = {}
        for name, d in derivations.items():
            cases = [c for c in _step_cases(completed, evidence, index, name) if c.values]
            # A majority, near copies included: the choice is between copying the input and an LM step
            # that would itself mostly restate it. A fragment of the input is still not a near copy.
            rule = _input_rule(cases, len(cases) // 2 + 1, near_counts=True) if d.kind == "lm" else None
            if rule is not None:
                copies[name] = replace(rule, completed=True)
        if copies:
            return copies, first
    return {}, False


def _pattern(
    tools: tuple[str, ...],
    runs: Sequence[AgentRun],
    attempts: int,
    total_successful: int,
    output_fields: Sequence[str],
    agreement: float,
    min_runs: int,
    completed: Sequence[AgentRun] = (),
) -> Pattern:
    grouped = [_groups(run) for run in runs]
    steps: list[StepAnalysis] = []
    for index, tool in enumerate(tools):
        derivations = _step_derivations(runs, grouped, index, agreement, min_runs)
        if any(len(groups[index]) > 1 for groups in grouped) and any(
            d.kind == "lm" for d in derivations.values()
        ):
            # The first call of a repeated step is often a plain copy of the input and the later ones the
            # model's retries (search the question, then a truncated question): then the workflow makes the
            # first call only, with no LM step for it, and its observation is what later steps read.
            first = _first_calls(grouped, index)
            single = _step_derivations(runs, first, index, agreement, min_runs)
            if all(d.kind != "lm" for d in single.values()):
                grouped, derivations = first, single
        if len(completed) > len(runs) and any(d.kind == "lm" for d in derivations.values()):
            # How the agent forms a tool's argument does not depend on whether the final answer came out
            # right: with few successful runs (one paraphrased the question) the completed runs of the
            # same tool sequence are the better evidence that the argument is a copy of the input.
            copies, first_only = _copies_from_completed(completed, index, derivations)
            if copies:
                if first_only:
                    grouped = _first_calls(grouped, index)
                derivations = {**derivations, **copies}
        per_run = tuple(groups[index] for groups in grouped)
        steps.append(
            StepAnalysis(
                index=index,
                tool=tool,
                repeated=any(len(calls) > 1 for calls in per_run),
                max_calls=max(len(calls) for calls in per_run),
                args=derivations,
                calls=per_run,
            )
        )
    outputs: dict[str, Derivation] = {}
    for name in output_fields:
        cases = [
            _Case(run.inputs, [_joined(g) for g in groups], [run.outputs[name]])
            for run, groups in zip(runs, grouped, strict=True)
            if name in run.outputs
        ]
        outputs[name] = _derive(cases, agreement, min_runs)
    retried = sum(
        1
        for run, groups in zip(runs, grouped, strict=True)
        if len(run.ok_calls) != len(run.calls) or sum(len(g) for g in groups) != len(run.calls)
    )
    return Pattern(
        tools=tools,
        label=_label(tools, [s.repeated for s in steps]),
        runs=tuple(runs),
        attempts=attempts,
        share=len(runs) / total_successful if total_successful else 0.0,
        steps=tuple(steps),
        outputs=outputs,
        retried=retried,
    )


def _step_derivations(
    runs: Sequence[AgentRun],
    grouped: Sequence[Sequence[tuple[ToolCall, ...]]],
    index: int,
    agreement: float,
    min_runs: int,
) -> dict[str, Derivation]:
    names = sorted({name for groups in grouped for call in groups[index] for name in call.args})
    derivations: dict[str, Derivation] = {}
    for name in names:
        cases = _step_cases(runs, grouped, index, name)
        derivations[name] = _derive([c for c in cases if c.values], agreement, min_runs)
    return derivations


def _step_cases(
    runs: Sequence[AgentRun], grouped: Sequence[Sequence[tuple[ToolCall, ...]]], index: int, name: str
) -> list[_Case]:
    return [
        _Case(
            run.inputs,
            [_joined(groups[i]) for i in range(index)],
            [call.args[name] for call in groups[index] if name in call.args],
        )
        for run, groups in zip(runs, grouped, strict=True)
    ]


def analyze(
    runs: Iterable[AgentRun],
    *,
    output_fields: Sequence[str] | None = None,
    success_threshold: float = 0.5,
    agreement: float = 0.8,
    min_rule_runs: int = 2,
    unscored_ok: bool = False,
    arg_evidence: Literal["successful", "completed"] = "successful",
) -> Analysis:
    """Group successful runs into patterns and derive each argument and output.

    Args:
        runs: Recorded runs of one agent.
        output_fields: The agent's outputs; default: every key found in the runs' outputs.
        success_threshold: A scored run succeeds when its score is at least this.
        unscored_ok: A completed run nobody scored counts as a success (default: it is unknown, and
            left out).
        agreement: Share of a pattern's runs a derivation rule must reproduce.
        min_rule_runs: Runs a rule other than an input copy must hold in.
        arg_evidence: ``completed``: a tool argument the successful runs leave to an LM step becomes a
            copy of an input when most of the pattern's completed runs (right or wrong answers) copy it
            (near copies included). Patterns, outputs and demos still come from the successful runs only.
    """
    if not 0.0 < agreement <= 1.0:
        raise ValueError(f"agreement must be in (0, 1], got {agreement}")
    all_runs = list(runs)
    good = [r for r in all_runs if r.succeeded(success_threshold, unscored_ok=unscored_ok)]
    failures = Counter(
        reason
        for r in all_runs
        if (reason := r.failure(success_threshold, unscored_ok=unscored_ok)) is not None
    )
    fields = (
        list(output_fields) if output_fields is not None else sorted({k for r in good for k in r.outputs})
    )
    inputs = sorted({k for r in all_runs for k in r.inputs})
    by_key: dict[tuple[str, ...], list[AgentRun]] = defaultdict(list)
    completed: dict[tuple[str, ...], list[AgentRun]] = defaultdict(list)
    for run in all_runs:
        if not run.problems:
            completed[pattern_key(run)].append(run)
    for run in good:
        by_key[pattern_key(run)].append(run)
    patterns = [
        _pattern(
            key,
            members,
            len(completed[key]),
            len(good),
            fields,
            agreement,
            min_rule_runs,
            completed[key] if arg_evidence == "completed" else (),
        )
        for key, members in by_key.items()
    ]
    patterns.sort(key=lambda p: (-len(p.runs), -p.success_rate, p.label))
    return Analysis(
        runs=len(all_runs),
        successful=len(good),
        failures=dict(failures),
        patterns=tuple(patterns),
        success_threshold=success_threshold,
        agreement=agreement,
        min_rule_runs=min_rule_runs,
        input_fields=tuple(inputs),
        output_fields=tuple(fields),
        learned_from=dict(Counter(r.kind for r in good)),
        unscored_ok=unscored_ok,
    )
