"""Dependency floors: versions with what the code calls and without the published advisories."""

from __future__ import annotations

import inspect
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    lines = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    found = [Requirement(line) for line in lines]
    return {r.name: r for r in found if not r.name.startswith("geode")}


def test_floors_exclude_versions_without_what_the_code_needs_or_with_advisories() -> None:
    requirements = _requirements()
    # (name, a version that must be refused, the floor that must be allowed)
    for name, refused, allowed in (
        ("uvicorn", "0.44.0", "0.45.0"),  # `geode serve` passes reset_contextvars (uvicorn 0.45)
        ("pypdf", "6.21.4", "7.0.0"),  # crafted-PDF denial-of-service advisories fixed up to 7.0
        ("regex", "2020.1.8", "2024.11.6"),  # spec regexes run with timeout=
    ):
        specifier = requirements[name].specifier
        assert Version(refused) not in specifier, (name, str(specifier))
        assert Version(allowed) in specifier, (name, str(specifier))
    litellm = requirements["litellm"].specifier
    for compromised in ("1.82.7", "1.82.8", "1.107.0"):  # published with stolen credentials
        assert Version(compromised) not in litellm, compromised


def test_the_installed_uvicorn_has_reset_contextvars() -> None:
    import uvicorn

    assert "reset_contextvars" in inspect.signature(uvicorn.Config).parameters
