from __future__ import annotations

from pathlib import Path

import dspy
import pytest

from geode.errors import ProgramNotFoundError
from geode.runtime.programs import register_program, registered_programs, resolve


class Echo(dspy.Module):
    def forward(self, text: str) -> dspy.Prediction:
        return dspy.Prediction(text=text)


instance = Echo()
not_a_module = 42


def factory() -> dspy.Module:
    return Echo()


def needs_args(x: int) -> dspy.Module:
    return Echo()


@pytest.mark.parametrize("attr", ["instance", "Echo", "factory"])
def test_module_attribute_references(attr: str) -> None:
    resolved = resolve(f"{__name__}:{attr}")
    assert isinstance(resolved.module, Echo)
    assert resolved.name == f"{__name__}:{attr}"


def test_module_instance_keeps_class_name() -> None:
    assert resolve(instance).name == "Echo"
    assert resolve(instance, name="echo").name == "echo"


def test_registered_names() -> None:
    register_program("echo-test", Echo)
    assert "echo-test" in registered_programs()
    assert isinstance(resolve("echo-test").module, Echo)
    with pytest.raises(ValueError, match="no ':'"):
        register_program("bad:name", Echo)


def test_file_references(tmp_path: Path) -> None:
    source = tmp_path / "prog.py"
    source.write_text("import dspy\nprogram = dspy.Predict('question -> answer')\n")
    resolved = resolve(f"{source}:program")
    assert isinstance(resolved.module, dspy.Predict)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nosuchthing", "unknown program 'nosuchthing'"),
        ("no_such_module_xyz:program", "module 'no_such_module_xyz' not found"),
        (f"{__name__}:missing", "has no attribute 'missing'"),
        (f"{__name__}:not_a_module", "is a int, not a dspy.Module"),
        (f"{__name__}:needs_args", "could not be called with no arguments"),
        (":x", "malformed"),
        ("missing_file.py:x", "no such file"),
    ],
)
def test_bad_references_say_why(ref: str, message: str) -> None:
    with pytest.raises(ProgramNotFoundError, match=message):
        resolve(ref)
