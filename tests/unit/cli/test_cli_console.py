"""The CLI's console policy: a printed line is never wrapped, whatever the terminal width."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest

from geode.cli._console import make_console

CLI = Path(__file__).resolve().parents[3] / "src" / "geode" / "cli"


@pytest.mark.parametrize("columns", ["20", "80", "400"])
def test_a_long_command_prints_on_one_line(monkeypatch: pytest.MonkeyPatch, columns: str) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    command = "geode trace show 0123456789abcdef0123456789abcdef --spans /a/very/long/path/" + "x" * 200
    console = make_console()
    console.file = io.StringIO()
    console.print(f"[dim]next: {command}[/dim]")
    assert console.file.getvalue() == f"next: {command}\n"


def test_every_cli_console_comes_from_the_factory() -> None:
    direct = []
    for path in sorted(CLI.glob("*.py")):
        if path.name == "_console.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in {"Console", "rich.console.Console"}:
                direct.append(f"{path.name}:{node.lineno}")
    assert direct == [], "build consoles with geode.cli._console.make_console (it keeps lines whole)"
