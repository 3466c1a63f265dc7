"""Every `geode` command line the README and docs show parses against the CLI as written.

Fenced shell blocks are commands a reader copies, so each must parse: the command exists, every option
exists and takes the values given, required arguments are there. Inline mentions (`` `geode mine
--since 1d` ``) are often fragments, so only what they do say is checked: the options they name exist
and their values fit. The blocks marked ``<!-- doc-run -->`` also run, as shown, in
tests/integration/test_doc_commands.py; the Python samples run in tests/integration/test_docs.py.
"""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from geode.cli import _register_commands, app

ROOT = Path(__file__).resolve().parents[3]
_SHELL = frozenset({"", "bash", "sh", "shell", "console"})
_INLINE = re.compile(r"(?<!`)`(?:\.venv/bin/)?geode ([^`]+)`")
_LINE = re.compile(r"^(?:\$ )?(?:\S*/)?geode (.*)$")
_FRAGMENT_ERRORS = frozenset({"MissingParameter", "UsageError", "BadOptionUsage"})
"""What an inline fragment may leave out: arguments, the command's name, an option's value."""


def _commands() -> list[tuple[str, str, bool]]:
    found: list[tuple[str, str, bool]] = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        if "reference" in page.parts:  # generated from the CLI itself
            continue
        content = page.read_text(encoding="utf-8")
        where = str(page.relative_to(ROOT))
        for block in _shell_blocks(content):
            for line in block.replace("\\\n", " ").splitlines():
                match = _LINE.match(line.strip())
                if match:
                    found.append((where, match.group(1).split(" #")[0].strip(), True))
        for span in _INLINE.findall(content):
            text = " ".join(span.split())
            if len(text.split()) >= 2:
                found.append((where, text, False))
    return found


def _shell_blocks(content: str) -> list[str]:
    """The bodies of the page's fenced shell blocks (untagged ones too).

    Fences are paired line by line: a regex over the page pairs a block's closing fence with the next
    block's opening one when blocks carry no language tag, and then reads prose as commands and skips
    commands.
    """
    blocks: list[str] = []
    body: list[str] | None = None
    lang = ""
    for line in content.splitlines():
        if line.startswith("```"):
            if body is None:
                body, lang = [], line[3:].strip()
            else:
                if lang in _SHELL:
                    blocks.append("\n".join(body))
                body = None
        elif body is not None:
            body.append(line)
    return blocks


@functools.cache
def _cli() -> Any:
    _register_commands()
    return typer.main.get_command(app)


def _parse(argv: list[str]) -> None:
    """Parse ``geode ARGV`` down to the leaf command without running it."""
    command: Any = _cli()
    ctx = command.make_context("geode", argv)
    rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
    while hasattr(command, "resolve_command") and rest:
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)
        rest = (
            [*getattr(ctx, "_protected_args", []), *ctx.args] if hasattr(command, "resolve_command") else []
        )


COMMANDS = _commands()


def test_the_docs_show_commands() -> None:
    # 37 when fences were first paired line by line (a regex had paired them wrongly and saw 18).
    assert sum(1 for _, _, fenced in COMMANDS if fenced) >= 30


@pytest.mark.parametrize(
    ("where", "line", "fenced"), COMMANDS, ids=[f"{w}: {c}"[:90] for w, c, _ in COMMANDS]
)
def test_documented_command_parses(where: str, line: str, fenced: bool) -> None:
    try:
        _parse(shlex.split(line))
    except Exception as err:
        kind = type(err).__name__
        if kind == "Exit":  # --help, --version
            return
        if not fenced and kind in _FRAGMENT_ERRORS and "No such option" not in str(err):
            return
        formatter = getattr(err, "format_message", None)
        message = formatter() if callable(formatter) else str(err)
        pytest.fail(f"{where}: `geode {line}` does not parse: {kind}: {message}")
