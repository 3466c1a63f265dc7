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
