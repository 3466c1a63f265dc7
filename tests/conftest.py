"""Shared test set-up: every test gets its own Geode home and DSPy cache, and no network LM calls."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# DSPy reads its cache location at import time; keep test runs out of the user's cache.
os.environ.setdefault("DSPY_CACHEDIR", tempfile.mkdtemp(prefix="geode-dspy-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def geode_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh GEODE_HOME per test, and no collector endpoint leaking in from the environment."""
    home = tmp_path / "geode-home"
    monkeypatch.setenv("GEODE_HOME", str(home))
    monkeypatch.delenv("PHOENIX_COLLECTOR_ENDPOINT", raising=False)
    monkeypatch.delenv("GEODE_TRACING_ENDPOINT", raising=False)
    yield home


@pytest.fixture(autouse=True)
def _reset_instrumentation() -> Iterator[None]:
    """Leave DSPy uninstrumented after each test, whatever the test (or a runtime it forgot to close) did."""
    yield
    from geode.runtime import instrumentation

    instrumentation.uninstrument()
    instrumentation._retained.clear()
