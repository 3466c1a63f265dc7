"""``geode.runtime.registry`` loads its names on first use; every name it exported eagerly still imports."""

from __future__ import annotations

import importlib

import pytest

from geode.runtime import registry


def test_every_exported_name_is_its_modules_object() -> None:
    assert set(registry.__all__) <= set(registry._EXPORTS)
    for name, module in registry._EXPORTS.items():
        assert getattr(registry, name) is getattr(importlib.import_module(module), name), name


def test_the_private_names_tests_and_the_demo_import_still_import() -> None:
    from geode.runtime.registry import (  # noqa: F401  (the import is the test)
        FORMAT,
        FORMAT_VERSION,
        MAX_FILE_BYTES,
        _atomic_write,
        _canonical,
        _sha256,
    )


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        registry.Nope  # noqa: B018
