"""``geode compile``: recompile a program with a DSPy optimizer and compare it with the baseline."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import typer

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
from geode.evals.compile import CompileResult, compile_program
from geode.evals.dataset import MIN_HELDOUT, MIN_TRAIN
from geode.evals.report import write_compile_report
from geode.runtime.registry import ProgramRegistry, Score, program_version

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


def compile_command(
    program: str = typer.Argument(
        ..., help="'package.module:attribute', 'file.py:attribute' or a registered name."
    ),
    trainset: Path = _TRAINSET,
    metric: str = METRIC_OPTION,
    optimizer: str = typer.Option(
        "bootstrap",
        "--optimizer",
        "-o",
        help="bootstrap (BootstrapFewShot), mipro (MIPROv2), gepa (GEPA) or finetune (LoRA on the embedded "
        "model's weights; needs the finetune extra).",
    ),
    auto: str = typer.Option("light", "--auto", help="MIPROv2 / GEPA budget: light, medium or heavy."),
    heldout: float = typer.Option(0.3, "--heldout", help="Share of the dataset held out for the comparison."),
    seed: int = typer.Option(0, "--seed", help="Split and optimizer seed."),
    max_demos: int = typer.Option(4, "--max-demos", help="Bootstrapped demos per predictor."),
    max_labeled: int = typer.Option(4, "--max-labeled", help="Labelled demos per predictor."),
    min_train: int = typer.Option(MIN_TRAIN, "--min-train", help="Refuse with fewer training examples."),
    min_heldout: int = typer.Option(
        MIN_HELDOUT, "--min-heldout", help="Refuse with fewer held-out examples."
    ),
    threads: int | None = THREADS_OPTION,
    reflection_lm: str | None = typer.Option(
        None, "--reflection-lm", help="GEPA's reflection model (litellm string or 'local'); default: --lm."
    ),
    margin: float = typer.Option(
        0.05, "--margin", help="Promotion gate: points the candidate must gain (0.05 = 5)."
    ),
    promote: bool = typer.Option(False, "--promote", help="Promote the candidate if it passes the gate."),
    epochs: int = typer.Option(
        3, "--epochs", help="finetune: most training epochs (early stopping may end sooner)."
    ),
    time_budget: float = typer.Option(
        1200.0, "--time-budget", help="finetune: hard limit on training seconds."
    ),
    lora_rank: int = typer.Option(8, "--lora-rank", help="finetune: rank of the LoRA adapters."),
    learning_rate: float = typer.Option(2e-4, "--learning-rate", help="finetune: AdamW learning rate."),
    qtype: str = typer.Option(
        "auto",
        "--qtype",
        help="finetune: GGUF type of the changed tensors (Q8_0, Q4_1, F16...); default auto: the base's, "
        "or Q8_0 when the base's is coarser (a 4-bit type rounds a LoRA update away).",
    ),
    report: Path | None = REPORT_DIR_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
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
        name = served.name
        if served.problem:
            console.print(f"[yellow]warning:[/yellow] {served.problem}", highlight=False)
        reflection = None
        if reflection_lm:
            from geode.runtime.lm import build_lm

            reflection = build_lm(make_settings(lm=reflection_lm, measure=True, allow_cache=allow_cache).lm)
        tuner = None
        if chosen == "finetune":
            from geode.cli._finetune import make_finetuner

            tuner = make_finetuner(
                rt,
                scorer,
                epochs=epochs,
                time_budget_s=time_budget,
                rank=lora_rank,
                learning_rate=learning_rate,
                qtype=qtype,
                say=say,
            )
        # Optimizers print progress to stdout; keep stdout for results (--json).
        with rt.batch(), contextlib.redirect_stdout(sys.stderr):
            result = compile_program(
                served.module,
                data,
                scorer,
                optimizer=chosen,
                auto=budget,
                heldout_fraction=heldout,
                seed=seed,
                num_threads=default_threads(rt, threads),
                max_bootstrapped_demos=max_demos,
                max_labeled_demos=max_labeled,
                reflection_lm=reflection,
                program_name=name,
                version_of=tuner.version_of if tuner is not None else program_version,
                min_train=min_train,
                min_heldout=min_heldout,
                pricing=pricing_for(rt),
                show_progress=not as_json,
                log=say,
                finetune=tuner,
            )
        registry = rt.registry
        base_version, cand_version = save_versions(
            registry,
            name,
            result,
            baseline_is_base=served.version is None,
            lm_artifact=tuner.artifact_id if tuner is not None else None,
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
    if as_json:
        typer.echo(
            json.dumps(
                {
                    **result.to_dict(),
                    "baseline_version": base_version,
                    "candidate_version": cand_version,
                    "margin": margin,
                    "passes_gate": result.passes_gate(margin),
                    "promoted": promoted,
                    "report": str(files.html),
                },
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
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
        if cand_version == base_version:
            console.print("the optimizer produced no change to the program's state", highlight=False)
        elif promoted:
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
        console.print(f"report: {files.html}", highlight=False)
    if refusal is not None:
        abort(refusal)


def register(app: typer.Typer) -> None:
    """Add ``geode compile`` to the CLI."""
    app.command("compile")(compile_command)
