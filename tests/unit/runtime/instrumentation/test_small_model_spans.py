"""Spans of calls through SmallModelAdapter: the LLM span shows the prompt and the raw reply, parse errors too."""

from __future__ import annotations

from typing import Any

import dspy
import pytest
from dspy.utils.exceptions import AdapterParseError
from opentelemetry.trace import StatusCode
from tests.unit.runtime.instrumentation.conftest import Traced

from geode.adapters import SmallModelAdapter
from geode.testing import ScriptedLM

ADAPTER = SmallModelAdapter()


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


@pytest.mark.parametrize("local", [False, True], ids=["hosted", "local"])
def test_the_llm_span_shows_the_plain_prompt_and_the_raw_reply(traced: Traced, local: bool) -> None:
    lm = ScriptedLM([{"answer": "Paris"}], adapter=ADAPTER, local=local)
    with dspy.context(lm=lm, adapter=ADAPTER):
        dspy.Predict("context, question -> answer")(context="Paris is in France.", question="Capital?")
    llm = _attrs(traced.one("scripted"))
    assert llm["llm.input_messages.0.message.role"] == "system"
    assert llm["llm.input_messages.1.message.content"] == "Context: Paris is in France.\n\nQuestion: Capital?"
    assert llm["llm.output_messages.0.message.content"] == "Paris"
    assert traced.one("Predict").status.status_code is StatusCode.OK


@pytest.mark.parametrize("local", [False, True], ids=["hosted", "local"])
def test_an_unparseable_reply_is_on_the_llm_span_and_the_error_on_the_module_span(
    traced: Traced, local: bool
) -> None:
    lm = ScriptedLM([{"count": "many", "unit": "x"}], adapter=ADAPTER, local=local)
    with dspy.context(lm=lm, adapter=ADAPTER), pytest.raises(AdapterParseError) as raised:
        dspy.Predict("text -> count: int, unit")(text="t")
    assert raised.value.lm_response == '{"count": "many", "unit": "x"}'
    llm = _attrs(traced.one("scripted"))
    assert llm["llm.output_messages.0.message.content"] == '{"count": "many", "unit": "x"}'
    module = traced.one("Predict")
    assert module.status.status_code is StatusCode.ERROR
    assert any(event.name == "exception" for event in module.events)
