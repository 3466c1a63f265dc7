r"""How one tool argument (or agent output) is obtained: the :class:`Derivation` and the rules that find it.

The runs of a pattern are checked for one derivation that explains them, simplest first:

- ``input``: a copy of one of the agent's inputs (exact, whitespace-trimmed, or lower-cased); runs whose
  value is a near copy of it (a truncated question, the question with words appended) count too, as long
  as exact copies are at least as many;
- ``constant``: the same value in every run, although the inputs differ, and found in neither the
  inputs nor the observations (else it is a coincidence of the sample);
- ``observation``: a copy of an earlier step's whole observation;
- ``extract``: a substring of an earlier observation that one learned regular expression finds in
  every run (:func:`~geode.agents.crystallize.extractor.learn_extractor`);
- ``lm``: nothing simpler explains it, so a language-model step has to produce it. The observations it
  reads (``depends_on``) decide how early the workflow can ask for it.

A rule has to hold in at least ``agreement`` of the runs, and (except for input copies) in at least
``min_rule_runs`` runs, so one run's coincidence does not become a workflow step.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from geode.agents.crystallize.extractor import learn_extractor

__all__ = ["Derivation", "DerivationKind", "Transform"]

DerivationKind = Literal["input", "constant", "observation", "extract", "lm"]
Transform = Literal["strip", "lower"]

_WORD = re.compile(r"\w+")
_STOPWORDS = frozenset(
    "a an and are as at be by for from how i in is it many much of on or the this to was what which who with".split()
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
