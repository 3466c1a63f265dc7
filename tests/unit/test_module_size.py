"""Keep modules and functions small enough to read: at most 600 lines a module, 80 lines a function.

A function is measured from its ``def`` line to its last line (decorators excluded); a nested function
is measured on its own, and counts in its parent too. The exceptions are listed here, each with its
reason, and reviewed like code. An exception that is no longer over the limit fails the test, so the
list only shrinks: delete its entry.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "geode"

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

# path (relative to src/geode) -> why it may be longer than MAX_MODULE_LINES.
LONG_MODULES: dict[str, str] = {}

# path::qualified name -> why it may be longer than MAX_FUNCTION_LINES.
LONG_FUNCTIONS: dict[str, str] = {}


def _modules() -> dict[str, list[str]]:
    return {
        path.relative_to(SRC).as_posix(): path.read_text().splitlines() for path in sorted(SRC.rglob("*.py"))
    }


def _function_lengths(tree: ast.AST, prefix: str = "") -> dict[str, int]:
    lengths: dict[str, int] = {}
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            name = prefix + node.name
            lengths[name] = (node.end_lineno or node.lineno) - node.lineno + 1
            lengths |= _function_lengths(node, f"{name}.<locals>.")
        elif isinstance(node, ast.ClassDef):
            lengths |= _function_lengths(node, f"{prefix}{node.name}.")
        else:
            lengths |= _function_lengths(node, prefix)
    return lengths


def _long_modules() -> dict[str, int]:
    return {path: len(lines) for path, lines in _modules().items() if len(lines) > MAX_MODULE_LINES}


def _long_functions() -> dict[str, int]:
    found: dict[str, int] = {}
    for path, lines in _modules().items():
        for name, length in _function_lengths(ast.parse("\n".join(lines))).items():
            if length > MAX_FUNCTION_LINES:
                found[f"{path}::{name}"] = length
    return found


def test_modules_are_at_most_600_lines() -> None:
    long = _long_modules()
    new = {path: n for path, n in long.items() if path not in LONG_MODULES}
    assert new == {}, f"modules over {MAX_MODULE_LINES} lines: split them along their seams"
    stale = sorted(set(LONG_MODULES) - set(long))
    assert stale == [], f"no longer over {MAX_MODULE_LINES} lines: delete from LONG_MODULES in {__file__}"


def test_functions_are_at_most_80_lines() -> None:
    long = _long_functions()
    new = {name: n for name, n in long.items() if name not in LONG_FUNCTIONS}
    assert new == {}, f"functions over {MAX_FUNCTION_LINES} lines: give their steps names"
    stale = sorted(set(LONG_FUNCTIONS) - set(long))
    assert stale == [], f"no longer over {MAX_FUNCTION_LINES} lines: delete from LONG_FUNCTIONS in {__file__}"


def test_every_exception_gives_a_reason() -> None:
    for name, reason in (LONG_MODULES | LONG_FUNCTIONS).items():
        assert len(reason) >= 30, f"{name}: say why it is long, specifically"


def test_function_length_counts_from_def_line() -> None:
    source = (
        "@decorator\n@other\ndef f():\n    class C:\n        def m(self):\n            pass\n    return C\n"
    )
    assert _function_lengths(ast.parse(source)) == {"f": 5, "f.<locals>.C.m": 2}
