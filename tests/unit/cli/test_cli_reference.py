"""docs/reference/cli.md is generated from the commands; this keeps it from drifting."""

from __future__ import annotations

from pathlib import Path

import pytest

from geode.cli import main

ROOT = Path(__file__).resolve().parents[3]


def _generated(capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    main(["cli-reference"])
    return capsys.readouterr().out


def test_cli_reference_page_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    page = ROOT / "docs" / "reference" / "cli.md"
    assert page.read_text() == _generated(capsys), (
        "docs/reference/cli.md is stale: run `make reference` (geode cli-reference > docs/reference/cli.md)"
    )


def test_every_command_is_in_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    text = _generated(capsys)
    for name in ("run", "phoenix", "trace show", "ingest", "search", "eval", "compile", "serve", "versions"):
        assert f"## `geode {name}`" in text
