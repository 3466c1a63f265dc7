"""requirements.lock stays in step with pyproject.toml: every declared requirement has a pin that satisfies it."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: not a name==version pin: {line!r}"
            assert canonicalize_name(name) not in pins, f"requirements.lock pins {name} twice"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines.extend(extra)
    return [Requirement(line) for line in lines if not line.startswith(f"{project['name']}[")]


def test_every_declared_requirement_is_pinned_within_its_range() -> None:
    pins = _pins()
    problems = []
    for requirement in _declared():
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement} is not in requirements.lock")
        elif not requirement.specifier.contains(pin, prereleases=True):
            problems.append(f"{requirement}: requirements.lock pins {pin}")
    assert problems == [], "run `make lock` after changing pyproject.toml:\n" + "\n".join(problems)


def test_the_lock_pins_the_cpu_torch_and_the_llama_cpp_that_install_sh_builds() -> None:
    pins = _pins()
    # scripts/install.sh installs torch==2.13.0 (the CPU wheel on this machine's disk) before anything else.
    assert pins["torch"].base_version == "2.13.0"
    assert "llama-cpp-python" in pins and "pip" in pins
