"""The test tiers themselves: GEODE_REQUIRE turns a tier's skip into a failure, and every skip names its tier."""

from __future__ import annotations

import ast
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tests.tiers import TIERS, parse_required, tier_of_reason

TESTS = Path(__file__).resolve().parents[1]

SAMPLE = """
import pytest

from tests.tiers import require_tier, skip_tier

missing = require_tier("localmodel", import_name="no_such_module_for_the_tier_test")


def test_never_runs() -> None:
    assert missing is not None
"""

SAMPLE_FIXTURE = """
import pytest

from tests.tiers import skip_tier


@pytest.fixture
def chromium() -> str:
    pytest.skip("no Chromium found")  # a bare skip: the browser marker makes it the tier's


@pytest.mark.browser
def test_marked(chromium: str) -> None:
    assert chromium


def test_named_in_the_test() -> None:
    skip_tier("ray", "no Ray here")


def test_plain_skip_of_no_tier() -> None:
    pytest.skip("nothing to do with a tier")
"""


def test_parse_required() -> None:
    assert parse_required(None) == frozenset()
    assert parse_required(" localmodel, phoenix ,") == {"localmodel", "phoenix"}
    assert parse_required("all") == frozenset(TIERS)
    with pytest.raises(ValueError, match="unknown tier"):
        parse_required("localmodel,phenix")


def test_a_skip_reason_names_its_tier() -> None:
    assert tier_of_reason("Skipped: [tier browser] no Chromium found") == "browser"
    assert tier_of_reason("Skipped: no Chromium found") is None


def test_every_tier_is_a_registered_marker(pytestconfig: pytest.Config) -> None:
    markers = {line.split(":", 1)[0].strip() for line in pytestconfig.getini("markers")}
    assert set(TIERS) <= markers


def _skip_calls(path: Path) -> list[str]:
    """Lines that skip without naming a tier: pytest.importorskip/skip and skip/skipif marks."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Attribute) and node.attr in {"importorskip", "skip", "skipif"}:
            owner = ast.unparse(node.value)
            if owner in {"pytest", "pytest.mark"}:
                found.append(f"{path.relative_to(TESTS)}:{node.lineno}: {owner}.{node.attr}")
    return found


def test_every_skip_site_names_its_tier() -> None:
    own = {TESTS / "tiers.py", Path(__file__).resolve()}
    bare = [line for path in sorted(TESTS.rglob("*.py")) if path not in own for line in _skip_calls(path)]
    assert bare == [], "skip through tests.tiers.require_tier/skip_tier so GEODE_REQUIRE can fail it"


def _run_inner(tmp_path: Path, sample: str, require: str | None) -> subprocess.CompletedProcess[str]:
    """Run pytest on ``sample`` (and one passing test) with this repo's conftest and tiers, in a new process."""
    root = tmp_path / "inner"
    (root / "tests").mkdir(parents=True, exist_ok=True)
    shutil.copy(TESTS / "conftest.py", root / "tests" / "conftest.py")
    shutil.copy(TESTS / "tiers.py", root / "tests" / "tiers.py")
    (root / "tests" / "test_sample.py").write_text(sample)
    (root / "tests" / "test_passes.py").write_text("def test_passes() -> None:\n    assert True\n")
    markers = "\n".join(f"    {tier}: tier" for tier in TIERS)
    (root / "pytest.ini").write_text(f"[pytest]\npythonpath = .\nmarkers =\n{markers}\n")
    env = {key: value for key, value in os.environ.items() if key != "GEODE_REQUIRE"}
    if require is not None:
        env["GEODE_REQUIRE"] = require
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "-p", "no:phoenix", "tests"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_required_tier_fails_instead_of_skipping_at_module_level(tmp_path: Path) -> None:
    free = _run_inner(tmp_path, SAMPLE, None)
    assert free.returncode == 0, free.stdout
    assert "1 passed, 1 skipped" in free.stdout
    other = _run_inner(tmp_path, SAMPLE, "phoenix,ray")
    assert other.returncode == 0, other.stdout
    required = _run_inner(tmp_path, SAMPLE, "localmodel")
    assert required.returncode != 0, required.stdout
    assert "tier 'localmodel' is required (GEODE_REQUIRE) but its test skipped" in required.stdout
    assert "no_such_module_for_the_tier_test" in required.stdout


def test_a_required_tier_fails_instead_of_skipping_in_a_fixture_or_test(tmp_path: Path) -> None:
    free = _run_inner(tmp_path, SAMPLE_FIXTURE, None)
    assert free.returncode == 0, free.stdout
    assert "1 passed, 3 skipped" in free.stdout
    required = _run_inner(tmp_path, SAMPLE_FIXTURE, "all")
    assert required.returncode == 1, required.stdout
    # The fixture skipped in set-up, so its failure is reported as an error.
    assert "1 failed, 1 passed, 1 skipped, 1 error" in required.stdout
    assert "tier 'browser' is required" in required.stdout and "no Chromium found" in required.stdout
    assert "tier 'ray' is required" in required.stdout


def test_an_unknown_tier_name_stops_the_run(tmp_path: Path) -> None:
    typo = _run_inner(tmp_path, SAMPLE_FIXTURE, "localmodle")
    assert typo.returncode == pytest.ExitCode.USAGE_ERROR, typo.stdout + typo.stderr
    assert "unknown tier(s) localmodle" in typo.stderr


def test_the_network_guard_refuses_a_remote_host_and_allows_loopback(no_remote_network: list[str]) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
    assert no_remote_network == []
    with pytest.raises(ConnectionRefusedError, match="may not use the network"):
        socket.create_connection(("192.0.2.1", 80), timeout=5)  # TEST-NET-1: never routed anyway
    with pytest.raises(ConnectionRefusedError, match=r"name lookup of 'api\.openai\.com'"):
        socket.getaddrinfo("api.openai.com", 443)
    assert len(no_remote_network) == 2
    no_remote_network.clear()  # recorded as expected; the guard would otherwise fail this test at teardown


def _ci_required_tiers() -> str:
    """The ``GEODE_REQUIRE`` default that ``.ci/run`` exports."""
    script = (TESTS.parent / ".ci" / "run").read_text()
    match = re.search(r'GEODE_REQUIRE="\$\{GEODE_REQUIRE:-(?P<tiers>[a-z0-9_,-]+)\}"', script)
    assert match is not None, ".ci/run no longer exports GEODE_REQUIRE with a default"
    return match.group("tiers")


def _run_with_broken_llama_cpp(tmp_path: Path, require: str | None) -> subprocess.CompletedProcess[str]:
    """Run a real localmodel test file of this repo with ``import llama_cpp`` broken, in a new process.

    A ``llama_cpp`` package first on ``PYTHONPATH`` whose import raises ImportError stands in for a broken
    install (a wheel built without its shared library, a missing extra).
    """
    broken = tmp_path / "broken" / "llama_cpp"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("llama_cpp sabotaged by test_tiers")\n')
    env = {key: value for key, value in os.environ.items() if key != "GEODE_REQUIRE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(broken.parent), env.get("PYTHONPATH")]))
    if require is not None:
        env["GEODE_REQUIRE"] = require
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "not slow",
            "-rA",
            "-p",
            "no:cacheprovider",
            LOCALMODEL_FILE,
            PASSING,
        ],
        cwd=TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


LOCALMODEL_FILE = "tests/unit/runtime/lm/test_local_lm_grammar.py"
# One test of no tier beside it, so the run without the switch is a green run with a skip in it (as CI's was).
PASSING = "tests/unit/test_tiers.py::test_parse_required"


def test_a_broken_llama_cpp_fails_under_the_ci_tiers_and_skips_without_them(tmp_path: Path) -> None:
    ci_tiers = _ci_required_tiers()
    assert "localmodel" in ci_tiers.split(",")
    broken = _run_with_broken_llama_cpp(tmp_path, ci_tiers)
    # A module-level skip turned failure is a collection error: pytest stops with INTERRUPTED (2).
    assert broken.returncode != pytest.ExitCode.OK, broken.stdout + broken.stderr
    assert "tier 'localmodel' is required (GEODE_REQUIRE) but its test skipped" in broken.stdout
    assert "llama_cpp sabotaged by test_tiers" in broken.stdout
    assert "localmodel" in broken.stdout.split("tiers (GEODE_REQUIRE=")[-1]
    laptop = _run_with_broken_llama_cpp(tmp_path / "laptop", None)
    assert laptop.returncode == pytest.ExitCode.OK, laptop.stdout + laptop.stderr
    assert re.search(r"SKIPPED \[\d+\] .*\[tier localmodel\] cannot import llama_cpp", laptop.stdout), (
        laptop.stdout
    )
    assert "1 passed, 1 skipped" in laptop.stdout


def _module_level_tiers(tree: ast.Module) -> set[str]:
    """Tiers a test module requires at import: ``require_tier("X", ...)`` as a top-level statement."""
    tiers: set[str] = set()
    for statement in tree.body:
        call = statement.value if isinstance(statement, ast.Expr | ast.Assign) else None
        if isinstance(call, ast.Call) and ast.unparse(call.func) in {"require_tier", "skip_tier"}:
            first = call.args[0] if call.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                tiers.add(first.value)
    return tiers


def _pytestmark_tiers(tree: ast.Module) -> set[str]:
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "pytestmark" for target in statement.targets
        ):
            return set(re.findall(r"pytest\.mark\.(\w+)", ast.unparse(statement.value)))
    return set()


def test_a_module_that_requires_a_tier_at_import_carries_its_marker() -> None:
    # The marker is what `-m <tier>` selects and what the run's tier lines count.
    unmarked = []
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        missing = _module_level_tiers(tree) - _pytestmark_tiers(tree)
        if missing:
            unmarked.append(f"{path.relative_to(TESTS)}: pytestmark lacks {sorted(missing)}")
    assert unmarked == []
