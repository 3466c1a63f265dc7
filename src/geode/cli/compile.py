"""``geode compile``: recompile a program with a DSPy optimizer and compare it with the baseline."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from geode.cli._common import ALLOW_CACHE_OPTION, LM_OPTION, make_runtime, make_settings
from geode.cli._console import make_console
from geode.cli._learning import (
    METRIC_OPTION,
    REPORT_DIR_OPTION,
    THREADS_OPTION,
    abort,
    auto_budget,
    default_threads,
    eval_summary_table,
    load_data,
    load_metric,
    optimizer_name,
    pricing_for,
    print_health,
    report_dir,
    say,
)
from geode.cli._tables import print_table
from geode.errors import VersionError
from geode.evals.compile import CompileOptions, CompileResult, compile_program
from geode.evals.dataset import MIN_HELDOUT, MIN_TRAIN
from geode.evals.evaluate import EvalOptions
from geode.evals.report import write_compile_report
from geode.runtime.registry import ProgramRegistry, Score, program_version

if TYPE_CHECKING:
    import dspy

    from geode.cli._finetune import FinetuneRun
    from geode.runtime import Runtime
    from geode.runtime.registry import ServedProgram

__all__ = ["register", "save_versions"]

_TRAINSET = typer.Option(
    ..., "--trainset", "-d", help="Labelled dataset (JSON Lines); split into train and held-out examples."
)


def save_versions(
    registry: ProgramRegistry,
    name: str,
    result: CompileResult,
    *,
    baseline_is_base: bool = False,
    lm_artifact: str | None = None,
) -> tuple[str, str]:
    """Store baseline and candidate with their held-out scores; returns their version ids.

    ``lm_artifact``: the fine-tuned weights the candidate runs on (``--optimizer finetune``).
    """
    baseline = registry.save(
        name,
        result.baseline_program,
        scores=[Score.heldout(result.baseline, source_dataset_id=result.dataset_id)],
        note="the base program, as defined in code" if baseline_is_base else None,
    )
    candidate = registry.save(
        name,
        result.candidate_program,
        parent=baseline.version,
        dataset_id=result.dataset_id,
        metric=result.metric,
        scores=[Score.heldout(result.candidate, source_dataset_id=result.dataset_id)],
        optimizer=result.optimizer.name,
        optimizer_settings={**result.optimizer.to_dict(), "model": result.candidate.model},
        lm_artifact=lm_artifact,
    )
    return baseline.version, candidate.version


_PROGRAM = typer.Argument(..., help="'package.module:attribute', 'file.py:attribute' or a registered name.")
_OPTIMIZER = typer.Option(
    "bootstrap",
    "--optimizer",
    "-o",
    help="bootstrap (BootstrapFewShot), mipro (MIPROv2), gepa (GEPA) or finetune (LoRA on the embedded "
    "model's weights; needs the finetune extra).",
)
_AUTO = typer.Option("light", "--auto", help="MIPROv2 / GEPA budget: light, medium or heavy.")
_HELDOUT = typer.Option(0.3, "--heldout", help="Share of the dataset held out for the comparison.")
_SEED = typer.Option(0, "--seed", help="Split and optimizer seed.")
_MAX_DEMOS = typer.Option(4, "--max-demos", help="Bootstrapped demos per predictor.")
_MAX_LABELED = typer.Option(4, "--max-labeled", help="Labelled demos per predictor.")
_MIN_TRAIN = typer.Option(MIN_TRAIN, "--min-train", help="Refuse with fewer training examples.")
_MIN_HELDOUT = typer.Option(MIN_HELDOUT, "--min-heldout", help="Refuse with fewer held-out examples.")
_REFLECTION_LM = typer.Option(
    None, "--reflection-lm", help="GEPA's reflection model (litellm string or 'local'); default: --lm."
)
_MARGIN = typer.Option(0.05, "--margin", help="Promotion gate: points the candidate must gain (0.05 = 5).")
_PROMOTE = typer.Option(False, "--promote", help="Promote the candidate if it passes the gate.")
_EPOCHS = typer.Option(3, "--epochs", help="finetune: most training epochs (early stopping may end sooner).")
_TIME_BUDGET = typer.Option(1200.0, "--time-budget", help="finetune: hard limit on training seconds.")
_LORA_RANK = typer.Option(8, "--lora-rank", help="finetune: rank of the LoRA adapters.")
_LEARNING_RATE = typer.Option(2e-4, "--learning-rate", help="finetune: AdamW learning rate.")
_QTYPE = typer.Option(
    "auto",
    "--qtype",
    help="finetune: GGUF type of the changed tensors (Q8_0, Q4_1, F16...); default auto: the base's, "
    "or Q8_0 when the base's is coarser (a 4-bit type rounds a LoRA update away).",
)
_JSON = typer.Option(False, "--json", help="Print the outcome as JSON.")


@dataclass(frozen=True)
class _FinetuneFlags:
    """``--epochs``, ``--time-budget``, ``--lora-rank``, ``--learning-rate`` and ``--qtype``."""

    epochs: int
    time_budget_s: float
    rank: int
    learning_rate: float
    qtype: str


@dataclass(frozen=True)
class _Outcome:
    """What ``geode compile`` did with the result: the versions saved, the report, the promotion."""

    base_version: str
    cand_version: str
    report: Path
    promoted: bool
    refusal: str | None


def compile_command(
    program: str = _PROGRAM,
    trainset: Path = _TRAINSET,
    metric: str = METRIC_OPTION,
    optimizer: str = _OPTIMIZER,
    auto: str = _AUTO,
    heldout: float = _HELDOUT,
    seed: int = _SEED,
    max_demos: int = _MAX_DEMOS,
    max_labeled: int = _MAX_LABELED,
    min_train: int = _MIN_TRAIN,
    min_heldout: int = _MIN_HELDOUT,
    threads: int | None = THREADS_OPTION,
    reflection_lm: str | None = _REFLECTION_LM,
    margin: float = _MARGIN,
    promote: bool = _PROMOTE,
    epochs: int = _EPOCHS,
    time_budget: float = _TIME_BUDGET,
    lora_rank: int = _LORA_RANK,
    learning_rate: float = _LEARNING_RATE,
    qtype: str = _QTYPE,
    report: Path | None = REPORT_DIR_OPTION,
    as_json: bool = _JSON,
    lm: str | None = LM_OPTION,
    allow_cache: bool = ALLOW_CACHE_OPTION,
) -> None:
    """Recompile a program with a DSPy optimizer, score baseline and candidate on held-out data, save both.

    The baseline is the program's active version (or the base program). Both are stored as versions
    with their scores; --promote makes the candidate active if it beats the active version by --margin.
    Example: geode compile geode.examples.qa:program --trainset qa.jsonl --metric exact_match
    """
    chosen = optimizer_name(optimizer)
    budget = auto_budget(auto)
    data = load_data(trainset)
    scorer = load_metric(metric)
    console = make_console(stderr=as_json)
    print_health(data.health(), console, compiling=True)
    # Refuse small data before building anything (an LM can take a while to load).
    data.require(1, purpose="compile")
    data.split(heldout_fraction=heldout, seed=seed).require(min_train=min_train, min_heldout=min_heldout)
    with make_runtime(lm=lm, measure=True, allow_cache=allow_cache) as rt:
        served = rt.serve(program)
        if served.problem:
            console.print(f"[yellow]warning:[/yellow] {served.problem}", highlight=False)
        reflection = _reflection(reflection_lm, allow_cache) if reflection_lm else None
        flags = _FinetuneFlags(epochs, time_budget, lora_rank, learning_rate, qtype)
        tuner = _finetuner(rt, scorer, flags) if chosen == "finetune" else None
        options = CompileOptions(
            optimizer=chosen,
            auto=budget,
            heldout_fraction=heldout,
            seed=seed,
            max_bootstrapped_demos=max_demos,
            max_labeled_demos=max_labeled,
            reflection_lm=reflection,
            version_of=tuner.version_of if tuner is not None else program_version,
            min_train=min_train,
            min_heldout=min_heldout,
            log=say,
            finetune=tuner,
            evaluation=EvalOptions(
                program_name=served.name,
                num_threads=default_threads(rt, threads),
                pricing=pricing_for(rt),
                show_progress=not as_json,
            ),
        )
        # Optimizers print progress to stdout; keep stdout for results (--json).
        with rt.batch(), contextlib.redirect_stdout(sys.stderr):
            result = compile_program(served.module, data, scorer, options)
        artifact = tuner.artifact_id if tuner is not None else None
        outcome = _save_and_promote(rt, served, result, report, margin, promote, optimizer, artifact)
    if as_json:
        _print_json(result, outcome, margin)
    else:
        _print_summary(console, served.name, optimizer, result, outcome, margin=margin, promote=promote)
    if outcome.refusal is not None:
        abort(outcome.refusal)


def _reflection(reflection_lm: str, allow_cache: bool) -> dspy.BaseLM:
    """GEPA's reflection LM, built like the runtime's own from ``--reflection-lm``."""
    from geode.runtime.lm import build_lm

    return build_lm(make_settings(lm=reflection_lm, measure=True, allow_cache=allow_cache).lm)


def _finetuner(rt: Runtime, scorer: Callable[..., Any], flags: _FinetuneFlags) -> FinetuneRun:
    from geode.cli._finetune import make_finetuner

    return make_finetuner(
        rt,
        scorer,
        epochs=flags.epochs,
        time_budget_s=flags.time_budget_s,
        rank=flags.rank,
        learning_rate=flags.learning_rate,
        qtype=flags.qtype,
        say=say,
    )


def _save_and_promote(
    rt: Runtime,
    served: ServedProgram,
    result: CompileResult,
    report: Path | None,
    margin: float,
    promote: bool,
    optimizer: str,
    lm_artifact: str | None,
) -> _Outcome:
    """Save both versions, write the report and, with ``--promote``, try to promote the candidate."""
    name, registry = served.name, rt.registry
    base_version, cand_version = save_versions(
        registry, name, result, baseline_is_base=served.version is None, lm_artifact=lm_artifact
    )
    active = registry.active(name)
    files = write_compile_report(
        result,
        report_dir(rt.settings, "compile", name, report),
        margin=margin,
        baseline_version=base_version,
        candidate_version=cand_version,
        active_version=active,
    )
    promoted = False
    refusal: str | None = None
    if promote:
        if cand_version == (active or base_version):
            refusal = f"the optimizer produced no change: {cand_version} is already serving"
        else:
            pair = registry.gate_scores(name, cand_version, active or base_version)
            cand_score, active_score = (pair[0].score, pair[1].score) if pair else (None, None)
            try:
                registry.promote(
                    name,
                    cand_version,
                    candidate_score=cand_score,
                    active_score=active_score,
                    margin=margin,
                    module=served.module,
                    reason=f"geode compile --optimizer {optimizer}",
                )
                promoted = True
            except VersionError as err:
                refusal = str(err)
    return _Outcome(base_version, cand_version, files.html, promoted, refusal)


def _print_json(result: CompileResult, outcome: _Outcome, margin: float) -> None:
    summary = {
        **result.to_dict(),
        "baseline_version": outcome.base_version,
        "candidate_version": outcome.cand_version,
        "margin": margin,
        "passes_gate": result.passes_gate(margin),
        "promoted": outcome.promoted,
        "report": str(outcome.report),
    }
    typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))


def _print_summary(
    console: Console,
    name: str,
    optimizer: str,
    result: CompileResult,
    outcome: _Outcome,
    *,
    margin: float,
    promote: bool,
) -> None:
    print_table(
        console,
        eval_summary_table(
            [("baseline", result.baseline), ("candidate", result.candidate)],
            f"{name}: {optimizer} on {result.candidate.model}, held-out {result.metric} "
            f"({result.baseline.n} examples)",
        ),
    )
    console.print(
        f"{result.delta * 100:+.1f} points; {result.candidate_demos} demos; compiled in "
        f"{result.compile_seconds:.1f} s ({result.compile_lm_calls} LM calls)",
        highlight=False,
    )
    cand_version = outcome.cand_version
    if cand_version == outcome.base_version:
        console.print("the optimizer produced no change to the program's state", highlight=False)
    elif outcome.promoted:
        console.print(
            f"[green]promoted[/green] {cand_version} (rollback: geode rollback {name})", highlight=False
        )
    elif not promote:
        verdict = "passes" if result.passes_gate(margin) else "does not pass"
        console.print(
            f"candidate {cand_version} {verdict} the {margin * 100:.0f}-point gate; "
            f"promote with: geode promote {name} {cand_version}",
            highlight=False,
        )
    console.print(f"report: {outcome.report}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``geode compile`` to the CLI."""
    app.command("compile")(compile_command)
