"""``geode versions``, ``promote``, ``rollback``, ``route``: a program's stored versions and which ones serve."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import typer
from rich.table import Table

from geode.cli._common import LM_OPTION, make_runtime
from geode.cli._console import make_console
from geode.cli._learning import (
    METRIC_HELP,
    default_threads,
    eval_summary_table,
    load_data,
    load_metric,
    pricing_for,
    say,
)
from geode.cli._tables import print_table
from geode.errors import ConfigError, ProgramNotFoundError
from geode.evals.evaluate import EvalResult, evaluate
from geode.runtime.registry import ProgramRegistry, Score, VersionInfo, program_version
from geode.runtime.runtime import Runtime
from geode.runtime.state import Route

__all__ = ["register"]

_DATASET = typer.Option(
    None,
    "--dataset",
    "-d",
    help="Score the candidate and the active version on this dataset's held-out split now.",
)
_IMPORT = typer.Option(
    None, "--import", help="Store this DSPy state file (module.save('x.json')) as a version."
)


def _program_module(rt: Runtime, name: str) -> dspy.Module | None:
    try:
        return rt.resolve(name).module
    except ProgramNotFoundError:
        return None


def _versions_table(name: str, versions: list[VersionInfo], active: str | None) -> Table:
    table = Table(title=f"{name}: {len(versions)} version(s); * = active", title_justify="left")
    for column in ("", "version", "created", "parent", "optimizer", "demos", "held-out score", "note"):
        table.add_column(column, justify="right" if column in ("demos",) else "left")
    for v in versions:
        held = v.heldout_score
        score = f"{100 * held.score:.1f}% {held.metric} (n={held.n})" if held else "-"
        table.add_row(
            "*" if v.version == active else "",
            v.version,
            v.created_at[:19].replace("T", " "),
            v.parent or "-",
            v.optimizer or "-",
            str(v.demos),
            score,
            v.note or "",
        )
    return table


def versions_command(
    name: str = typer.Argument(..., help="The program (its reference or registered name)."),
    import_file: Path | None = _IMPORT,
    as_json: bool = typer.Option(False, "--json", help="Print versions as JSON."),
    sign_unsigned: bool = typer.Option(
        False,
        "--sign-unsigned",
        help="Sign, with this home's registry key, version files written before keyed files (only "
        "those whose checksum still verifies). Run it once after upgrading, on files you trust.",
    ),
) -> None:
    """List a program's stored versions, the active one, and files that failed validation."""
    console = make_console()
    with make_runtime() as rt:
        registry = rt.registry
        if sign_unsigned:
            signed = registry.sign_unsigned(name)
            console.print(
                f"signed {len(signed)} version file(s) of {name!r}"
                + (f": {', '.join(signed)}" if signed else ""),
                highlight=False,
            )
        if import_file is not None:
            module = _program_module(rt, name)
            if module is None:
                raise ProgramNotFoundError(
                    f"cannot import into {name!r}: the program does not resolve",
                    hint="use the program's 'module:attribute' reference",
                )
            info = registry.import_file(name, import_file, module)
            console.print(f"stored {info.version} from {import_file}", highlight=False)
        versions, problems = registry.scan(name)
        active = registry.active(name)
        history = registry.history(name)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "program": name,
                    "active": active,
                    "history": history,
                    "versions": [v.to_json() for v in versions],
                    "invalid_files": [{"path": str(p), "error": why} for p, why in problems],
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    if not versions and not problems:
        console.print(f"program {name!r} has no stored versions (geode compile stores them)", highlight=False)
        return
    print_table(console, _versions_table(name, versions, active))
    console.print(
        f"active: {active or 'the base program'}"
        + (f"; rollback goes to {history[-1] or 'the base program'}" if history else ""),
        highlight=False,
    )
    for path, why in problems:
        console.print(f"[red]invalid:[/red] {path.name}: {why}", highlight=False)


def _score_now(
    rt: Runtime,
    registry: ProgramRegistry,
    name: str,
    module: dspy.Module,
    versions: list[str | None],
    dataset: Path,
    metric: str,
    heldout: float,
    seed: int,
) -> list[EvalResult]:
    data = load_data(dataset)
    data.require(1, purpose="score versions")
    held = data.split(heldout_fraction=heldout, seed=seed).heldout
    held.require(1, purpose="score versions on the held-out split")
    scorer = load_metric(metric)
    results: list[EvalResult] = []
    with rt.batch():
        for version in versions:
            program = registry.load_into(name, version, module) if version else module
            label = version or program_version(module)
            say(f"scoring {label} on {len(held)} held-out examples")
            result = evaluate(
                program,
                held,
                scorer,
                program_name=name,
                version=label,
                split="heldout",
                num_threads=default_threads(rt, None),
                pricing=pricing_for(rt),
                show_progress=True,
            )
            results.append(result)
            if version is not None:
                registry.add_score(name, version, Score.heldout(result, source_dataset_id=data.id))
    return results


def promote_command(
    name: str = typer.Argument(..., help="The program (its reference or registered name)."),
    version: str = typer.Argument(..., help="The version to make active (a unique prefix is enough)."),
    margin: float = typer.Option(
        0.05, "--margin", help="Points the candidate must gain over the active version."
    ),
    force: bool = typer.Option(False, "--force", help="Promote without the gate (recorded as forced)."),
    dataset: Path | None = _DATASET,
    metric: str | None = typer.Option(None, "--metric", "-m", help=METRIC_HELP),
    heldout: float = typer.Option(
        0.3, "--heldout", help="Held-out fraction for --dataset (as geode compile)."
    ),
    seed: int = typer.Option(0, "--seed", help="Split seed for --dataset (as geode compile)."),
    lm: str | None = LM_OPTION,
) -> None:
    """Make a version active if it beats the active version by --margin on the same held-out data.

    Scores come from geode compile (both versions scored on the same held-out examples) or, with
    --dataset and --metric, from scoring both now. The previously active version keeps serving if
    anything fails.
    """
    if (dataset is None) != (metric is None):
        raise ConfigError("--dataset and --metric go together")
    console = make_console()
    with make_runtime(lm=lm) as rt:
        registry = rt.registry
        candidate = registry.resolve_version(name, version)
        module = _program_module(rt, name)
        if module is None:
            console.print(
                f"[yellow]warning:[/yellow] {name!r} does not resolve to a program here; the version is checked "
                "for integrity but not test-loaded",
                highlight=False,
            )
        active = registry.active(name)
        cand_score: float | None = None
        active_score: float | None = None
        if dataset is not None and metric is not None and not force:
            if module is None:
                raise ProgramNotFoundError(f"cannot score {name!r}: the program does not resolve")
            cand, act = _score_now(
                rt, registry, name, module, [candidate, active], dataset, metric, heldout, seed
            )
            print_table(
                console,
                eval_summary_table([("candidate", cand), ("active", act)], f"{name}: held-out scores"),
            )
            cand_score, active_score = cand.score, act.score
        elif not force:
            reference = active or (program_version(module) if module is not None else None)
            stored = {v.version for v in registry.versions(name)}
            if reference is not None and reference in stored:
                pair = registry.gate_scores(name, candidate, reference)
                if pair is not None:
                    cand_score, active_score = pair[0].score, pair[1].score
                    console.print(
                        f"scores on {pair[0].dataset_id} ({pair[0].metric}, n={pair[0].n}): candidate "
                        f"{100 * cand_score:.1f}%, active {100 * active_score:.1f}%",
                        highlight=False,
                    )
        event = registry.promote(
            name,
            candidate,
            candidate_score=cand_score,
            active_score=active_score,
            margin=margin,
            force=force,
            module=module,
            reason="geode promote" + (" --force" if force else ""),
            # What the scores were compared against: a promotion that landed meanwhile wins, this one is told.
            expect_active=active,
        )
    console.print(
        f"[green]promoted[/green] {event.version} (was {event.previous or 'the base program'})"
        + (" [yellow](forced)[/yellow]" if event.forced else ""),
        highlight=False,
    )


def rollback_command(
    name: str = typer.Argument(..., help="The program (its reference or registered name)."),
) -> None:
    """Make the previously active version active again."""
    with make_runtime() as rt:
        module = _program_module(rt, name)
        event = rt.registry.rollback(name, module=module)
    make_console().print(
        f"rolled back {name}: {event.version or 'the base program'} is active (was {event.previous})",
        highlight=False,
    )


def _split(text: str, label: str, default_share: float) -> tuple[str | None, float]:
    """``VERSION``, ``VERSION:SHARE`` or ``none`` (no candidate)."""
    if text.strip().lower() == "none":
        return None, 0.0
    version, _, share_text = text.partition(":")
    try:
        share = float(share_text) if share_text else default_share
    except ValueError:
        raise ConfigError(f"bad --{label} {text!r}", hint="use VERSION, VERSION:SHARE or none") from None
    return version, share


def _route_line(route: Route) -> str:
    if route.empty:
        return "no canary, no shadow: the active version answers every request"
    parts = []
    if route.canary:
        parts.append(f"canary {route.canary} answers {100 * route.canary_share:g}% of requests")
    if route.shadow:
        parts.append(f"shadow {route.shadow} runs on a copy of {100 * route.shadow_share:g}%")
    return "; ".join(parts)


def route_command(
    name: str = typer.Argument(..., help="The program (its reference or registered name)."),
    canary: str | None = typer.Option(
        None, "--canary", help="VERSION[:SHARE] answering SHARE of requests (default 0.1); 'none' ends it."
    ),
    shadow: str | None = typer.Option(
        None,
        "--shadow",
        help="VERSION[:SHARE] run on a copy of SHARE of requests (default 1.0); 'none' ends it.",
    ),
    clear: bool = typer.Option(False, "--clear", help="End the canary and the shadow."),
    as_json: bool = typer.Option(False, "--json", help="Print the route as JSON."),
) -> None:
    """Show or change which candidate versions share a program's traffic, for every replica.

    The route lives in the state database beside the active version: every `geode serve` replica on
    it follows a change within GEODE_STATE_POLL_S, and the change is recorded in the program's history.
    A replica started with --canary/--shadow keeps that split instead (pinned for the process).

    Example: geode route qa --canary 1a2b3c:0.2 --shadow none
    """
    if clear and (canary is not None or shadow is not None):
        raise ConfigError("--clear goes alone", hint="use --canary none or --shadow none to end one of them")
    with make_runtime() as rt:
        registry = rt.registry
        route = registry.route(name)
        if clear or canary is not None or shadow is not None:
            new_canary, canary_share = (
                _split(canary, "canary", 0.1) if canary is not None else (route.canary, route.canary_share)
            )
            new_shadow, shadow_share = (
                _split(shadow, "shadow", 1.0) if shadow is not None else (route.shadow, route.shadow_share)
            )
            if clear:
                new_canary = new_shadow = None
            registry.set_route(
                name,
                canary=new_canary,
                canary_share=canary_share,
                shadow=new_shadow,
                shadow_share=shadow_share,
                module=_program_module(rt, name),
                reason="geode route",
                # Read, changed here, written: a change that landed meanwhile is not overwritten.
                expect_route=route,
            )
            route = registry.route(name)
        active = registry.active(name)
    if as_json:
        typer.echo(json.dumps({"program": name, "active": active, **route.to_json()}, indent=2))
        return
    make_console().print(
        f"{name}: active {active or 'the base program'}; {_route_line(route)}", highlight=False
    )


def register(app: typer.Typer) -> None:
    """Add ``geode versions``, ``promote``, ``rollback`` and ``route`` to the CLI."""
    app.command("versions")(versions_command)
    app.command("promote")(promote_command)
    app.command("rollback")(rollback_command)
    app.command("route")(route_command)
