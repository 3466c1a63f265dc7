"""The ``geode`` command line.

Each command group lives in its own module and registers itself on :data:`app` in
:func:`_register_commands`. Errors Geode raises on purpose print as one line and exit 2; anything else
exits 1. ``--debug`` (or ``GEODE_DEBUG=1``) shows the traceback; ``--verbose`` shows DSPy's INFO logs;
``--version`` prints the version.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import typer

from geode.errors import GeodeError

__all__ = ["app", "main"]

app = typer.Typer(
    name="geode",
    help="Run, trace, measure and improve DSPy programs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Command modules, each defining `register(app)`, by the top-level commands they register. `main` imports
# only the module of the command being run (some import Qdrant, FastAPI or Phoenix clients: seconds of
# start-up `geode run` would pay for nothing); help, an unknown command and `cli-reference` get them all.
# tests/unit/cli/test_cli_lazy.py checks this table against what the modules register.
_COMMANDS: dict[str, str] = {
    "run": "geode.cli.run",
    "ingest": "geode.cli.ingest",
    "search": "geode.cli.search",
    "settings": "geode.cli.settings",
    "cli-reference": "geode.cli.reference",
    "phoenix": "geode.cli.phoenix",
    "trace": "geode.cli.trace",
    "serve": "geode.cli.serve",
    "compare-versions": "geode.cli.compare_versions",
    "eval": "geode.cli.eval",
    "compile": "geode.cli.compile",
    "versions": "geode.cli.versions",
    "promote": "geode.cli.versions",
    "rollback": "geode.cli.versions",
    "route": "geode.cli.versions",
    "compare-models": "geode.cli.compare_models",
    "crystallize": "geode.cli.crystallize",
    "compare": "geode.cli.compare_programs",
    "mine": "geode.cli.mine",
    "demo": "geode.cli.demo",
}
_COMMAND_MODULES = tuple(dict.fromkeys(_COMMANDS.values()))
_NEEDS_ALL: frozenset[str] = frozenset({"cli-reference"})
"""Commands that read the whole command tree."""

# What `geode`, `geode --help`, `geode --version` and an unknown command show of the commands: the
# help's command list, without importing the modules (with all of them imported these took 3 s).
# Visible commands in the order the modules register them, then the command groups, each with the
# first paragraph of its help. tests/unit/cli/test_cli_lazy.py checks that the help and errors printed
# from this index are those printed with every module registered.
_INDEX_COMMANDS: tuple[tuple[str, str], ...] = (
    ("run", "Run a program on the configured LM and print its prediction."),
    ("ingest", "Ingest files into a collection: re-running updates changed files and skips unchanged ones."),
    ("search", "Search a collection and print the top passages with id, score, source and text."),
    ("settings", "Show the effective settings (secrets hidden), or document every variable."),
    (
        "phoenix",
        "Start a local Phoenix (or reuse the running one), wait until it is ready, and print its URL.",
    ),
    ("serve", "Serve programs over HTTP: one endpoint each, OpenAPI at /docs, health at /health and /ready."),
    (
        "compare-versions",
        "Compare the versions of a served program: runs, errors, latency, tokens, cost and feedback score.",
    ),
    (
        "eval",
        "Score a program on a dataset: score, latency, LM calls, tokens and cost, per example and overall.",
    ),
    (
        "compile",
        "Recompile a program with a DSPy optimizer, score baseline and candidate on held-out data, save both.",
    ),
    ("versions", "List a program's stored versions, the active one, and files that failed validation."),
    (
        "promote",
        "Make a version active if it beats the active version by --margin on the same held-out data.",
    ),
    ("rollback", "Make the previously active version active again."),
    ("route", "Show or change which candidate versions share a program's traffic, for every replica."),
    (
        "compare-models",
        "Score a program on several models (optionally recompiled for each): a small model plus an optimizer "
        "vs a large one.",
    ),
    (
        "crystallize",
        "Derive a fixed-order workflow from an agent's recorded runs (patterns, argument rules, demos).",
    ),
    (
        "compare",
        "Run two programs on the same examples: quality, LM calls, tokens, latency p50/p95, cost, and a verdict.",
    ),
    ("mine", "Mine a program's traced runs into an eval dataset, with labels from annotations and feedback."),
    (
        "demo",
        "Run the whole loop offline: Phoenix, ingest, agent runs, mine, crystallize, recompile, evaluate, promote.",
    ),
)
_INDEX_GROUPS: tuple[tuple[str, str], ...] = (("trace", "Inspect traces: span trees in the terminal."),)

_state = {"debug": False, "verbose": False}


def _print_version(value: bool) -> None:
    if value:
        from geode import __version__

        typer.echo(f"geode {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    verbose: bool = typer.Option(
        False, "--verbose", help="Show DSPy's own progress logs (INFO), which are quiet otherwise."
    ),
    version: bool = typer.Option(
        False, "--version", help="Print Geode's version and exit.", callback=_print_version, is_eager=True
    ),
) -> None:
    """Run, trace, measure and improve DSPy programs."""
    _state["debug"] = debug or _state["debug"]
    _state["verbose"] = verbose or _state["verbose"]
    _quiet_dspy()


def _quiet_dspy() -> None:
    """DSPy logs INFO lines (``Average Metric: ...``, optimizer steps) into the command's output.

    They repeat what the command prints, interleaved with it; ``--verbose`` keeps them. DSPy sets its
    logger's level when it is imported, so this runs once the command's modules are loaded.
    """
    if "dspy" in sys.modules:
        logging.getLogger("dspy").setLevel(logging.INFO if _state["verbose"] else logging.WARNING)


def _register_commands(args: list[str] | None = None) -> None:
    """Register what ``args`` needs: the command it runs, the index of them all, or every command.

    The command's own module when it names one; the index (:data:`_INDEX_COMMANDS`) when it names
    none or an unknown one (help, ``--version``, a usage error); every module for the commands that
    read the whole tree (``cli-reference``), and for ``args=None`` (the app driven in process).
    """
    command = next((arg for arg in args or [] if not arg.startswith("-")), None)
    if args is None or command in _NEEDS_ALL:
        for name in _COMMAND_MODULES:
            importlib.import_module(name).register(app)
    elif command in _COMMANDS:
        importlib.import_module(_COMMANDS[command]).register(app)
    else:
        _register_index(app)


def _register_index(target: typer.Typer) -> None:
    """Register each visible command by name and help only: enough to list them, never run."""

    def listed_only() -> None:  # pragma: no cover - main() never dispatches to it
        raise typer.Exit(2)

    for name, text in _INDEX_COMMANDS:
        target.command(name, help=text)(listed_only)
    for name, text in _INDEX_GROUPS:
        target.add_typer(typer.Typer(help=text), name=name)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``geode`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    _state["debug"] = "--debug" in args or os.environ.get("GEODE_DEBUG", "") not in ("", "0")
    _state["verbose"] = "--verbose" in args
    _register_commands(args)
    _quiet_dspy()
    try:
        result = app(args=args, standalone_mode=False)
        if isinstance(result, int) and result != 0:
            sys.exit(result)
    except GeodeError as err:
        if _state["debug"]:
            raise
        typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except typer.Exit as err:
        sys.exit(err.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        typer.secho("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except typer.TyperException as err:  # usage errors: click's own message and usage line
        show = getattr(err, "show", None)
        if callable(show):
            show()
        else:
            typer.secho(f"error: {err}", err=True)
        sys.exit(int(getattr(err, "exit_code", 2)))
    except Exception as err:  # the CLI's last line of defence: one line unless --debug
        if _state["debug"]:
            raise
        typer.secho(
            f"error: {type(err).__name__}: {err} (run with --debug for the traceback)",
            err=True,
            fg=typer.colors.RED,
        )
        sys.exit(1)
