"""Structured output for llama.cpp: a canonical ``response_format`` in llama.cpp's spelling, a schema as GBNF.

The compiled ``LlamaGrammar`` is built and cached per loaded model (:mod:`geode.runtime.lm._llama`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dspy.lm15 import UnsupportedFeatureError

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)


def llama_response_format(response_format: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Convert a canonical lm15 ``response_format`` to llama-cpp-python's spelling.

    ``{"type": "json_schema", "schema": S, ...}`` becomes ``{"type": "json_object", "schema": S}`` (which
    llama.cpp compiles to a grammar); ``{"type": "json_object"}`` stays any-JSON; ``None`` means free text.

    Raises:
        UnsupportedFeatureError: An unknown ``type``.
    """
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = response_format.get("schema")
        if not isinstance(schema, Mapping):
            raise UnsupportedFeatureError(
                "response_format json_schema needs a 'schema' object", feature="config.response_format"
            )
        return {"type": "json_object", "schema": dict(schema)}
    raise UnsupportedFeatureError(
        f"response_format type {kind!r} is not supported by the local model", feature="config.response_format"
    )


def json_schema_grammar(schema: Mapping[str, Any]) -> str:
    """The GBNF grammar llama.cpp uses to constrain decoding to ``schema``.

    Raises:
        UnsupportedFeatureError: The schema uses constructs llama.cpp's converter cannot express.
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises bare Exception/ValueError/KeyError on odd schemas
        raise UnsupportedFeatureError(
            f"the output schema cannot be turned into a llama.cpp grammar: {exc}",
            feature="config.response_format.schema",
        ) from exc
