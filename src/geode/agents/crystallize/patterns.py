r"""Patterns in recorded agent runs: which tool sequences recur, and where each argument comes from.

Successful runs are grouped by their *normalised* tool sequence: failed calls are dropped and
consecutive calls of one tool collapse into one step (``search`` twice and ``search`` three times are the same
pattern; the step is marked *repeated*, unless its first call alone has rule-derived arguments, in which case
the later calls count as retries and the step is one call). For every argument of every step, and for every output of the
agent, the runs of a pattern are checked for one derivation that explains them:

- ``input``: a copy of one of the agent's inputs (exact, whitespace-trimmed, or lower-cased); runs whose
  value is a near copy of it (a truncated question, the question with words appended) count too, as long
  as exact copies are at least as many;
- ``constant``: the same value in every run, although the inputs differ, and found in neither the
  inputs nor the observations (else it is a coincidence of the sample);
- ``observation``: a copy of an earlier step's whole observation;
- ``extract``: a substring of an earlier observation that one learned regular expression finds in
  every run (``": (\d+) units in stock"``);
- ``lm``: nothing simpler explains it, so a language-model step has to produce it. The observations it
  reads (``depends_on``) decide how early the workflow can ask for it.

A rule has to hold in at least ``agreement`` of the pattern's runs, and (except for input copies) in
at least ``min_rule_runs`` runs, so one run's coincidence does not become a workflow step.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

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

DerivationKind = Literal["input", "constant", "observation", "extract", "lm"]
Transform = Literal["strip", "lower"]

_WORD = re.compile(r"\w+")
_STOPWORDS = frozenset(
    "a an and are as at be by for from how i in is it many much of on or the this to was what which who with".split()
)
_MAX_CONTEXT = 16
# Value shapes an extractor may capture, tried from the most specific to the most general.
_VALUE_CLASSES = (
    r"-?\d+(?:[.,]\d+)*",
    r"[A-Za-z0-9_.:/-]+",
    r"\S+",
    r"[^\n]+?",
)


@dataclass(frozen=True)
class Derivation:
    """How one argument (or output) is obtained, and in how many of the pattern's runs that holds."""

    kind: DerivationKind
    support: int
    """Runs in which the rule produced exactly the recorded value."""
    total: int
    """Runs of the pattern that have this argument."""
    near: int = 0
    """``input``: further runs whose value was a near copy of the input (same content words, give or take
    a few: a truncated question, or the question with words appended), counted towards the agreement."""
    field: str | None = None
    """``input``: the agent input copied."""
    transform: Transform | None = None
    """``input``: ``strip`` (whitespace trimmed and collapsed) or ``lower`` (also lower-cased)."""
    step: int | None = None
    """``observation``/``extract``: the earlier step whose observation holds the value."""
    pattern: str | None = None
    """``extract``: a regular expression with one group that captures the value."""
    value: Any = None
    """``constant``: the value."""
    depends_on: tuple[int, ...] = ()
    """``lm``: earlier steps whose observations the value draws on (words found there, not in the inputs)."""
    found_in: tuple[int, ...] = ()
    """``lm``: earlier steps whose observation contains the value verbatim in some run."""
    completed: bool = False
    """``input``: counted over every completed run of the pattern, right answer or wrong (the successful
    runs alone left the argument to an LM step; see ``analyze(arg_evidence=)``)."""

    def describe(self, step_names: Sequence[str] = ()) -> str:
        """One line for reports, e.g. ``copied from input 'question' (5/5 runs)``."""

        def name(index: int | None) -> str:
            if index is None:
                return "?"
            label = step_names[index] if index < len(step_names) else "step"
            return f"step {index + 1} ({label})"

        near = f", {self.near} more a near copy" if self.near else ""
        of = " of the completed runs" if self.completed else " runs"
        runs = f"({self.support}/{self.total}{of}{near})"
        if self.kind == "input":
            how = {None: "copied", "strip": "copied (whitespace trimmed)", "lower": "copied (normalised)"}
            return f"{how[self.transform]} from input {self.field!r} {runs}"
        if self.kind == "constant":
            return f"constant {json.dumps(self.value, ensure_ascii=False)} {runs}"
        if self.kind == "observation":
            return f"the whole observation of {name(self.step)} {runs}"
        if self.kind == "extract":
            return f"extracted from the observation of {name(self.step)} by /{self.pattern}/ {runs}"
        parts = ["needs an LM step"]
        if self.depends_on:
            parts.append("reading " + ", ".join(name(i) for i in self.depends_on))
        else:
            parts.append("from the inputs alone")
        if self.found_in:
            parts.append(
                "(found in " + ", ".join(name(i) for i in self.found_in) + " but no rule extracts it)"
            )
        return " ".join(parts)


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


# -- helpers ---------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _canonical(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _strip(text: str) -> str:
    return " ".join(text.split())


def _lower(text: str) -> str:
    return _strip(text).casefold()


def _words(text: str) -> set[str]:
    return {w for w in (m.casefold() for m in _WORD.findall(text)) if w not in _STOPWORDS}


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


def learn_extractor(pairs: Sequence[tuple[str, Sequence[str]]]) -> str | None:
    r"""A regular expression whose group finds each expected value in its text, or ``None``.

    Each pair is a text and the values expected from it, in order: one value is found with
    ``re.search``, several with ``re.findall``. The expression is built from the context the values
    share in every text (the common end of what precedes them, the common start of what follows) and
    the narrowest value shape that fits, and is kept only if it reproduces every expected value.

    Example:
        >>> learn_extractor([("widget: 3 units in stock", ["3"]), ("gadget: 14 units in stock", ["14"])])
        ': (-?\\d+(?:[.,]\\d+)*) units in stock'
    """
    if not pairs or any(not values or any(not v for v in values) for _, values in pairs):
        return None
    lefts: list[str] = []
    rights: list[str] = []
    for text, values in pairs:
        position = 0
        for value in values:
            found = text.find(value, position)
            if found < 0:
                return None
            lefts.append(text[:found])
            rights.append(text[found + len(value) :])
            position = found + len(value)
    left = _whole_words_left(_common_suffix(lefts)[-_MAX_CONTEXT:], lefts)
    right = _whole_words_right(_common_prefix(rights)[:_MAX_CONTEXT], rights)
    suffix = "$" if all(not s for s in rights) else _escape(right)
    if all(not s for s in lefts):
        prefixes = ["^"]
    else:
        # Words that open the shared context may be the sample's, not the format's ("gadget: " when
        # every recorded run asked about gadgets): the expression without them is tried first, and
        # wins if it still reproduces every value.
        general = re.sub(r"^\w+", "", left)
        prefixes = list(dict.fromkeys([_escape(general), _escape(left)]))
    for prefix in prefixes:
        for value_class in _VALUE_CLASSES:
            if value_class.endswith("+?") and not suffix:
                continue  # a lazy match needs something after it to stop at
            pattern = f"{prefix}({value_class}){suffix}"
            if _reproduces(pattern, pairs):
                return pattern
    return None


_SPECIAL = frozenset(".^$*+?{}[]\\|()#")
_CONTROL = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(text: str) -> str:
    """Like ``re.escape``, but spaces stay spaces: the expression is shown to people in reports."""
    return "".join("\\" + c if c in _SPECIAL else _CONTROL.get(c, c) for c in text)


def _whole_words_left(context: str, texts: Sequence[str]) -> str:
    # "dget: " shared by "widget: " and "gadget: " is the tail of different words: keep ": ".
    cut = any(len(t) > len(context) and _is_word(t[-len(context) - 1]) for t in texts)
    return re.sub(r"^\w+", "", context) if cut and context and _is_word(context[0]) else context


def _whole_words_right(context: str, texts: Sequence[str]) -> str:
    cut = any(len(t) > len(context) and _is_word(t[len(context)]) for t in texts)
    return re.sub(r"\w+$", "", context) if cut and context and _is_word(context[-1]) else context


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _common_suffix(texts: Sequence[str]) -> str:
    reversed_prefix = _common_prefix([t[::-1] for t in texts])
    return reversed_prefix[::-1]


def _common_prefix(texts: Sequence[str]) -> str:
    if not texts:
        return ""
    first = min(texts)
    last = max(texts)
    size = 0
    while size < len(first) and first[size] == last[size]:
        size += 1
    return first[:size]


def _reproduces(pattern: str, pairs: Sequence[tuple[str, Sequence[str]]]) -> bool:
    compiled = re.compile(pattern)
    for text, values in pairs:
        if len(values) == 1:
            found = compiled.search(text)
            if found is None or found.group(1) != values[0]:
                return False
        elif compiled.findall(text) != list(values):
            return False
    return True


# -- derivations -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Case:
    """One run's evidence for one argument: the run's inputs, earlier observations and the values."""

    inputs: Mapping[str, Any]
    observations: Sequence[str]
    values: Sequence[Any]


NEAR_COPY_RECALL = 0.6
"""Share of the input's content words (stopwords ignored) a near copy keeps (unless it holds the whole input)."""
NEAR_COPY_PRECISION = 0.5
"""Share of a near copy's content words that come from the input."""


def _near_copy(value: Any, source: Any) -> bool:
    if not isinstance(value, str) or not isinstance(source, str):
        return False
    want = _words(source)
    if not want:
        return False
    # The whole input verbatim, with anything around it: the model copied it and kept on writing.
    if _lower(source) in _lower(value):
        return True
    got = _words(value)
    if not got:
        return False
    shared = len(got & want)
    return shared / len(want) >= NEAR_COPY_RECALL and shared / len(got) >= NEAR_COPY_PRECISION


def _input_rule(cases: Sequence[_Case], need: int, *, near_counts: bool = False) -> Derivation | None:
    names = sorted({k for case in cases for k in case.inputs})
    transforms: tuple[tuple[Transform | None, Callable[[str], str]], ...] = (
        (None, lambda s: s),
        ("strip", _strip),
        ("lower", _lower),
    )
    # Near copies only top up exact ones: a small model searching a truncated question (or the question
    # with a guess appended) would have searched well with the question itself, but a value that is only
    # ever a fragment of the input ("gadget" out of "how many gadgets?") is an extraction, not a copy.
    best: Derivation | None = None
    for transform, fn in transforms:
        for name in names:
            support = near = 0
            for case in cases:
                source = case.inputs.get(name)
                if source is None:
                    continue
                if transform is None:
                    hit = all(v == source for v in case.values)
                else:
                    hit = isinstance(source, str) and all(
                        isinstance(v, str) and v == fn(source) for v in case.values
                    )
                support += hit
                near += not hit and all(_near_copy(v, source) for v in case.values)
            if support >= need:
                return Derivation("input", support, len(cases), field=name, transform=transform)
            enough = near_counts or support >= near
            if support + near >= need and enough and (best is None or support > best.support):
                best = Derivation("input", support, len(cases), field=name, transform=transform, near=near)
    return best


def _constant_rule(cases: Sequence[_Case], need: int, min_runs: int) -> Derivation | None:
    counts = Counter(_canonical(v) for case in cases for v in case.values)
    if not counts:
        return None
    top, _ = counts.most_common(1)[0]
    value = json.loads(top)
    matching = [c for c in cases if all(_canonical(v) == top for v in c.values)]
    # A value that never varies only means something if the inputs did, and if it does not show up in
    # them or in a tool's result: two questions about gadgets both calling lookup("gadget") is not a
    # constant, it is a coincidence of the sample.
    distinct_inputs = {_canonical(c.inputs) for c in matching}
    text = _text(value).strip().casefold()
    seen = any(
        text and text in _text(source).casefold()
        for c in matching
        for source in (*c.inputs.values(), *c.observations)
    )
    if len(matching) >= max(need, min_runs) and len(distinct_inputs) >= 2 and not seen:
        return Derivation("constant", len(matching), len(cases), value=value)
    return None


def _observation_rule(cases: Sequence[_Case], need: int, min_runs: int) -> Derivation | None:
    steps = min((len(c.observations) for c in cases), default=0)
    for step in reversed(range(steps)):
        support = sum(all(_text(v).strip() == c.observations[step].strip() for v in c.values) for c in cases)
        if support >= max(need, min_runs):
            return Derivation("observation", support, len(cases), step=step)
    return None


def _extract_rule(cases: Sequence[_Case], need: int, min_runs: int) -> Derivation | None:
    steps = min((len(c.observations) for c in cases), default=0)
    for step in reversed(range(steps)):
        pairs = [
            (c.observations[step], [_text(v) for v in c.values])
            for c in cases
            if all(isinstance(v, str | int | float) and _text(v) in c.observations[step] for v in c.values)
        ]
        if len(pairs) < max(need, min_runs):
            continue
        pattern = learn_extractor(pairs)
        if pattern is not None:
            return Derivation("extract", len(pairs), len(cases), step=step, pattern=pattern)
    return None


def _lm_rule(cases: Sequence[_Case]) -> Derivation:
    depends: set[int] = set()
    found: set[int] = set()
    for case in cases:
        input_words: set[str] = set()
        for value in case.inputs.values():
            input_words |= _words(_text(value))
        for value in case.values:
            text = _text(value)
            novel = _words(text) - input_words
            for step, observation in enumerate(case.observations):
                if novel & _words(observation):
                    depends.add(step)
                if text and text in observation:
                    found.add(step)
    return Derivation("lm", 0, len(cases), depends_on=tuple(sorted(depends)), found_in=tuple(sorted(found)))


def _derive(cases: Sequence[_Case], agreement: float, min_runs: int) -> Derivation:
    need = max(1, math.ceil(agreement * len(cases)))
    return (
        _input_rule(cases, need)
        or _constant_rule(cases, need, min_runs)
        or _observation_rule(cases, need, min_runs)
        or _extract_rule(cases, need, min_runs)
        or _lm_rule(cases)
    )


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
