"""Enforce the layering in ARCHITECTURE.md: no import runs upward."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "geode"

# Which of Geode's own top-level areas each area may import. `errors`, `refs` and `adapters` are leaves
# everyone may use.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "refs": {"errors"},
    "adapters": {"errors"},
    "retrieval": {"errors", "refs", "adapters"},
    "traces": {"errors", "refs", "adapters"},
    "evals": {"errors", "refs", "adapters", "traces"},
    "agents": {"errors", "refs", "adapters", "retrieval", "traces", "evals"},
    "runtime": {"errors", "refs", "adapters", "retrieval", "traces", "evals", "agents"},
    "examples": {"errors", "refs", "adapters", "retrieval", "traces", "evals", "agents"},
    "testing": {"errors", "refs", "adapters", "retrieval", "traces", "evals", "agents", "runtime"},
    "demo": {"errors", "refs", "adapters", "retrieval", "traces", "evals", "agents", "runtime", "examples"},
    "cli": {
        "errors",
        "refs",
        "adapters",
        "retrieval",
        "traces",
        "evals",
        "agents",
        "runtime",
        "examples",
        "testing",
        "demo",
    },
    "__init__": {"errors", "refs", "adapters", "retrieval", "traces", "evals", "agents", "runtime"},
    "__main__": {"cli"},
}


def _area(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imported_areas(path: Path) -> set[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}:{line}: use absolute imports")
        for name in names:
            parts = name.split(".")
            if parts[0] == "geode" and len(parts) > 1:
                found.add((parts[1], line))
    return found


def _python_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_respect_layers(path: Path) -> None:
    area = _area(path)
    assert area in ALLOWED, f"new top-level area {area!r}: add it to ARCHITECTURE.md and this test"
    for imported, line in _imported_areas(path):
        if imported == area:
            continue
        assert imported in ALLOWED[area], (
            f"{path.relative_to(SRC)}:{line} imports geode.{imported}; {area} may import only {sorted(ALLOWED[area])}"
        )


def test_nothing_outside_testing_and_cli_imports_testing() -> None:
    for path in _python_files():
        area = _area(path)
        if area in {"testing", "cli"}:
            continue
        assert "testing" not in {a for a, _ in _imported_areas(path)}, f"{path} imports geode.testing"


def test_only_runtime_reads_environment() -> None:
    offenders = []
    for path in _python_files():
        if _area(path) in {"runtime", "cli"}:
            continue
        text = path.read_text()
        if "os.environ" in text or "os.getenv" in text:
            offenders.append(str(path.relative_to(SRC)))
    assert not offenders, f"only geode.runtime (and the CLI) may read env vars: {offenders}"
