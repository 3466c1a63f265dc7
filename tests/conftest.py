"""Shared test set-up: every test gets its own Geode home and DSPy cache; required tiers cannot skip.

Tiers (``tests/tiers.py``): under ``GEODE_REQUIRE=<tier,...>`` (or ``all``) a skip of a listed tier's test is
reported as a failure, so CI cannot go green on a broken install. A test belongs to a tier when it carries the
tier's marker, or when its skip reason names the tier (``[tier X] ...``, from ``tests.tiers.require_tier``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from _pytest.reports import CollectReport, TestReport
from tests.tiers import ENV, TIERS, parse_required, tier_of_reason

# DSPy reads its cache location at import time; keep test runs out of the user's cache, and leave no
# folder behind in /tmp (each run made one: hundreds piled up). Child processes inherit the variable.
if "DSPY_CACHEDIR" not in os.environ:
    _dspy_cache_dir = tempfile.mkdtemp(prefix="geode-dspy-cache-")
    os.environ["DSPY_CACHEDIR"] = _dspy_cache_dir
    atexit.register(shutil.rmtree, _dspy_cache_dir, ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def geode_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh GEODE_HOME per test; no collector endpoint or terminal size leaking in from the environment."""
    home = tmp_path / "geode-home"
    monkeypatch.setenv("GEODE_HOME", str(home))
    monkeypatch.delenv("PHOENIX_COLLECTOR_ENDPOINT", raising=False)
    monkeypatch.delenv("GEODE_TRACING_ENDPOINT", raising=False)
    # Output off a terminal is laid out as CI sees it (rich's 80 columns), not at the width of the terminal
    # that started pytest; a test about widths sets COLUMNS itself.
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    yield home


@pytest.fixture(autouse=True)
def _reset_instrumentation() -> Iterator[None]:
    """Leave DSPy uninstrumented after each test, whatever the test (or a runtime it forgot to close) did."""
    yield
    from geode.runtime import instrumentation

    instrumentation.uninstrument()
    instrumentation._retained.clear()


def pytest_configure(config: pytest.Config) -> None:
    """Read ``GEODE_REQUIRE`` once; an unknown tier name stops the run (a typo must not require nothing)."""
    try:
        config.stash[_REQUIRED] = parse_required(os.environ.get(ENV))
    except ValueError as err:
        raise pytest.UsageError(str(err)) from None


_REQUIRED = pytest.StashKey[frozenset[str]]()
# Node id -> tier, for the skips the hooks below turned into failures (the terminal summary counts them).
_FAILED_TIERS = pytest.StashKey[dict[str, str]]()


def _skip_reason(report: CollectReport | TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # (path, line, "Skipped: reason")
        return str(longrepr[2])
    return str(longrepr)


def _required_tier(config: pytest.Config, reason: str, markers: set[str]) -> str | None:
    """The required tier a skip belongs to, if any: named in its reason, or one of the test's markers."""
    required = config.stash.get(_REQUIRED, frozenset())
    named = tier_of_reason(reason)
    if named in required:
        return named
    for tier in sorted(markers & required):
        return tier
    return None


def _fail_instead(config: pytest.Config, report: CollectReport | TestReport, tier: str, reason: str) -> None:
    config.stash.setdefault(_FAILED_TIERS, {})[report.nodeid] = tier
    report.outcome = "failed"
    report.longrepr = (
        f"tier {tier!r} is required ({ENV}) but its test skipped: {reason}\n  the tier needs {TIERS[tier]}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, TestReport, TestReport]:
    """A required tier's test that skipped (in set-up, in the test, or by a mark) fails instead."""
    report = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        tier = _required_tier(item.config, reason, {mark.name for mark in item.iter_markers()})
        if tier is not None:
            _fail_instead(item.config, report, tier, reason)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, CollectReport, CollectReport]:
    """A module that skipped itself at import (``require_tier`` at module level) for a required tier fails."""
    report = yield
    if report.skipped:
        reason = _skip_reason(report)
        tier = _required_tier(collector.config, reason, set())
        if tier is not None:
            _fail_instead(collector.config, report, tier, reason)
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """One line per tier that had tests in this run: how many passed, failed or skipped."""
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if not isinstance(report, TestReport | CollectReport):
                continue
            if isinstance(report, TestReport) and outcome == "passed" and report.when != "call":
                continue
            tiers = set(report.keywords) & TIERS.keys() if isinstance(report, TestReport) else set()
            named = tier_of_reason(_skip_reason(report)) if outcome == "skipped" else None
            named = config.stash.get(_FAILED_TIERS, {}).get(report.nodeid, named)
            if named is not None and named in TIERS:
                tiers.add(named)
            for tier in tiers:
                tally = counts.setdefault(tier, {})
                tally[outcome] = tally.get(outcome, 0) + 1
    if not counts:
        return
    required = config.stash.get(_REQUIRED, frozenset())
    terminalreporter.section(f"tiers ({ENV}={','.join(sorted(required)) or 'none'})", sep="-")
    for tier in sorted(counts):
        tally = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts[tier].items()))
        terminalreporter.write_line(f"{tier:<11} {tally}{'  (required)' if tier in required else ''}")
