"""``geode cli-reference``: the CLI reference page, generated from the commands themselves."""

from __future__ import annotations

from typing import Any

import typer

__all__ = ["cli_reference_markdown", "register"]


def _param_row(param: Any) -> str:
    opts = ", ".join(f"`{o}`" for o in [*param.opts, *getattr(param, "secondary_opts", [])])
    kind = "argument" if param.param_type_name == "argument" else "option"
    help_text = (getattr(param, "help", None) or "").replace("|", "/").replace("\n", " ")
    default = param.default
    shown = "" if default in (None, (), [], False) or kind == "argument" else f"`{default}`"
    required = "yes" if param.required else ""
    return f"| {opts} | {kind} | {required} | {shown} | {help_text} |"


def _walk(group: Any, prefix: str) -> list[tuple[str, Any]]:
    commands: list[tuple[str, Any]] = []
    for name in sorted(group.commands):
        command = group.commands[name]
        if getattr(command, "hidden", False):
            continue
        full = f"{prefix} {name}"
        if hasattr(command, "commands"):
            commands.append((full, command))
            commands += _walk(command, full)
        else:
            commands.append((full, command))
    return commands


def cli_reference_markdown(app: typer.Typer) -> str:
    """Markdown for every command, argument and option of ``app``."""
    root = typer.main.get_command(app)
    out = [
        "# CLI reference",
        "",
        "Generated from the commands by `geode cli-reference`; every command also has `--help`.",
        "Errors print as one line (`error: ...`) and exit 2; `geode --debug ...` shows the traceback.",
    ]
    for full, command in _walk(root, "geode"):
        out += ["", f"## `{full}`", ""]
        help_text = (command.help or "").strip()
        if help_text:
            out += [help_text, ""]
        params = [p for p in command.params if p.name != "help"]
        if params:
            out += ["| name | kind | required | default | help |", "|---|---|---|---|---|"]
            out += [_param_row(p) for p in params]
    return "\n".join(out) + "\n"


def register(app: typer.Typer) -> None:
    """Add the hidden ``geode cli-reference`` command."""

    @app.command("cli-reference", hidden=True)
    def cli_reference() -> None:
        """Print the CLI reference as Markdown."""
        typer.echo(cli_reference_markdown(app), nl=False)
