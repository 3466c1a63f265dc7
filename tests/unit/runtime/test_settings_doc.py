from __future__ import annotations

from pathlib import Path

from geode.runtime.settings_doc import describe_settings, env_example, settings_reference_markdown

ROOT = Path(__file__).resolve().parents[3]


def test_every_setting_is_documented_with_its_env_var() -> None:
    docs = {d.env[0]: d for d in describe_settings()}
    assert docs["GEODE_LM_MODEL"].default == "local"
    assert "PHOENIX_COLLECTOR_ENDPOINT" in docs["GEODE_TRACING_ENDPOINT"].env
    assert docs["GEODE_HOME"].doc.startswith("Everything Geode stores")


def test_env_example_is_current() -> None:
    committed = (ROOT / "deploy" / "env.example").read_text()
    assert committed == env_example(), (
        "deploy/env.example is stale: run `geode settings --env-example > deploy/env.example`"
    )


def test_settings_reference_is_current() -> None:
    page = ROOT / "docs" / "reference" / "settings.md"
    assert page.read_text() == settings_reference_markdown(), (
        "docs/reference/settings.md is stale: run `geode settings --markdown > docs/reference/settings.md`"
    )
