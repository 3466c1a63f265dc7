from __future__ import annotations

import importlib

import geode


def test_every_export_resolves_and_all_matches() -> None:
    exports: dict[str, str] = geode._EXPORTS
    assert set(geode.__all__) == {"__version__", *exports}
    for name, module in exports.items():
        assert getattr(geode, name) is getattr(importlib.import_module(module), name)


def test_import_geode_is_cheap() -> None:
    # `import geode` must not import DSPy or the model stack: names load on first use.
    import subprocess
    import sys

    code = "import sys, geode; print('dspy' in sys.modules, 'llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_every_error_is_in_errors_py_and_exported() -> None:
    import inspect

    from geode import errors

    classes = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and obj.__module__ == errors.__name__
    }
    assert set(errors.__all__) == classes
    for name in classes:
        assert issubclass(getattr(errors, name), errors.GeodeError)
        assert getattr(geode, name) is getattr(errors, name)


# A GeodeError subclass outside errors.py, with the reason it may stay there.
PRIVATE_ERRORS: dict[str, str] = {
    "geode/traces/sources/phoenix.py::_NoSuchProjectError": (
        "internal signal of PhoenixSource: wait_for catches it to mean 'no spans yet'; elsewhere it "
        "reaches callers as the TraceSourceError it subclasses, with that code"
    ),
}


def test_no_geode_error_is_defined_outside_errors_py() -> None:
    import ast
    from pathlib import Path

    from geode import errors

    src = Path(errors.__file__).parent.parent
    error_names = set(errors.__all__)
    classes: list[tuple[str, str, list[str]]] = []
    for path in sorted(src.rglob("*.py")):
        if path.name == "errors.py" and path.parent.name == "geode":
            continue
        rel = path.relative_to(src).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
                classes.append((rel, node.name, bases))
    found: set[str] = set()
    changed = True
    while changed:  # subclasses of subclasses count too
        changed = False
        for rel, name, bases in classes:
            key = f"{rel}::{name}"
            if key not in found and any(b in error_names for b in bases):
                found.add(key)
                error_names.add(name)
                changed = True
    assert sorted(found - set(PRIVATE_ERRORS)) == [], "define GeodeError subclasses in geode/errors.py"
    assert sorted(set(PRIVATE_ERRORS) - found) == [], "stale PRIVATE_ERRORS entries"
