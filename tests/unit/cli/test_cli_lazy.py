"""The CLI imports only the module of the command being run, so ``geode run`` starts fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import typer

from geode import cli


def _registered(module: str) -> set[str]:
    app = typer.Typer()
    __import__(module, fromlist=["register"]).register(app)
    names = {command.name for command in app.registered_commands}
    names |= {group.name for group in app.registered_groups}
    assert None not in names, f"{module} registers a command without an explicit name"
    return {name for name in names if name is not None}


def test_the_command_table_matches_what_each_module_registers() -> None:
    by_module: dict[str, set[str]] = {}
    for command, module in cli._COMMANDS.items():
        by_module.setdefault(module, set()).add(command)
    for module, commands in by_module.items():
        assert _registered(module) == commands, module


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "x:y"], "run"),
        (["--debug", "trace", "show", "abc"], "trace"),
        (["promote", "qa", "v2"], "promote"),
        (["--help"], "index"),
        ([], "index"),
        (["--version"], "index"),
        (["no-such-command"], "index"),
        (["cli-reference"], "all"),
        (None, "all"),
    ],
)
def test_only_the_invoked_command_is_registered(
    monkeypatch: pytest.MonkeyPatch, args: list[str] | None, expected: str
) -> None:
    app = typer.Typer()
    monkeypatch.setattr(cli, "app", app)
    cli._register_commands(args)
    names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    if expected == "all":
        assert names == set(cli._COMMANDS)
    elif expected == "index":
        # Every command but the hidden cli-reference, by name and help only.
        assert names == set(cli._COMMANDS) - cli._NEEDS_ALL
        assert all(
            c.callback is not None and c.callback.__module__ == "geode.cli" for c in app.registered_commands
        )
    else:
        assert expected in names
        assert names <= {c for c, m in cli._COMMANDS.items() if m == cli._COMMANDS[expected]}


_PRINT = """
import sys
from geode import cli
cli._register_commands(None if sys.argv[1] == "all" else sys.argv[2:])
try:
    cli.app(args=sys.argv[2:], prog_name="geode")
except SystemExit as done:
    print("exit", done.code, file=sys.stderr)
print("dspy imported:", "dspy" in sys.modules, file=sys.stderr)
"""


def _cli_output(how: str, args: list[str], columns: int) -> tuple[str, str]:
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "dumb"}
    done = subprocess.run(
        [sys.executable, "-c", _PRINT, how, *args], capture_output=True, text=True, env=env, timeout=120
    )
    return done.stdout, done.stderr


@pytest.mark.parametrize("args", [["--help"], [], ["no-such-command"], ["--debug"]])
@pytest.mark.parametrize("columns", [80, 200])
def test_the_index_prints_what_every_registered_module_prints(args: list[str], columns: int) -> None:
    # The index is a copy of each command's help: any change to a command's help fails here until
    # _INDEX_COMMANDS says the same.
    out, err = _cli_output("index", args, columns)
    all_out, all_err = _cli_output("all", args, columns)
    assert "Usage: geode" in out + err
    assert (out, err.replace("dspy imported: False", "")) == (
        all_out,
        all_err.replace("dspy imported: True", ""),
    )
    # The index path stays light: `geode --help` in a fraction of a second.
    assert "dspy imported: False" in err


def test_version_needs_no_command_module() -> None:
    out, err = _cli_output("index", ["--version"], 80)
    assert out.startswith("geode ") and "exit 0" in err and "dspy imported: False" in err


def test_geode_run_does_not_import_other_commands_dependencies() -> None:
    # A fresh interpreter: in this one, other tests have imported everything already.
    code = (
        "import json, sys\n"
        "from geode.cli import _register_commands\n"
        "_register_commands(['run', 'geode.examples.qa:program'])\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('qdrant_client', 'fastapi', 'httpx', 'rich', 'phoenix', 'torch', 'openinference') "
        "and m.count('.') == 0)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
