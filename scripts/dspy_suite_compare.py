"""Run DSPy's own offline test suite with and without Geode's instrumentation and compare test by test.

Give it a folder holding a checkout of DSPy's ``tests/`` (and DSPy's ``pyproject.toml``, for its pytest
settings), taken from DSPy's repository; it runs them against the *installed* dspy twice, in fresh
processes: once plain, once with this file loaded as a pytest plugin that turns Geode's instrumentation
on for the whole run (every test body runs with Geode's callback registered, spans going to an SDK
tracer provider whose exporter OTLP-encodes them). Tests that fail without instrumentation are version
skew between the tests and the installed dspy and are left out; a test that passes plain and fails
instrumented is a regression, rerun alone in both modes to tell a real one from an order-dependent flake.

    git -C <dspy clone> archive <commit> tests pyproject.toml | tar -x -C /tmp/dspy-tests
    pip install --target /tmp/dspy-test-deps --no-deps pytest-asyncio pytest-mock   # DSPy's test plugins
    flock /tmp/geode-cpu.lock .venv/bin/python scripts/dspy_suite_compare.py /tmp/dspy-tests \
        --extra-path /tmp/dspy-test-deps

DSPy's tests are never copied into this repository. Exit status: 0 when there is no regression.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

PLUGIN = Path(__file__).stem
SPAN_COUNT_ENV = "GEODE_DSPY_SUITE_SPANS"
"""File the instrumented run writes its span count to (proof that instrumentation was on)."""

# -- the pytest plugin (loaded with `-p dspy_suite_compare` in the instrumented run) --------------------

_state: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Build a tracer provider and turn Geode's instrumentation on for the session."""
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    import geode

    try:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    except ImportError:  # the OTLP encoder is optional; counting still proves spans were made
        encode_spans = None

    class _Encoding(SpanExporter):
        """Encodes each span as OTLP protobuf (as an exporter would) and counts it."""

        def __init__(self) -> None:
            self.spans = 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            if encode_spans is not None:
                encode_spans(spans).SerializeToString()
            self.spans += len(spans)
            return SpanExportResult.SUCCESS

    exporter = _Encoding()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _state.update(provider=provider, exporter=exporter, instrument=geode.instrument)
    geode.instrument(tracer_provider=provider)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    """Re-register Geode's callback once the test's fixtures are set up.

    DSPy's autouse ``clear_settings`` fixture resets DSPy's settings (callbacks included) after every
    test, as an application's own ``dspy.configure(callbacks=...)`` would; registering after fixture
    setup keeps Geode's callback beside any the test's fixtures configured.
    """
    yield
    _state["instrument"](tracer_provider=_state["provider"])


def pytest_unconfigure(config: pytest.Config) -> None:
    """Write the number of spans the run produced."""
    target = os.environ.get(SPAN_COUNT_ENV)
    exporter = _state.get("exporter")
    if target and exporter is not None:
        Path(target).write_text(str(exporter.spans))


# -- the comparison -------------------------------------------------------------------------------------


def _outcomes(junit: Path) -> dict[str, str]:
    """``test id -> passed | failed | skipped`` from a JUnit XML report."""
    results: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        else:
            outcome = "passed"
        # A test that errors in teardown after passing appears twice; failing wins.
        if results.get(test_id) != "failed":
            results[test_id] = outcome
    return results


def _pytest(
    suite: Path,
    python: str,
    instrumented: bool,
    junit: Path,
    args: Sequence[str],
    spans_file: Path,
    extra_path: Sequence[str] = (),
) -> float:
    command = [
        python,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "-o",
        "addopts=",
        # A test module that no longer imports against the installed dspy is version skew, not a stop.
        "--continue-on-collection-errors",
        "-o",
        "timeout=300",  # pytest-timeout, if installed: one hanging test must not stall the comparison
        f"--junitxml={junit}",
    ]
    env = dict(os.environ)
    paths = [*extra_path]
    if instrumented:
        command += ["-p", PLUGIN]
        paths.append(str(Path(__file__).parent))
        env[SPAN_COUNT_ENV] = str(spans_file)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (*paths, env.get("PYTHONPATH")) if p)
    command += list(args)
    started = time.monotonic()
    subprocess.run(
        command, cwd=suite, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
    )
    return time.monotonic() - started


def _node_id(suite: Path, test_id: str) -> str:
    """``tests.a.test_x.TestC::name`` (JUnit's naming) -> ``tests/a/test_x.py::TestC::name``."""
    classname, _, name = test_id.partition("::")
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        path = "/".join(parts[:cut]) + ".py"
        if (suite / path).is_file():
            return "::".join([path, *parts[cut:], name])
    return test_id


def _alone(
    suite: Path, python: str, node: str, instrumented: bool, work: Path, extra_path: Sequence[str]
) -> str:
    junit = work / "alone.xml"
    _pytest(suite, python, instrumented, junit, [node], work / "alone-spans.txt", extra_path)
    outcomes = _outcomes(junit) if junit.exists() else {}
    return next(iter(outcomes.values()), "missing")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and print the regressions."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suite", type=Path, help="folder holding DSPy's tests/ and pyproject.toml")
    parser.add_argument("--python", default=sys.executable, help="interpreter with dspy and geode installed")
    parser.add_argument("--json", type=Path, help="also write the comparison here")
    parser.add_argument(
        "--extra-path",
        action="append",
        default=[],
        help="prepend to PYTHONPATH in both runs (e.g. a `pip install --target` folder with DSPy's test "
        "plugins pytest-asyncio and pytest-mock, so they need not be in the shared environment)",
    )
    parser.add_argument("pytest_args", nargs="*", default=["tests"], help="what to run (default: tests)")
    options = parser.parse_args(argv)
    suite = options.suite.resolve()
    with tempfile.TemporaryDirectory(prefix="dspy-suite-") as tmp:
        work = Path(tmp)
        spans_file = work / "spans.txt"
        extra = options.extra_path
        plain_s = _pytest(
            suite, options.python, False, work / "plain.xml", options.pytest_args, spans_file, extra
        )
        traced_s = _pytest(
            suite, options.python, True, work / "traced.xml", options.pytest_args, spans_file, extra
        )
        plain = _outcomes(work / "plain.xml")
        traced = _outcomes(work / "traced.xml")
        spans = int(spans_file.read_text()) if spans_file.exists() else 0
        baseline = sorted(t for t, outcome in plain.items() if outcome == "passed")
        regressions = [t for t in baseline if traced.get(t) != "passed"]
        confirmed = []
        for test_id in regressions:
            node = _node_id(suite, test_id)
            alone = (
                _alone(suite, options.python, node, False, work, extra),
                _alone(suite, options.python, node, True, work, extra),
            )
            confirmed.append({"test": node, "in_suite": traced.get(test_id, "missing"), "alone": alone})
    skew = sorted(t for t, outcome in plain.items() if outcome == "failed")
    summary = {
        "dspy": subprocess.run(
            [options.python, "-c", "import dspy; print(dspy.__version__)"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
        "collected": len(plain),
        "passed_plain": len(baseline),
        "failed_plain (version skew, left out)": len(skew),
        "skipped_plain": sum(1 for o in plain.values() if o == "skipped"),
        "passed_instrumented_of_those": len(baseline) - len(regressions),
        "regressions": confirmed,
        "spans_exported_instrumented": spans,
        "seconds": {"plain": round(plain_s, 1), "instrumented": round(traced_s, 1)},
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(summary, indent=2))
    if options.json:
        options.json.write_text(json.dumps({**summary, "version_skew": skew}, indent=2))
    return 1 if regressions else 0


if __name__ == "__main__":
    raise SystemExit(main())
