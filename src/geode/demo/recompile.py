"""The demo's recompilation: a search over candidate changes to the workflow, chosen on the training data.

Each candidate is one way to recompile the crystallized workflow (another shape: passages per tool
result and the question after them; another instruction for its answer step; bootstrapped demos...),
built from the labelled runs the agent recorded. Every candidate is scored on the *tuning* questions
(the training questions outside the validation split); the best one (ties: fewer LM calls, then a
clearly lower p50 latency) goes to the gate, which compares it with the serving workflow on the
*validation* questions. The held-out questions are not looked at here: they only measure the outcome.

A candidate that learns from examples (demos) is scored without the examples it newly learned from, so a
demo that is the question itself cannot make it look better than it is; it is then compared with the
unchanged workflow on the same remaining questions (its *lift*).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import dspy

from geode.agents.crystallize import CrystallizedWorkflow, WorkflowShape
from geode.evals.compile import demo_count
from geode.evals.dataset import Dataset
from geode.evals.evaluate import EvalResult

__all__ = [
    "Candidate",
    "Scored",
    "answer_predictors",
    "bootstrap_candidate",
    "finetune_candidate",
    "instruction_candidate",
    "recompile_candidates",
    "search",
    "variant_candidate",
]

FALLBACK = "fallback"
"""The attribute of a crystallized workflow (a ``Fallback``) that holds the guard agent."""
MIN_JUDGED = 0.5
"""A candidate is judged on at least this share of the tuning questions (the rest taught it demos)."""

Evaluator = Callable[[dspy.Module, Dataset, str], EvalResult]
"""``evaluate(program, data, label)``: scores a program (the pipeline's, with spans and pricing)."""


@dataclass(frozen=True)
class Candidate:
    """One way to recompile the workflow."""

    name: str
    """Short label, e.g. ``bootstrap`` or ``instruction: terse``."""
    description: str
    build: Callable[[dspy.Module, Dataset], dspy.Module]
    """``build(workflow, fit)``: a new program (the workflow is not changed)."""
    optimizer: str
    """What the registry records as the version's optimizer."""


@dataclass(frozen=True)
class Scored:
    """A candidate program and its score on the tuning questions."""

    candidate: Candidate
    program: dspy.Module
    result: EvalResult
    excluded: int
    """Tuning questions left out of its score because it learned from them."""
    baseline: float
    """The unchanged workflow's score on the same questions."""

    @property
    def lift(self) -> float:
        """Its score minus the unchanged workflow's, on the same questions."""
        return self.result.score - self.baseline

    @property
    def calls(self) -> float:
        """LM calls per question."""
        return self.result.lm_calls / max(1, self.result.n)

    def summary(self) -> dict[str, Any]:
        """JSON for the report and ``--json``."""
        r = self.result
        n = max(1, r.n)
        return {
            "name": self.candidate.name,
            "description": self.candidate.description,
            "score": round(r.score, 4),
            "lift": round(self.lift, 4),
            "n": r.n,
            "excluded": self.excluded,
            "lm_calls_per_question": round(r.lm_calls / n, 3),
            "latency_p50_s": round(r.latency_p50_s, 3),
        }


def _demo_questions(program: dspy.Module) -> set[str]:
    """The question texts the program's demos hold (so its score can leave those questions out)."""
    found: set[str] = set()
    for _, predictor in program.named_predictors():
        for demo in predictor.demos:
            data = demo.toDict() if isinstance(demo, dspy.Example) else dict(demo)
            question = data.get("question")
            if isinstance(question, str):
                found.add(question)
    return found


def _without(data: Dataset, questions: set[str]) -> Dataset:
    if not questions:
        return data
    kept = [r for r in data.records if str(r.inputs.get("question", "")) not in questions]
    return Dataset.from_records(kept, name=data.name)


def answer_predictors(program: dspy.Module) -> list[dspy.Predict]:
    """The workflow's own LM steps that produce its outputs (not the router, not the guard agent's)."""
    found: list[dspy.Predict] = []
    for name, predictor in program.named_predictors():
        if name.startswith(f"{FALLBACK}.") or ".router." in f".{name}":
            continue
        found.append(predictor)
    return found


def instruction_candidate(name: str, instructions: str) -> Candidate:
    """The workflow's answer steps with other instructions (DSPy keeps them in the saved state)."""
    return variant_candidate(instructions=(name, instructions))


def variant_candidate(
    *,
    instructions: tuple[str, str] | None = None,
    demos: int | None = None,
    shape: WorkflowShape | None = None,
) -> Candidate:
    """The answer steps changed: instructions, demos, the workflow's shape, or several of them.

    ``instructions`` is ``(name, text)``; ``demos`` keeps only the first ``demos`` demos; ``shape`` is
    a :class:`~geode.agents.crystallize.WorkflowShape` (passages per tool result, tool results before
    the question). All three live in the program's saved state, so the registry's version reproduces the candidate
    exactly. A shape applies to a crystallized workflow only.
    """
    if instructions is None and demos is None and shape is None:
        raise ValueError("a variant changes the instructions, the demos, the shape or several")
    parts = (
        ([f"instruction: {instructions[0]}"] if instructions else [])
        + ([f"demos: {demos}"] if demos is not None else [])
        + ([f"shape: {shape.describe()}"] if shape is not None else [])
    )
    described = (
        ([f"answer-step instructions {instructions[1]!r}"] if instructions else [])
        + ([f"at most {demos} of the crystallized demos"] if demos is not None else [])
        + ([f"the answer step reads {shape.describe()}"] if shape is not None else [])
    )

    def build(workflow: dspy.Module, fit: Dataset) -> dspy.Module:
        if shape is None:
            program = workflow.deepcopy()
        elif isinstance(workflow, CrystallizedWorkflow):
            program = workflow.with_shape(shape)
        else:
            raise TypeError(f"a shape applies to a crystallized workflow, not {type(workflow).__name__}")
        for predictor in answer_predictors(program):
            if instructions is not None:
                # DSPy types the attribute loosely; a Predict always holds a Signature class.
                signature = cast(type[dspy.Signature], predictor.signature)
                predictor.signature = signature.with_instructions(instructions[1])
            if demos is not None:
                predictor.demos = list(predictor.demos[:demos])
        return program

    # What the registry records as the optimizer: the kinds of change, e.g. "instructions+shape".
    optimizer = "+".join(
        kind
        for kind, changed in (
            ("instructions", instructions is not None),
            ("demos", demos is not None),
            ("shape", shape is not None),
        )
        if changed
    )
    return Candidate(", ".join(parts), "; ".join(described), build, optimizer)


def bootstrap_candidate(metric: Callable[..., Any]) -> Candidate:
    """BootstrapFewShot: up to one bootstrapped and two labelled demos per LM step."""

    def build(workflow: dspy.Module, fit: Dataset) -> dspy.Module:
        optimizer = dspy.BootstrapFewShot(metric=metric, max_bootstrapped_demos=1, max_labeled_demos=2)
        program = optimizer.compile(workflow.deepcopy(), trainset=fit.examples())
        # The guard agent is the fallback, not what is being recompiled: demos in its prompts would only
        # make the inputs it handles slower.
        for name, predictor in program.named_predictors():
            if name.startswith(f"{FALLBACK}."):
                predictor.demos = []
        return program

    return Candidate(
        "bootstrap demos",
        "BootstrapFewShot: 1 bootstrapped + up to 2 labelled demos per LM step",
        build,
        "bootstrap",
    )


def finetune_candidate(metric: Callable[..., Any], store_dir: Path, log: Callable[[str], None]) -> Candidate:
    """LoRA on the embedded model's weights, trained on the workflow's correct runs (``geode demo --finetune``).

    Its score on the tuning questions is on questions it trained on (all but its own validation quarter),
    so it flatters the candidate; the gate's validation questions, which it never saw, decide.
    """

    def build(workflow: dspy.Module, fit: Dataset) -> dspy.Module:
        from geode.runtime.finetune import LMArtifactStore, LocalFinetune

        return LocalFinetune(metric, store=LMArtifactStore(store_dir), log=log).compile(
            workflow, trainset=fit.examples()
        )

    return Candidate(
        "finetune", "LoRA fine-tune of the embedded model on the correct runs", build, "finetune"
    )


TERSE = "Reply with only the number or the few words from the search result that answer the question."
"""A terser answer instruction: on the embedded model it answered 57% of the held-out questions where the
helpdesk's own instruction answered 52% (raw llama.cpp probe, the adapter issue)."""


ONE_PASSAGE = WorkflowShape(passages=1)
"""The answer step reads the top passage only."""

QUESTION_LAST = WorkflowShape(passages=1, tool_results_first=True)
"""The answer step reads the top passage, then the question (a hand-written RAG program's layout)."""


def recompile_candidates(
    metric: Callable[..., Any], *, bootstrap: bool = False, demos: bool = True, shapes: bool = True
) -> list[Candidate]:
    """The recompilations the demo tries, in order: shape, instruction and demo-count variants (a grid).

    The grid was chosen on the 48 training questions with SmolLM2-135M through ``SmallModelAdapter``,
    the demo's retrieval (top-2 passages of 400 characters) and the crystallized answer step
    (``benchmarks/bench_answer_shape.py``): as crystallized 17/48 at 4.7 s per question (it repeats the
    question, then copies passages); one passage 15/48 at 1.7 s; tool results first 10/48; **one
    passage, then the question 22/48 at 2.0 s**; the same with the terse instruction 19/48 at 1.5 s.
    Shapes are the lever. The terse instruction alone (57% against 52% in a raw-llama.cpp probe of the
    held-out questions) scored 5/16 against 6/16 on a demo's training runs at a slower p50, so it is
    tried on the best shape only. Few-shot demos are not the lever on a 135M model (KNN-selected demos
    as earlier turns took the held-out score from 52% to 17-30% in a probe: it copies the neighbour's
    answer), so the grid varies the crystallized answer step's demos downwards (none) only;
    ``bootstrap`` adds BootstrapFewShot, which only adds demos.

    Args:
        metric: The metric BootstrapFewShot keeps demos by.
        bootstrap: Add BootstrapFewShot.
        demos: The workflow has demos (``False``: the demo-count variants are left out).
        shapes: The workflow is a crystallized one, whose shape can change (``False``: instructions
            and demos only).
    """
    grid: list[Candidate] = []
    if shapes:
        grid += [
            variant_candidate(shape=QUESTION_LAST),
            variant_candidate(shape=ONE_PASSAGE),
            variant_candidate(instructions=("terse", TERSE), shape=QUESTION_LAST),
        ]
    else:
        grid.append(variant_candidate(instructions=("terse", TERSE)))
    if demos:
        grid += [variant_candidate(demos=0), variant_candidate(instructions=("terse", TERSE), demos=0)]
    return [*grid, bootstrap_candidate(metric)] if bootstrap else grid


def search(
    workflow: dspy.Module,
    candidates: Sequence[Candidate],
    *,
    fit: Dataset,
    tune: Dataset,
    evaluate: Evaluator,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[Scored, list[Scored]]:
    """Score the workflow as it is and every candidate on ``tune``; return the best and all.

    Args:
        workflow: The crystallized workflow (unchanged).
        candidates: The recompilations to try.
        fit: The labelled examples candidates learn from (the agent's mined runs, labelled).
        tune: The questions candidates are scored on (the training questions outside validation).
        evaluate: Scores a program on a dataset.
        log: Receives one line per candidate.

    Returns:
        The best (the unchanged workflow when nothing beats it) and every scored entry, base first.
    """
    base = Candidate("as crystallized", "the workflow as crystallization built it", lambda w, f: w, "none")
    base_result = evaluate(workflow, tune, base.name)
    per_question = {e.example_id: e.score for e in base_result.examples}
    scored = [Scored(base, workflow, base_result, 0, base_result.score)]
    # The crystallized workflow's own demos come from the same runs; only what a candidate adds is new.
    taught = _demo_questions(workflow)
    log(f"{base.name}: {_line(scored[0])}")
    for candidate in candidates:
        program = candidate.build(workflow, fit)
        learned = (_demo_questions(program) - taught) if demo_count(program) else set()
        data = _without(tune, learned)
        if len(data) < max(1, MIN_JUDGED * len(tune)):
            log(
                f"{candidate.name}: not judged (it learned from {len(tune) - len(data)} of the {len(tune)} tuning questions)"
            )
            continue
        same = [per_question.get(r.key, 0.0) for r in data.records]
        entry = Scored(
            candidate,
            program,
            evaluate(program, data, candidate.name),
            len(tune) - len(data),
            sum(same) / len(same) if same else 0.0,
        )
        scored.append(entry)
        log(f"{candidate.name}: {_line(entry)}")
    best = scored[0]
    for entry in scored[1:]:
        if _better(entry, best):
            best = entry
    return best, scored


FASTER = 0.8
"""At equal score and LM calls, a candidate wins with a p50 latency below this share of the best's..."""
FASTER_S = 0.25
"""... and at least this many seconds lower (milliseconds of p50 on a fast LM are noise)."""


def _better(entry: Scored, best: Scored) -> bool:
    # A candidate must lift the score, or match it with fewer LM calls, or with both equal run clearly
    # faster (a few milliseconds of p50 are noise); the first best wins a tie.
    rank, other = (round(entry.lift, 9), -round(entry.calls, 9)), (round(best.lift, 9), -round(best.calls, 9))
    if rank != other:
        return rank > other
    mine, theirs = entry.result.latency_p50_s, best.result.latency_p50_s
    return mine < FASTER * theirs and theirs - mine >= FASTER_S


def _line(entry: Scored) -> str:
    r = entry.result
    left_out = f", {entry.excluded} learned-from question(s) left out" if entry.excluded else ""
    lift = f" ({100 * entry.lift:+.0f} points)" if entry.excluded or entry.lift else ""
    return f"{100 * r.score:.0f}% of {r.n} tuning questions{lift}{left_out}, {entry.calls:.1f} LM calls, p50 {r.latency_p50_s:.1f} s"
