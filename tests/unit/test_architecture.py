"""Enforce the layering in ARCHITECTURE.md: no import runs upward, and only the settings read the environment.

An import is any of: ``import geode.x``, ``from geode.x import y``, ``from geode import Name`` (which loads
the module ``geode._EXPORTS`` names for it), ``geode.Name`` after ``import geode``,
``importlib.import_module("geode.x")`` with a literal, and the ``"geode.x"`` strings of a lazy-import
table in a module that calls ``import_module`` with a computed name.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "geode"

# Lowest first. An area may import only areas listed before it (and itself).
LAYERS = [
    "errors",
    "adapters",
    "refs",
    "retrieval",
    "traces",
    "evals",
    "agents",
    "runtime",
    "testing",
    "examples",
    "demo",
    "cli",
    "__init__",
    "__main__",
]

# Which of Geode's own top-level areas each area imports: exactly the graph as it is, so a new
# dependency between areas is a reviewed edit here (and must still point down the LAYERS).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "adapters": set(),
    "refs": {"errors"},
    "retrieval": {"errors"},
    "traces": {"errors"},
    "evals": {"errors", "refs", "traces"},
    "agents": {"errors", "refs", "adapters", "traces", "evals"},
    "runtime": {"errors", "refs", "adapters", "retrieval", "traces", "evals", "agents"},
    "testing": {"retrieval", "traces", "runtime"},
    "examples": {"errors", "retrieval", "evals", "agents"},
    "demo": {"errors", "retrieval", "traces", "evals", "agents", "runtime", "examples"},
    "cli": {"errors", "retrieval", "traces", "evals", "agents", "runtime", "demo"},
    "__init__": {"errors", "adapters", "retrieval", "evals", "agents", "runtime"},
    "__main__": {"cli"},
}

# Modules that call `import_module` with a computed name, and why that is safe. The `"geode.x"` strings
# in such a module count as its imports, so a lazy table cannot hide an upward one.
DYNAMIC_IMPORTS: dict[str, str] = {
    "__init__.py": "lazy public API: the module of each name in _EXPORTS, loaded on first use",
    "cli/__init__.py": "loads only the module of the command being run (its _COMMANDS table)",
    "refs.py": "resolves a user's 'module:attribute' program reference: the user's code, not Geode's",
    "runtime/finetune/__init__.py": "lazy exports, so importing finetune does not import the training stack",
    "runtime/registry/__init__.py": (
        "lazy exports (its _EXPORTS table), so ServedProgram does not import the state database"
    ),
}

# Files other than runtime/settings.py that touch os.environ, and why.
ENV_ACCESS: dict[str, str] = {
    "runtime/__init__.py": (
        "sets LITELLM_LOCAL_MODEL_COST_MAP (setdefault) before anything imports litellm, which reads it on "
        "import: a process-wide switch only the composition root may set"
    ),
    "runtime/lm/_llama.py": (
        "sets OMP_WAIT_POLICY (setdefault) before llama_cpp loads libgomp, which reads it once at load"
    ),
    "runtime/stores.py": (
        "sets HF_HUB_OFFLINE, HF_HUB_DISABLE_PROGRESS_BARS, TOKENIZERS_PARALLELISM (setdefault) before "
        "huggingface_hub is imported by the lazy embedder load"
    ),
    "runtime/phoenix.py": "copies the environment to pass it, with PHOENIX_* added, to the phoenix serve child",
    "cli/__init__.py": (
        "reads GEODE_DEBUG before anything else, so the traceback of a start-up failure (including "
        "Settings() rejecting the environment) is shown; it is not a setting of the runtime"
    ),
}

_ENV_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}
_MODULE_STRING = re.compile(r"geode(\.\w+)+")


def _area(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _rel(path: Path) -> str:
    return path.relative_to(SRC).as_posix()


@cache
def _lazy_exports() -> dict[str, str]:
    """``geode._EXPORTS`` (public name -> module), read from the source, not imported."""
    tree = ast.parse((SRC / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets):
                assert node.value is not None
                value = ast.literal_eval(node.value)
                assert isinstance(value, dict)
                return {str(k): str(v) for k, v in value.items()}
    raise AssertionError("geode/__init__.py has no _EXPORTS table")


def _area_of_module(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "geode" and len(parts) > 1 else None


def _area_of_export(name: str) -> str | None:
    # `__version__` and the other non-lazy names of geode/__init__ import nothing.
    module = _lazy_exports().get(name)
    return None if module is None else _area_of_module(module)


def _calls_import_module(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return name in {"import_module", "__import__"}


def _imported_areas(path: Path) -> set[tuple[str, int]]:
    return _imported_areas_in(ast.parse(path.read_text(), filename=str(path)), path)


def _literal_module(node: ast.Call) -> str | None:
    """The module an ``import_module`` call names, if it is a literal."""
    first = node.args[0] if node.args else None
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def _statement_imports(node: ast.AST, path: Path | str) -> list[str | None]:
    """The areas one import statement or ``import_module`` call loads (``None``: not Geode's)."""
    if isinstance(node, ast.Import):
        return [_area_of_module(alias.name) for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level > 0:
        raise AssertionError(f"{path}:{node.lineno}: use absolute imports")
    if isinstance(node, ast.ImportFrom) and node.module == "geode":
        return [_area_of_export(alias.name) for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module:
        return [_area_of_module(node.module)]
    if isinstance(node, ast.Call) and _calls_import_module(node) and (module := _literal_module(node)):
        return [_area_of_module(module)]
    return []


def _imported_areas_in(tree: ast.Module, path: Path | str) -> set[tuple[str, int]]:
    found = {
        (area, getattr(node, "lineno", 0))
        for node in ast.walk(tree)
        for area in _statement_imports(node, path)
        if area is not None
    }
    imports_geode = any(
        isinstance(node, ast.Import) and any(alias.name == "geode" for alias in node.names)
        for node in ast.walk(tree)
    )
    dynamic = _has_dynamic_import(tree)
    for node in ast.walk(tree):
        area = None
        if imports_geode and isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            area = _area_of_export(node.attr) if node.value.id == "geode" else None
        elif dynamic and isinstance(node, ast.Constant) and isinstance(node.value, str):
            area = _area_of_module(node.value) if _MODULE_STRING.fullmatch(node.value) else None
        if area is not None:
            found.add((area, getattr(node, "lineno", 0)))
    return found


def _has_dynamic_import(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.Call) and _calls_import_module(node) and _literal_module(node) is None
        for node in ast.walk(tree)
    )


def _env_access(path: Path) -> list[int]:
    return _env_access_in(ast.parse(path.read_text(), filename=str(path)))


def _env_access_in(tree: ast.Module) -> list[int]:
    """Lines that touch the process environment through ``os`` (under any alias) or names taken from it."""
    os_names: set[str] = set()
    env_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            os_names |= {alias.asname or alias.name for alias in node.names if alias.name == "os"}
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            env_names |= {alias.asname or alias.name for alias in node.names if alias.name in _ENV_NAMES}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in os_names and node.attr in _ENV_NAMES:
                lines.append(node.lineno)
        elif isinstance(node, ast.Name) and node.id in env_names:
            lines.append(node.lineno)
    return lines


def _python_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_allowed_table_points_down_the_layers() -> None:
    assert set(ALLOWED) == set(LAYERS)
    for area, imports in ALLOWED.items():
        for imported in imports:
            assert LAYERS.index(imported) < LAYERS.index(area), f"{area} -> {imported} runs upward"


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_respect_layers(path: Path) -> None:
    area = _area(path)
    assert area in ALLOWED, f"new top-level area {area!r}: add it to ARCHITECTURE.md and this test"
    for imported, line in _imported_areas(path):
        if imported == area:
            continue
        assert imported in ALLOWED[area], (
            f"{_rel(path)}:{line} imports geode.{imported}; {area} may import only {sorted(ALLOWED[area])}"
        )


def test_allowed_table_is_the_real_graph() -> None:
    # A table wider than the code lets a new upward-ish edge in unreviewed: drop unused entries.
    used: dict[str, set[str]] = {area: set() for area in ALLOWED}
    for path in _python_files():
        area = _area(path)
        used[area] |= {imported for imported, _ in _imported_areas(path) if imported != area}
    unused = {area: sorted(ALLOWED[area] - used[area]) for area in ALLOWED if ALLOWED[area] - used[area]}
    assert unused == {}, f"ALLOWED lists imports nothing makes; remove them: {unused}"


def test_computed_imports_are_listed() -> None:
    dynamic = {_rel(path) for path in _python_files() if _has_dynamic_import(ast.parse(path.read_text()))}
    assert sorted(dynamic - set(DYNAMIC_IMPORTS)) == [], "import_module with a computed name: list it here"
    assert sorted(set(DYNAMIC_IMPORTS) - dynamic) == [], "stale DYNAMIC_IMPORTS entries"


def test_nothing_outside_testing_imports_testing() -> None:
    for path in _python_files():
        if _area(path) == "testing":
            continue
        assert "testing" not in {a for a, _ in _imported_areas(path)}, f"{path} imports geode.testing"


def test_only_settings_read_environment() -> None:
    touching = {_rel(path): lines for path in _python_files() if (lines := _env_access(path))}
    touching.pop("runtime/settings.py", None)
    offenders = {path: lines for path, lines in touching.items() if path not in ENV_ACCESS}
    assert offenders == {}, (
        f"read settings through geode.runtime.settings.Settings, not os.environ: {offenders}"
    )
    assert sorted(set(ENV_ACCESS) - set(touching)) == [], "stale ENV_ACCESS entries"


def test_the_checks_see_every_form_of_import() -> None:
    # Guards the guard: each form below must be seen, else a lower layer could hide an import.
    source = (
        "import importlib\nimport os as o\nfrom os import getenv\nimport geode\n"
        "from geode import Runtime, __version__\n"
        "importlib.import_module('geode.agents.tools')\n"
        "geode.mine\n"
        "o.environ.get('X')\ngetenv('Y')\n"
    )
    tree = ast.parse(source)
    assert sorted(_imported_areas_in(tree, "probe.py")) == [("agents", 6), ("evals", 7), ("runtime", 5)]
    assert sorted(_env_access_in(tree)) == [8, 9]


def test_unit_tests_mirror_the_source_tree() -> None:
    # tests/unit/<path>/ holds the tests of src/geode/<path>/, so a module's tests are found by its path.
    unit = Path(__file__).resolve().parent
    folders = {
        path.relative_to(unit).as_posix()
        for path in unit.rglob("*")
        if path.is_dir() and path.name != "__pycache__" and any(path.glob("test_*.py"))
    }
    unmatched = sorted(folder for folder in folders if not (SRC / folder).is_dir())
    assert unmatched == [], f"tests/unit folders with no src/geode package of that path: {unmatched}"
