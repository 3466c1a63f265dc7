from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from geode.runtime.settings import LMSettings, Settings


def test_defaults_are_embedded_and_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEODE_HOME", raising=False)
    settings = Settings()
    assert settings.home == Path(".geode")
    assert settings.lm.model == "local"
    assert settings.retrieval.qdrant_url is None
    assert settings.phoenix.host == "127.0.0.1"
    assert settings.qdrant_path == Path(".geode/qdrant")


def test_argument_beats_env_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEODE_LM_MODEL", "openai/gpt-4o-mini")
    monkeypatch.setenv("GEODE_LM_TEMPERATURE", "0.7")
    assert Settings().lm.model == "openai/gpt-4o-mini"
    # a dict for a group overrides only the fields it names; the rest still come from env
    settings = Settings(lm={"model": "anthropic/claude-3-5-haiku-latest"})  # pyright: ignore[reportArgumentType]
    assert settings.lm.model == "anthropic/claude-3-5-haiku-latest"
    assert settings.lm.temperature == 0.7
    assert LMSettings().max_tokens == 512


def test_phoenix_collector_endpoint_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHOENIX_COLLECTOR_ENDPOINT", "http://127.0.0.1:7777")
    assert Settings().tracing.endpoint == "http://127.0.0.1:7777"


def test_home_from_env(geode_home: Path) -> None:
    settings = Settings()
    assert settings.home == geode_home
    assert settings.programs_dir == geode_home / "programs"


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.home = Path("elsewhere")


def test_invalid_values_name_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEODE_LM_TEMPERATURE", "hot")
    with pytest.raises(ValidationError, match="temperature"):
        Settings()


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="nonsense"):
        Settings(lm={"nonsense": 1})  # pyright: ignore[reportArgumentType]
