"""Structural choices a recompile may make on a crystallized workflow, kept in its saved state.

DSPy's saved state of a program holds its predictors' instructions and demos, nothing of its structure;
a crystallized workflow's structure is its spec. Two structural choices matter on a small local model
and are cheap to keep beside the predictors' state (under :data:`STATE_KEY` in ``dump_state``), so a
registry version reproduces them exactly:

* ``passages``: how many of the numbered passages a tool returns (``[1] ...``, the format of
  :func:`geode.search_tool <geode.agents.tools.search_tool>`) the workflow keeps. On SmolLM2-135M one
  passage answered about as many training questions as two at a third of the time per question.
* ``tool_results_first``: an LM step reads the tool results before the workflow's inputs, so the
  question comes last, next to the reply (the layout of a hand-written retrieve-then-answer program).
  Whether it helps depends on the model; a recompile measures it.

The default shape is the workflow as crystallized, and its state carries no :data:`STATE_KEY`, so the
versions of workflows saved before shapes existed keep their ids.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import dspy
from dspy.signatures.signature import make_signature

from geode.errors import ProgramLoadError

__all__ = ["STATE_KEY", "WorkflowShape", "first_passages", "reorder_inputs"]

STATE_KEY = "geode:shape"
"""The key of the shape in a crystallized workflow's ``dump_state``."""

# A passage starts a line with its rank in brackets: "[1] text" or "[1] (id) text".
_PASSAGE = re.compile(r"(?m)^\[(\d+)\] ")


@dataclass(frozen=True)
class WorkflowShape:
    """How a crystallized workflow feeds its tool results to its LM steps.

    Attributes:
        passages: Keep only the first ``passages`` numbered passages of each tool result (``None``:
            all of them). A result that is not a list of numbered passages is kept whole.
        tool_results_first: LM steps that read a tool's result read it before the workflow's inputs.
    """

    passages: int | None = None
    tool_results_first: bool = False

    def __post_init__(self) -> None:
        if self.passages is not None and (isinstance(self.passages, bool) or self.passages < 1):
            raise ValueError(f"passages must be at least 1 (or None for all), got {self.passages!r}")

    @property
    def is_default(self) -> bool:
        """The workflow as crystallized."""
        return self == WorkflowShape()

    def to_state(self) -> dict[str, Any]:
        """JSON for the workflow's saved state."""
        return {"passages": self.passages, "tool_results_first": self.tool_results_first}

    @classmethod
    def from_state(cls, value: object) -> WorkflowShape:
        """The shape a saved state holds (``None``: the default).

        Raises:
            ProgramLoadError: The value is not a shape this version of Geode wrote.
        """
        if value is None:
            return cls()
        if not isinstance(value, Mapping) or set(value) - {"passages", "tool_results_first"}:
            raise ProgramLoadError(f"the saved workflow shape {value!r} is not one Geode writes")
        passages = value.get("passages")
        first = value.get("tool_results_first", False)
        if (passages is not None and (not isinstance(passages, int) or isinstance(passages, bool))) or (
            not isinstance(first, bool)
        ):
            raise ProgramLoadError(f"the saved workflow shape {dict(value)!r} has a value of the wrong type")
        try:
            return cls(passages=passages, tool_results_first=first)
        except ValueError as err:
            raise ProgramLoadError(f"the saved workflow shape is invalid: {err}") from None

    def describe(self) -> str:
        """A short phrase for logs and reports, e.g. ``1 passage per tool result, tool results first``."""
        parts = []
        if self.passages is not None:
            parts.append(f"{self.passages} passage{'s' if self.passages != 1 else ''} per tool result")
        if self.tool_results_first:
            parts.append("tool results first")
        return ", ".join(parts) or "as crystallized"


def first_passages(text: str, n: int | None) -> str:
    """The first ``n`` numbered passages of a tool result (``[1] ...``); other text is returned whole."""
    if n is None:
        return text
    starts = [m.start() for m in _PASSAGE.finditer(text)]
    # Only a result that *is* a list of passages is cut: text that merely contains "[2] " stays whole.
    if len(starts) <= n or starts[0] != 0:
        return text
    return text[: starts[n]].rstrip()


def reorder_inputs(signature: type[dspy.Signature], order: Sequence[str]) -> type[dspy.Signature]:
    """``signature`` with its inputs in ``order`` (inputs it does not name follow, as they were).

    Instructions, field descriptions and prefixes are kept, so a signature whose instructions a
    recompile changed keeps them. Outputs are unchanged.
    """
    inputs = list(signature.input_fields)
    named = [n for n in order if n in signature.input_fields]
    new_order = named + [n for n in inputs if n not in named]
    if new_order == inputs:
        return signature
    every = {**{n: signature.fields[n] for n in new_order}, **signature.output_fields}
    # pydantic types a field's annotation loosely; a signature field always has one.
    fields: dict[str, tuple[type, Any]] = {
        name: (cast(type, info.annotation), info) for name, info in every.items()
    }
    return make_signature(fields, signature.instructions)
