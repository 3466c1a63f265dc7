"""Step schemas tightened for grammar-constrained decoding, and the adapters that apply them.

Only for local models (``Agent(grammar_schema=...)``): hosted structured-output APIs reject a
top-level ``anyOf`` and ``maxLength``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import dspy
import pydantic

from geode.adapters import SmallModelAdapter, schema_model
from geode.agents.step_schema import FINISH


class _GrammarAdapter(dspy.JSONAdapter):
    """``dspy.JSONAdapter`` tightening response schemas for grammar-constrained decoding (see :func:`_tighten`).

    Only for local models: hosted structured-output APIs reject a top-level ``anyOf`` and ``maxLength``.
    """

    def __init__(self, base: dspy.JSONAdapter, max_free_text_chars: int, *, no_finish: bool = False) -> None:
        super().__init__(
            callbacks=base.callbacks, use_native_function_calling=base.use_native_function_calling
        )
        self.max_free_text_chars = max_free_text_chars
        self.no_finish = no_finish

    def format_field_structure(self, signature: type[dspy.Signature]) -> str:
        """The field layout without the type notes.

        The grammar enforces the types, and small models copy the notes' JSON schemas into their text.
        """
        return _TYPE_NOTE.sub("", super().format_field_structure(signature))

    def _prepare_response_format(self, lm: Any, lm_kwargs: dict[str, Any], signature: Any) -> None:
        super()._prepare_response_format(lm, lm_kwargs, signature)
        current = lm_kwargs.get("response_format")
        if not (isinstance(current, type) and issubclass(current, pydantic.BaseModel)):
            return
        schema = _tighten(current.model_json_schema(), self.max_free_text_chars, no_finish=self.no_finish)
        lm_kwargs["response_format"] = schema_model(current.__name__, schema)


class _SmallGrammarAdapter(SmallModelAdapter):
    """:class:`~geode.adapters.SmallModelAdapter` with the agent's step schemas tightened (see :func:`_tighten`)."""

    def __init__(self, base: SmallModelAdapter, max_free_text_chars: int, *, no_finish: bool = False) -> None:
        super().__init__(
            callbacks=base.callbacks,
            text_max_tokens=base.text_max_tokens,
            lead_text_max_chars=base.lead_text_max_chars,
            stop_at_labels=base.stop_at_labels,
            reasoning=base.reasoning,
        )
        self.max_free_text_chars = max_free_text_chars
        self.no_finish = no_finish

    def response_schema(self, signature: type[dspy.Signature], lm: dspy.BaseLM) -> dict[str, Any]:
        """The adapter's schema, tightened for the agent's steps and extraction."""
        return _tighten(
            super().response_schema(signature, lm), self.max_free_text_chars, no_finish=self.no_finish
        )


def _tighten(
    schema: Mapping[str, Any], max_free_text_chars: int, *, no_finish: bool = False
) -> dict[str, Any]:
    """A step or extraction schema tightened for grammar-constrained decoding.

    - A step schema becomes a union of whole steps, one per tool. DSPy builds the schema field by
      field, so ``next_tool_name`` and ``next_tool_args`` are constrained separately and a small model
      may pair a tool with another tool's arguments; each alternative here fixes the name to one tool
      and the arguments to that tool's schema.
    - Free-text ``next_thought`` and ``reasoning`` get a ``maxLength``, so a model that starts
      repeating itself still closes the string and completes the reply instead of running into
      ``max_tokens`` mid-JSON. (In the schema only: the fields stay ``str``, which DSPy parses verbatim.)
    - With ``no_finish`` (the first step of an agent with ``tool_first``), the ``finish`` alternative is
      left out of a step schema, so the model can only call a tool.
    """
    tightened = copy.deepcopy(dict(schema))
    for name, prop in (tightened.get("properties") or {}).items():
        if name in _FREE_TEXT and isinstance(prop, dict) and prop.get("type") == "string":
            prop["maxLength"] = max_free_text_chars
    return _joint_step_schema(tightened, no_finish=no_finish) or tightened


_FREE_TEXT = frozenset({"next_thought", "reasoning"})
_TYPE_NOTE = re.compile(r" +# note: the value you produce [^\n]*?(?=\",?$)", re.MULTILINE)


def _joint_step_schema(schema: Mapping[str, Any], *, no_finish: bool = False) -> dict[str, Any] | None:
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not {"next_tool_name", "next_tool_args"} <= properties.keys():
        return None
    names = properties["next_tool_name"].get("enum")
    args = properties["next_tool_args"]
    options = args.get("anyOf", [args])
    if not isinstance(names, list) or len(names) != len(options):
        return None
    alternatives = [
        {
            "type": "object",
            "properties": {
                **properties,
                "next_tool_name": {"type": "string", "enum": [name]},
                "next_tool_args": option,
            },
            "required": list(properties),
            "additionalProperties": False,
        }
        for name, option in zip(names, options, strict=True)
        if not (no_finish and name == FINISH and len(names) > 1)
    ]
    joint: dict[str, Any] = {"anyOf": alternatives}
    if "$defs" in schema:
        joint["$defs"] = schema["$defs"]
    return joint
