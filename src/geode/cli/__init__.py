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
    """Register the command that ``args`` runs, or every command (no ``args``, help, unknown)."""
    command = next((arg for arg in args or [] if not arg.startswith("-")), None)
    if command is not None and command in _COMMANDS and command not in _NEEDS_ALL:
        importlib.import_module(_COMMANDS[command]).register(app)
        return
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)


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
