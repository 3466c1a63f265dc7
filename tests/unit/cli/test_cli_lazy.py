"""The CLI imports only the module of the command being run, so ``geode run`` starts fast."""

from __future__ import annotations

import json
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
        (["--help"], None),
        (["no-such-command"], None),
        (["cli-reference"], None),
    ],
)
def test_only_the_invoked_command_is_registered(
    monkeypatch: pytest.MonkeyPatch, args: list[str], expected: str | None
) -> None:
    app = typer.Typer()
    monkeypatch.setattr(cli, "app", app)
    cli._register_commands(args)
    names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    if expected is None:
        assert names == set(cli._COMMANDS)
    else:
        assert expected in names
        assert names <= {c for c, m in cli._COMMANDS.items() if m == cli._COMMANDS[expected]}


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
