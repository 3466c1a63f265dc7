"""Output schema -> llama.cpp grammar, for the schemas DSPy's JSONAdapter actually sends (no model needed)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import dspy
import pydantic
import pytest
from dspy.lm15 import Message, Request, Response, TextPart, UnsupportedFeatureError, Usage
from tests.tiers import require_tier

from geode.errors import ModelFileError
from geode.runtime.lm._llama import (
    SUPPORTED_PARAMS,
    ModelSpec,
    _build_grammar,
    json_schema_grammar,
    load_model,
)

pytestmark = pytest.mark.localmodel
require_tier("localmodel", import_name="llama_cpp")


class Person(pydantic.BaseModel):
    name: str
    age: int


class Extract(dspy.Signature):
    """Extract facts."""

    text: str = dspy.InputField()
    label: Literal["spam", "ham"] = dspy.OutputField()
    urgent: bool = dspy.OutputField()
    count: int = dspy.OutputField()
    tags: list[str] = dspy.OutputField()
    people: list[Person] = dspy.OutputField()


class _SchemaCapture:
    """A minimal engine declaring the same capabilities as LlamaCppEngine; records what DSPy sends."""

    supports_response_schema = True
    supported_params = SUPPORTED_PARAMS

    def __init__(self) -> None:
        self.requests: list[Request] = []

    def complete(self, request: Request) -> Response:
        self.requests.append(request)
        text = '{"label": "spam", "urgent": true, "count": 2, "tags": ["a"], "people": [{"name": "Al", "age": 3}]}'
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant([TextPart(text)]),
            finish_reason="stop",
            usage=Usage(input_tokens=1, output_tokens=1),
        )


def _schema_dspy_sends(signature: type[dspy.Signature]) -> dict[str, Any]:
    engine = _SchemaCapture()
    lm = dspy.LM("local/capture", engine=engine, cache=False)
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        dspy.Predict(signature)(text="x")
    response_format = engine.requests[-1].config.response_format
    assert response_format is not None
    assert response_format["type"] == "json_schema"
    return response_format


def test_jsonadapter_sends_the_output_schema_to_an_engine_with_our_capabilities() -> None:
    response_format = _schema_dspy_sends(Extract)
    assert set(response_format["schema"]["properties"]) == {"label", "urgent", "count", "tags", "people"}


def test_the_grammar_pins_field_order_enums_and_types() -> None:
    grammar = json_schema_grammar(_schema_dspy_sends(Extract)["schema"])
    rules = dict(line.split(" ::= ", 1) for line in grammar.splitlines() if " ::= " in line)
    assert (
        rules["root"].index("label-kv") < rules["root"].index("urgent-kv") < rules["root"].index("people-kv")
    )
    assert rules["label"] == '"\\"spam\\"" | "\\"ham\\""'
    assert rules["boolean"].startswith('("true" | "false")')
    assert "integer" in rules["count-kv"]
    assert "Person" in grammar  # nested model resolved through $defs/$ref


def test_an_unconvertible_schema_is_refused_by_the_converter_and_degrades_to_any_json(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = {"type": "object", "properties": {"a": {"$ref": "https://example.com/schema.json"}}}
    with pytest.raises(UnsupportedFeatureError, match=r"cannot be turned into a llama\.cpp grammar"):
        json_schema_grammar(bad)
    with caplog.at_level(logging.WARNING, logger="geode.runtime.lm._llama"):
        grammar = _build_grammar({"type": "json_schema", "schema": bad})
    assert "constraining to any JSON" in caplog.text
    assert "root" in grammar._grammar


def test_a_corrupt_gguf_file_is_a_model_file_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\xff" * 64)
    with pytest.raises(ModelFileError) as info:
        load_model(ModelSpec(path=corrupt, context_size=256, threads=1))
    assert "llama.cpp could not load" in str(info.value)
    assert "\n" not in str(info.value)
