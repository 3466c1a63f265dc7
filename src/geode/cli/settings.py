"""``geode settings``: show the effective settings, or every variable Geode reads."""

from __future__ import annotations

import json

import typer

from geode.cli._common import make_settings
from geode.runtime.settings_doc import env_example, settings_reference_markdown

__all__ = ["register"]


def settings(
    env: bool = typer.Option(False, "--env-example", help="Print every GEODE_* variable with its default."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the settings reference as Markdown."),
) -> None:
    """Show the effective settings (secrets hidden), or document every variable."""
    if env:
        typer.echo(env_example(), nl=False)
        return
    if markdown:
        typer.echo(settings_reference_markdown(), nl=False)
        return
    typer.echo(json.dumps(make_settings().model_dump(mode="json"), indent=2))


def register(app: typer.Typer) -> None:
    """Add ``geode settings`` to the CLI."""
    app.command("settings")(settings)
