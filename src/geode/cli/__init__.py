"""The ``geode`` command line.

Each command group lives in its own module and registers itself on :data:`app` in
:func:`_register_commands`. Errors Geode raises on purpose print as one line and exit 2; anything else
exits 1. ``--debug`` (or ``GEODE_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import importlib
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

# Command modules, imported lazily so `geode --help` stays fast; each defines `register(app)`.
_COMMAND_MODULES = (
    "geode.cli.run",
    "geode.cli.ingest",
    "geode.cli.search",
    "geode.cli.settings",
    "geode.cli.reference",
    "geode.cli.phoenix",
    "geode.cli.trace",
    "geode.cli.serve",
    "geode.cli.compare_versions",
    "geode.cli.eval",
    "geode.cli.compile",
    "geode.cli.versions",
    "geode.cli.compare_models",
    "geode.cli.crystallize",
    "geode.cli.compare",
    "geode.cli.mine",
    "geode.cli.demo",
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Run, trace, measure and improve DSPy programs."""
    _state["debug"] = debug or _state["debug"]


def _register_commands() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``geode`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    _state["debug"] = "--debug" in args or os.environ.get("GEODE_DEBUG", "") not in ("", "0")
    _register_commands()
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
