"""Recompilation: run a DSPy optimizer on the train split, then score baseline and candidate on held-out data.

:func:`compile_program` never optimizes without eval data: the dataset is split deterministically
(:meth:`~geode.evals.dataset.Dataset.split`) and refused when either side is too small. The optimizer
sees only the train split (MIPROv2 and GEPA get a validation part carved out of it); the held-out split
is used once per program, at the end, to compare the baseline with the candidate on the same examples.

Runs in the caller's DSPy context, like :func:`~geode.evals.evaluate.evaluate`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast, get_args

import dspy

from geode.errors import ConfigError
from geode.evals.dataset import MIN_HELDOUT, MIN_TRAIN, Dataset
from geode.evals.eval_runner import _LMCallCounter
from geode.evals.evaluate import EvalOptions, EvalResult, Pricing, evaluate
from geode.evals.metrics import is_feedback_metric, metric_name, with_feedback

__all__ = [
    "AutoBudget",
    "CompileOptions",
    "CompileResult",
    "OptimizerName",
    "OptimizerSettings",
    "compile_program",
    "demo_count",
]

logger = logging.getLogger(__name__)

OptimizerName = Literal["bootstrap", "mipro", "gepa", "finetune"]
AutoBudget = Literal["light", "medium", "heavy"]
Finetuner = Callable[[dspy.Module, Sequence[dspy.Example], Sequence[dspy.Example] | None], dspy.Module]
"""``finetune(student, trainset, valset)``: weight-level recompilation (the runtime's ``LocalFinetune``)."""


@dataclass(frozen=True)
class OptimizerSettings:
    """Which optimizer ran, with what budget (recorded on the program version)."""

    name: OptimizerName
    auto: AutoBudget | None = None
    """MIPROv2 / GEPA budget; ``None`` for bootstrap."""
    max_bootstrapped_demos: int = 4
    max_labeled_demos: int = 4
    seed: int = 0
    num_threads: int = 1
    reflection_model: str | None = None
    """GEPA's reflection LM."""
    train_size: int = 0
    val_size: int = 0
    """Examples carved out of the train split for MIPROv2 / GEPA validation (0: none)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class CompileResult:
    """The outcome of one recompilation: both programs, scored on the same held-out examples."""

    program: str
    optimizer: OptimizerSettings
    dataset_id: str
    dataset_name: str | None
    metric: str
    heldout_fraction: float
    split_seed: int
    train_ids: tuple[str, ...]
    heldout_ids: tuple[str, ...]
    baseline: EvalResult
    candidate: EvalResult
    compile_seconds: float
    compile_lm_calls: int
    compile_prompt_tokens: int
    compile_completion_tokens: int
    baseline_program: dspy.Module = field(repr=False, compare=False)
    candidate_program: dspy.Module = field(repr=False, compare=False)

    @property
    def delta(self) -> float:
        """Candidate minus baseline score on the held-out split (a fraction; x100 for points)."""
        return self.candidate.score - self.baseline.score

    def passes_gate(self, margin: float) -> bool:
        """Whether the candidate beats the baseline by at least ``margin`` (0.05 = 5 points)."""
        return self.delta + 1e-9 >= margin

    @property
    def candidate_demos(self) -> int:
        """Demos in the candidate program, over all predictors."""
        return demo_count(self.candidate_program)

    def to_dict(self, *, examples: bool = False) -> dict[str, Any]:
        """Plain JSON-able data (per-example results optional)."""
        return {
            "program": self.program,
            "optimizer": self.optimizer.to_dict(),
            "dataset_id": self.dataset_id,
            "dataset_name": self.dataset_name,
            "metric": self.metric,
            "heldout_fraction": self.heldout_fraction,
            "split_seed": self.split_seed,
            "train_size": len(self.train_ids),
            "heldout_size": len(self.heldout_ids),
            "baseline": self.baseline.to_dict(examples=examples),
            "candidate": self.candidate.to_dict(examples=examples),
            "delta": self.delta,
            "candidate_demos": self.candidate_demos,
            "compile_seconds": self.compile_seconds,
            "compile_lm_calls": self.compile_lm_calls,
            "compile_prompt_tokens": self.compile_prompt_tokens,
            "compile_completion_tokens": self.compile_completion_tokens,
        }


def demo_count(program: dspy.Module) -> int:
    """Total few-shot demos across a program's predictors."""
    return sum(len(getattr(p, "demos", []) or []) for _, p in program.named_predictors())


def _validation_split(train: Dataset, seed: int, fraction: float = 0.5) -> tuple[Dataset, Dataset | None]:
    # MIPROv2 and GEPA choose between candidates on a validation set, the fine-tune its epoch; carving it
    # from the train split keeps the held-out split untouched until the final comparison.
    if len(train) < 4:
        return train, None
    parts = train.split(heldout_fraction=fraction, seed=seed + 1)
    return parts.train, parts.heldout


def _run_optimizer(
    settings: OptimizerSettings,
    student: dspy.Module,
    metric: Callable[..., Any],
    train: Sequence[dspy.Example],
    val: Sequence[dspy.Example] | None,
    reflection_lm: dspy.BaseLM | None,
    finetune: Finetuner | None = None,
) -> dspy.Module:
    if settings.name == "finetune":
        if finetune is None:
            raise ConfigError(
                "the finetune optimizer trains the embedded model's weights; this command cannot",
                hint="use geode compile --optimizer finetune (with the embedded LM)",
            )
        return finetune(student, train, val)
    if settings.name == "bootstrap":
        optimizer = dspy.BootstrapFewShot(
            metric=metric,
            max_bootstrapped_demos=settings.max_bootstrapped_demos,
            max_labeled_demos=settings.max_labeled_demos,
            max_rounds=1,
            max_errors=len(train) + 1,
        )
        return optimizer.compile(student, trainset=list(train))
    if settings.name == "mipro":
        mipro = dspy.MIPROv2(
            metric=metric,
            auto=settings.auto or "light",
            max_bootstrapped_demos=settings.max_bootstrapped_demos,
            max_labeled_demos=settings.max_labeled_demos,
            num_threads=settings.num_threads,
            max_errors=len(train) + len(val or ()) + 1,
            seed=settings.seed,
            verbose=False,
            track_stats=False,
        )
        valset = list(val) if val else None
        size = len(valset) if valset else max(1, int(len(train) * 0.8))
        return mipro.compile(
            student, trainset=list(train), valset=valset, minibatch_size=max(1, min(35, size))
        )
    if settings.name == "gepa":
        lm = reflection_lm or dspy.settings.lm
        if lm is None:
            raise ConfigError(
                "GEPA needs a reflection LM", hint="pass --reflection-lm, or run under a runtime LM"
            )
        gepa = dspy.GEPA(
            metric=metric if is_feedback_metric(metric) else with_feedback(metric),
            auto=settings.auto or "light",
            reflection_lm=cast(Any, lm),
            num_threads=settings.num_threads,
            seed=settings.seed,
            track_stats=False,
        )
        return gepa.compile(student, trainset=list(train), valset=list(val) if val else None)
    raise ConfigError(
        f"unknown optimizer {settings.name!r}", hint=f"choose one of {', '.join(get_args(OptimizerName))}"
    )


@dataclass(frozen=True)
class CompileOptions:
    """How :func:`compile_program` optimizes and scores (the Python API and ``geode compile`` share it).

    Example:
        >>> CompileOptions(optimizer="mipro", auto="medium", evaluation=EvalOptions(num_threads=4)).auto
        'medium'
    """

    optimizer: OptimizerName = "bootstrap"
    """``bootstrap`` (BootstrapFewShot), ``mipro`` (MIPROv2), ``gepa`` (GEPA) or ``finetune``."""
    auto: AutoBudget = "light"
    """MIPROv2 / GEPA budget."""
    heldout_fraction: float = 0.3
    """Share of the dataset held out for the final comparison."""
    seed: int = 0
    """Split and optimizer seed."""
    max_bootstrapped_demos: int = 4
    """Demos the optimizer may bootstrap per predictor."""
    max_labeled_demos: int = 4
    """Labelled demos it may add per predictor."""
    reflection_lm: dspy.BaseLM | None = None
    """GEPA's reflection LM; default: the context LM."""
    version_of: Callable[[dspy.Module], str] | None = None
    """Computes a program's version id (the runtime passes its registry's), stamped on the evaluation
    spans of both programs."""
    min_train: int = MIN_TRAIN
    """Refuse with fewer training examples."""
    min_heldout: int = MIN_HELDOUT
    """Refuse with fewer held-out examples."""
    log: Callable[[str], None] | None = None
    """Receives one-line progress messages (the CLI prints them)."""
    finetune: Finetuner | None = None
    """Runs ``optimizer="finetune"`` (fine-tunes the LM's weights on the train split, with a validation
    part carved out of it for early stopping); the CLI passes the runtime's."""
    evaluation: EvalOptions = field(default_factory=EvalOptions)
    """How both programs are scored: ``program_name`` (spans and results), ``num_threads`` (also the
    optimizer's), ``pricing``, ``show_progress``, ``tracer``. The split, version and tags of each
    evaluation are compile's own (``heldout``; each program's version; ``baseline``/``candidate``)."""


def compile_program(
    program: dspy.Module,
    dataset: Dataset,
    metric: Callable[..., Any],
    options: CompileOptions | None = None,
    *,
    optimizer: OptimizerName = "bootstrap",
    auto: AutoBudget = "light",
    heldout_fraction: float = 0.3,
    seed: int = 0,
    num_threads: int = 1,
    max_bootstrapped_demos: int = 4,
    max_labeled_demos: int = 4,
    reflection_lm: dspy.BaseLM | None = None,
    program_name: str | None = None,
    version_of: Callable[[dspy.Module], str] | None = None,
    min_train: int = MIN_TRAIN,
    min_heldout: int = MIN_HELDOUT,
    pricing: Pricing | None = None,
    show_progress: bool = False,
    tracer: Any = None,
    log: Callable[[str], None] | None = None,
    finetune: Finetuner | None = None,
) -> CompileResult:
    """Optimize ``program`` on the train split and score baseline vs candidate on the held-out split.

    Give either ``options`` or the keyword arguments, which build the same :class:`CompileOptions`.

    Args:
        program: The baseline program (left unchanged; the candidate is a copy).
        dataset: Labelled examples; split by :meth:`Dataset.split` with ``heldout_fraction`` and ``seed``.
        metric: A DSPy metric (for GEPA a plain one is wrapped with :func:`~geode.evals.metrics.with_feedback`).
        options: How to optimize and score (each field is documented on :class:`CompileOptions`).
        optimizer: ``bootstrap``, ``mipro``, ``gepa`` or ``finetune``.
        auto: MIPROv2 / GEPA budget.
        heldout_fraction: Share of the dataset held out for the final comparison.
        seed: Split and optimizer seed.
        num_threads: Parallel evaluation threads (1 for the embedded model).
        max_bootstrapped_demos: Demos the optimizer may bootstrap per predictor.
        max_labeled_demos: Labelled demos it may add per predictor.
        reflection_lm: GEPA's reflection LM; default: the context LM.
        program_name: Name for spans and results.
        version_of: Computes a program's version id, stamped on both programs' evaluation spans.
        min_train: Refuse with fewer training examples.
        min_heldout: Refuse with fewer held-out examples.
        pricing: Token prices for the evaluations' cost.
        show_progress: Progress bars for the evaluations.
        tracer: OpenTelemetry tracer for evaluation example spans.
        log: Receives one-line progress messages (the CLI prints them).
        finetune: Runs ``optimizer="finetune"`` (:attr:`CompileOptions.finetune`).

    Raises:
        DatasetError: The dataset is empty or too small to split into train and held-out data.
        ConfigError: Unknown optimizer, or GEPA without a reflection LM.
        TypeError: Both ``options`` and keyword arguments were given.
    """
    keywords = CompileOptions(
        optimizer=optimizer,
        auto=auto,
        heldout_fraction=heldout_fraction,
        seed=seed,
        max_bootstrapped_demos=max_bootstrapped_demos,
        max_labeled_demos=max_labeled_demos,
        reflection_lm=reflection_lm,
        version_of=version_of,
        min_train=min_train,
        min_heldout=min_heldout,
        log=log,
        finetune=finetune,
        evaluation=EvalOptions(
            program_name=program_name,
            num_threads=num_threads,
            pricing=pricing,
            show_progress=show_progress,
            tracer=tracer,
        ),
    )
    if options is not None and keywords != CompileOptions():
        raise TypeError("compile_program takes options or keyword arguments, not both")
    return _compile(program, dataset, metric, options or keywords)


def _optimizer_settings(options: CompileOptions, fit: Dataset, val: Dataset | None) -> OptimizerSettings:
    reflection_model = None
    if options.optimizer == "gepa":
        chosen = options.reflection_lm or dspy.settings.lm
        reflection_model = str(getattr(chosen, "model", "")) or None
    return OptimizerSettings(
        name=options.optimizer,
        auto=options.auto if options.optimizer in ("mipro", "gepa") else None,
        max_bootstrapped_demos=options.max_bootstrapped_demos,
        max_labeled_demos=options.max_labeled_demos,
        seed=options.seed,
        num_threads=options.evaluation.num_threads,
        reflection_model=reflection_model,
        train_size=len(fit),
        val_size=len(val) if val is not None else 0,
    )


@dataclass(frozen=True)
class _Optimized:
    """The candidate program and what optimizing it cost."""

    program: dspy.Module
    seconds: float
    lm_calls: int
    prompt_tokens: int
    completion_tokens: int


def _optimize(
    program: dspy.Module,
    metric: Callable[..., Any],
    settings: OptimizerSettings,
    options: CompileOptions,
    data: tuple[Dataset, Dataset | None],
) -> _Optimized:
    """Run the optimizer on a copy of ``program`` with the train (and validation) data, counting its cost."""
    fit, val = data
    counter = _LMCallCounter()
    t0 = time.perf_counter()
    student = program.deepcopy()
    with (
        dspy.track_usage() as usage,
        dspy.context(callbacks=[*(dspy.settings.get("callbacks") or []), counter]),
    ):
        candidate_program = _run_optimizer(
            settings,
            student,
            metric,
            fit.examples(),
            val.examples() if val is not None else None,
            options.reflection_lm,
            options.finetune,
        )
    seconds = time.perf_counter() - t0
    totals = usage.get_total_tokens()
    return _Optimized(
        program=candidate_program,
        seconds=seconds,
        lm_calls=counter.calls,
        prompt_tokens=sum(int(u.get("prompt_tokens") or 0) for u in totals.values()),
        completion_tokens=sum(int(u.get("completion_tokens") or 0) for u in totals.values()),
    )


def _score(
    program: dspy.Module,
    data: Dataset,
    metric: Callable[..., Any],
    options: CompileOptions,
    *,
    name: str,
    tag: str,
) -> EvalResult:
    """One side of the comparison, scored on the held-out split."""
    version = options.version_of(program) if options.version_of else None
    evaluation = replace(options.evaluation, program_name=name, split="heldout", version=version, tags=(tag,))
    return evaluate(program, data, metric, evaluation)


def _compile(
    program: dspy.Module, dataset: Dataset, metric: Callable[..., Any], options: CompileOptions
) -> CompileResult:
    optimizer = options.optimizer
    if optimizer not in get_args(OptimizerName):
        raise ConfigError(
            f"unknown optimizer {optimizer!r}", hint=f"choose one of {', '.join(get_args(OptimizerName))}"
        )
    say = options.log or (lambda message: logger.info("%s", message))
    dataset.require(1, purpose="compile")
    split = dataset.split(heldout_fraction=options.heldout_fraction, seed=options.seed)
    split.require(min_train=options.min_train, min_heldout=options.min_heldout, purpose="compile")
    name = options.evaluation.program_name or type(program).__name__
    carve = optimizer in ("mipro", "gepa", "finetune")
    # A fine-tune learns from every example it trains on: give it the larger share.
    fraction = 0.25 if optimizer == "finetune" else 0.5
    fit, val = _validation_split(split.train, options.seed, fraction) if carve else (split.train, None)
    settings = _optimizer_settings(options, fit, val)
    m_name = metric_name(metric)

    say(f"baseline: scoring {name} on {len(split.heldout)} held-out examples with {m_name}")
    baseline = _score(program, split.heldout, metric, options, name=name, tag="baseline")
    say(
        f"optimizing with {optimizer}"
        + (f" (auto={options.auto})" if settings.auto else "")
        + f" on {len(fit)} training examples"
        + (f" and {len(val)} validation examples" if val is not None else "")
    )
    optimized = _optimize(program, metric, settings, options, (fit, val))
    say(
        f"candidate: scoring the compiled program ({demo_count(optimized.program)} demos) on the held-out split"
    )
    candidate = _score(optimized.program, split.heldout, metric, options, name=name, tag="candidate")
    return CompileResult(
        program=name,
        optimizer=settings,
        dataset_id=dataset.id,
        dataset_name=dataset.name,
        metric=m_name,
        heldout_fraction=options.heldout_fraction,
        split_seed=options.seed,
        train_ids=tuple(r.key for r in split.train),
        heldout_ids=tuple(r.key for r in split.heldout),
        baseline=baseline,
        candidate=candidate,
        compile_seconds=optimized.seconds,
        compile_lm_calls=optimized.lm_calls,
        compile_prompt_tokens=optimized.prompt_tokens,
        compile_completion_tokens=optimized.completion_tokens,
        baseline_program=program,
        candidate_program=optimized.program,
    )
