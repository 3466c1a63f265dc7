"""SmallModelAdapter: the prompt it writes, what it sends, and how it reads every kind of reply."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, Literal

import dspy
import pydantic
import pytest
from dspy.signatures.signature import make_signature
from dspy.utils.callback import BaseCallback
from dspy.utils.exceptions import AdapterParseError

from geode.adapters import SmallModelAdapter
from geode.adapters.small import text_token_cap
from geode.testing import ScriptedLM


class Address(pydantic.BaseModel):
    city: str
    zip_code: str


class Extract(dspy.Signature):
    """Extract the contact's details."""

    message: str = dspy.InputField()
    name: str = dspy.OutputField()
    age: int = dspy.OutputField(desc="in years")
    score: float = dspy.OutputField()
    member: bool = dspy.OutputField()
    tags: list[str] = dspy.OutputField()
    address: Address = dspy.OutputField()
    tier: Literal["gold", "silver"] = dspy.OutputField()


class ContextQA(dspy.Signature):
    """Answer from the passages with a few words."""

    context: str = dspy.InputField(desc="passages")
    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


class LMCalls(BaseCallback):
    """The keyword arguments of every LM call (``response_format``, ``stop``...) as DSPy passes them."""

    def __init__(self) -> None:
        self.kwargs: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with self._lock:
            self.kwargs.append(dict(inputs.get("kwargs") or {}))


ADAPTER = SmallModelAdapter()


def predict(
    signature: Any, lm: ScriptedLM, *, demos: list[Any] | None = None, **inputs: Any
) -> dspy.Prediction:
    program = dspy.Predict(signature)
    program.demos = list(demos or [])
    with dspy.context(lm=lm, adapter=ADAPTER):
        return program(**inputs)


# -- the prompt ------------------------------------------------------------------------------------


def test_the_prompt_is_the_instructions_and_labelled_inputs_without_markers() -> None:
    messages = ADAPTER.format(
        ContextQA, [], {"context": "Reno ships orders.\nDenver rents tents.", "question": "Who ships?"}
    )
    assert messages == [
        {"role": "system", "content": "Answer from the passages with a few words."},
        {
            "role": "user",
            "content": "Context:\nReno ships orders.\nDenver rents tents.\n\nQuestion: Who ships?",
        },
    ]
    text = json.dumps(messages)
    assert "[[ ##" not in text and "{answer}" not in text and "JSON" not in text


def test_labels_come_from_the_field_names_and_lists_are_numbered() -> None:
    signature = make_signature(
        {
            "excerpts": (list[str], dspy.InputField()),
            "user_query": (str, dspy.InputField()),
            "reply": (str, dspy.OutputField()),
        },
        "Reply.",
    )
    user = ADAPTER.format(signature, [], {"excerpts": ["one", "two"], "user_query": "why?"})[-1]["content"]
    assert user == "Excerpts:\n[1] one\n[2] two\n\nUser Query: why?"


def test_a_json_reply_is_asked_for_by_keys_and_types_not_by_a_template() -> None:
    system = ADAPTER.format(Extract, [], {"message": "hi"})[0]["content"]
    assert system.startswith("Extract the contact's details.\n\nReply with a JSON object with the keys ")
    assert '"age" (an integer: in years)' in system
    assert '"tier" (one of "gold", "silver")' in system
    assert '"tags" (a list of text)' in system and '"member" (true or false)' in system
    assert '"address" (an object with "city", "zip_code")' in system
    assert "{name}" not in system and "schema" not in system


def test_rewritten_instructions_land_in_the_system_message() -> None:
    program = dspy.Predict(ContextQA)
    # What MIPROv2 and GEPA do to a predictor they improve.
    program.signature = ContextQA.with_instructions("Quote the passage verbatim.")
    lm = ScriptedLM([{"answer": "Reno"}], adapter=ADAPTER)
    with dspy.context(lm=lm, adapter=ADAPTER):
        assert program(context="Reno ships.", question="Who?").answer == "Reno"
    assert lm.calls[0].messages[0] == {"role": "system", "content": "Quote the passage verbatim."}


def test_demos_are_earlier_turns_in_the_same_shape() -> None:
    demos = [
        dspy.Example(context="Oslo is cold.", question="Is Oslo cold?", answer="yes"),
        dspy.Example(question="Capital of Peru?", answer="Lima"),  # a missing input is left out
        dspy.Example(context="no answer here", question="?"),  # no output: not a usable demo
    ]
    lm = ScriptedLM([{"answer": "Reno"}], adapter=ADAPTER)
    predict(ContextQA, lm, demos=demos, context="Reno ships.", question="Who ships?")
    assert lm.calls[0].messages[1:] == [
        {"role": "user", "content": "Context: Oslo is cold.\n\nQuestion: Is Oslo cold?"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "Question: Capital of Peru?"},
        {"role": "assistant", "content": "Lima"},
        {"role": "user", "content": "Context: Reno ships.\n\nQuestion: Who ships?"},
    ]


def test_json_demos_show_the_outputs_they_have() -> None:
    cot = dspy.ChainOfThought("question -> answer: int")
    cot.predict.demos = [dspy.Example(question="2+2?", answer=4)]  # labelled: no reasoning
    lm = ScriptedLM([{"reasoning": "3 and 4", "answer": 7}], adapter=ADAPTER)
    with dspy.context(lm=lm, adapter=ADAPTER):
        assert cot(question="3+4?").answer == 7
    assert lm.calls[0].messages[1:3] == [
        {"role": "user", "content": "Question: 2+2?"},
        {"role": "assistant", "content": '{"answer": 4}'},
    ]


def test_history_becomes_earlier_turns() -> None:
    signature = make_signature("history: dspy.History, question -> answer", "Chat.")
    history = dspy.History(messages=[{"question": "Hi?", "answer": "Hello."}])
    lm = ScriptedLM([{"answer": "Fine."}], adapter=ADAPTER)
    predict(signature, lm, history=history, question="How are you?")
    assert [m["content"] for m in lm.calls[0].messages[1:]] == [
        "Question: Hi?",
        "Hello.",
        "Question: How are you?",
    ]


# -- what is sent ----------------------------------------------------------------------------------


def test_a_text_reply_stops_at_the_input_labels_and_sends_no_schema() -> None:
    calls = LMCalls()
    lm = ScriptedLM([{"answer": "Reno"}], adapter=ADAPTER, local=True)
    with dspy.context(lm=lm, adapter=ADAPTER, callbacks=[calls]):
        dspy.Predict(ContextQA)(context="c", question="q")
    assert calls.kwargs[0]["stop"] == ["\nContext:", "\nQuestion:"]
    assert "response_format" not in calls.kwargs[0]


def test_no_stop_strings_for_an_lm_that_declares_it_takes_none() -> None:
    class NoStopLM(ScriptedLM):
        @property
        def supported_params(self) -> set[str]:
            return {"max_tokens"}

    calls = LMCalls()
    with dspy.context(lm=NoStopLM([{"answer": "Reno"}], adapter=ADAPTER), adapter=ADAPTER, callbacks=[calls]):
        assert dspy.Predict(ContextQA)(context="c", question="q").answer == "Reno"
    assert "stop" not in calls.kwargs[0]


def test_text_max_tokens_caps_a_text_reply_below_the_lms_own_cap() -> None:
    calls = LMCalls()
    lm = ScriptedLM([{"answer": "a"}, {"answer": "b"}], adapter=ADAPTER)
    for cap, lm_cap, expected in ((24, 1000, 24), (2000, 1000, 1000)):
        with dspy.context(lm=lm, adapter=SmallModelAdapter(text_max_tokens=cap), callbacks=[calls]):
            dspy.Predict(ContextQA, max_tokens=lm_cap)(context="c", question="q")
        assert calls.kwargs[-1]["max_tokens"] == expected


class ShortQA(dspy.Signature):
    """Answer from the passages with a few words."""

    context: str = dspy.InputField()
    question: str = dspy.InputField()
    answer: str = dspy.OutputField(max_length=100)


@pytest.mark.parametrize(
    ("adapter", "lm_cap", "expected"),
    [
        (SmallModelAdapter(), 512, 34),  # 100 characters at 3 per token, rounded up
        (SmallModelAdapter(), 20, 20),  # the LM's own lower cap stays
        (SmallModelAdapter(text_max_tokens=10), 512, 10),  # so does the adapter's
    ],
)
def test_a_declared_max_length_caps_a_text_reply(
    adapter: SmallModelAdapter, lm_cap: int, expected: int
) -> None:
    calls = LMCalls()
    lm = ScriptedLM([{"answer": "Reno"}], adapter=adapter, local=True)
    with dspy.context(lm=lm, adapter=adapter, callbacks=[calls]):
        assert dspy.Predict(ShortQA, max_tokens=lm_cap)(context="c", question="q").answer == "Reno"
    assert calls.kwargs[0]["max_tokens"] == expected


def test_without_a_declared_length_a_text_reply_keeps_the_lms_cap() -> None:
    calls = LMCalls()
    lm = ScriptedLM([{"answer": "Reno"}], adapter=ADAPTER, local=True)
    with dspy.context(lm=lm, adapter=ADAPTER, callbacks=[calls]):
        dspy.Predict(ContextQA, max_tokens=512)(context="c", question="q")
    assert calls.kwargs[0]["max_tokens"] == 512
    assert text_token_cap(ContextQA) is None


def test_a_declared_length_of_a_json_field_is_in_the_schema_not_a_token_cap() -> None:
    signature = make_signature(
        {
            "question": (str, dspy.InputField()),
            "answer": (str, dspy.OutputField(max_length=50)),
            "sure": (bool, dspy.OutputField()),
        },
        "Answer.",
    )
    assert text_token_cap(signature) is None
    schema = ADAPTER.response_schema(signature, ScriptedLM([], local=True))
    assert schema["properties"]["answer"]["maxLength"] == 50


def test_typed_outputs_send_the_schema_in_field_order_and_cap_leading_text_on_local_lms() -> None:
    calls = LMCalls()
    reply = {"reasoning": "because", "answer": 3}
    keep = SmallModelAdapter(reasoning="keep")
    for local in (True, False):
        lm = ScriptedLM([reply], adapter=keep, local=local)
        with dspy.context(lm=lm, adapter=keep, callbacks=[calls]):
            assert dspy.ChainOfThought("question -> answer: int")(question="?").answer == 3
    local_format = calls.kwargs[0]["response_format"]
    schema = local_format.model_json_schema()
    assert list(schema["properties"]) == schema["required"] == ["reasoning", "answer"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["reasoning"] == {"type": "string", "maxLength": 400}
    assert schema["properties"]["answer"] == {"type": "integer"}
    # An LM that is not a grammar-decoding local model gets no response_format it did not declare.
    assert "response_format" not in calls.kwargs[1]


def test_nested_models_and_open_mappings_in_the_schema() -> None:
    class Profile(dspy.Signature):
        """Profile."""

        text: str = dspy.InputField()
        address: Address = dspy.OutputField()
        extra: dict[str, Any] = dspy.OutputField()

    schema = ADAPTER.response_schema(Profile, ScriptedLM([], local=True))
    address = schema["$defs"]["Address"]
    assert address["required"] == ["city", "zip_code"] and address["additionalProperties"] is False
    # An open mapping stays open (closing it would force {}).
    assert schema["properties"]["extra"].get("additionalProperties", True) is not False


# -- parsing ---------------------------------------------------------------------------------------


def test_every_output_kind_parses_into_its_type() -> None:
    reply = {
        "name": "Ada",
        "age": 36,
        "score": 0.5,
        "member": True,
        "tags": ["vip", "new"],
        "address": {"city": "Reno", "zip_code": "89501"},
        "tier": "gold",
    }
    pred = predict(Extract, ScriptedLM([reply], adapter=ADAPTER), message="...")
    assert (pred.name, pred.age, pred.score, pred.member, pred.tags, pred.tier) == (
        "Ada",
        36,
        0.5,
        True,
        ["vip", "new"],
        "gold",
    )
    assert pred.address == Address(city="Reno", zip_code="89501")


@pytest.mark.parametrize(
    ("annotation", "reply", "expected"),
    [
        (Literal["positive", "negative"], "positive", "positive"),
        (Literal["positive", "negative"], '{"label": "negative"}', "negative"),
        (int, "42", 42),
        (float, '{"label": 2.5}', 2.5),
        (bool, "true", True),
        (list[str], '["a", "b"]', ["a", "b"]),
        (Address, '{"city": "Oslo", "zip_code": "0150"}', Address(city="Oslo", zip_code="0150")),
        (int, '```json\n{"label": 7}\n```', 7),
        (int, 'Sure! {"label": 8} is my answer.', 8),
    ],
)
def test_a_single_typed_output_accepts_the_object_or_the_bare_value(
    annotation: Any, reply: str, expected: Any
) -> None:
    signature = make_signature(
        {"text": (str, dspy.InputField()), "label": (annotation, dspy.OutputField())}, "Label."
    )
    assert ADAPTER.parse(signature, reply) == {"label": expected}


def test_a_text_reply_is_the_value_without_an_echoed_label() -> None:
    assert ADAPTER.parse(ContextQA, "  Answer: Reno, Nevada \n") == {"answer": "Reno, Nevada"}
    assert ADAPTER.parse(ContextQA, "Reno") == {"answer": "Reno"}
    # JSON in a text reply is the model's text, not a template to unwrap.
    assert ADAPTER.parse(ContextQA, '{"answer": "x"}') == {"answer": '{"answer": "x"}'}


@pytest.mark.parametrize(
    ("signature", "reply", "message"),
    [
        (ContextQA, "   ", "empty"),
        ("text -> a: int, b: str", '{"a": 1}', "lacks `b`"),
        ("text -> a: int, b: str", '{"a": "many", "b": "x"}', "`a` has the wrong type"),
        ("text -> a: int, b: str", "no object at all", "no JSON object"),
        ("text -> label: int", "forty", "not a valid value for `label`"),
    ],
)
def test_an_unreadable_reply_is_a_parse_error_with_the_raw_text(
    signature: Any, reply: str, message: str
) -> None:
    resolved = make_signature(signature) if isinstance(signature, str) else signature
    with pytest.raises(AdapterParseError) as info:
        ADAPTER.parse(resolved, reply)
    assert message in str(info.value)
    assert info.value.lm_response == reply
    assert info.value.adapter_name == "SmallModelAdapter"


def test_a_parse_error_reaches_the_caller_instead_of_a_wrong_value() -> None:
    lm = ScriptedLM([{"a": "many", "b": "x"}], adapter=ADAPTER)
    with pytest.raises(AdapterParseError):
        predict("text -> a: int, b: str", lm, text="t")


def test_optional_outputs_may_be_missing() -> None:
    signature = make_signature("text -> a: int, b: str | None", "Do.")
    assert ADAPTER.parse(signature, '{"a": 1}') == {"a": 1, "b": None}


# -- modules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("local", [False, True], ids=["hosted", "local"])
def test_async_calls_go_through_the_adapter(local: bool) -> None:
    lm = ScriptedLM([{"answer": "Reno"}], adapter=ADAPTER, local=local)

    async def go() -> dspy.Prediction:
        with dspy.context(lm=lm, adapter=ADAPTER):
            return await dspy.Predict(ContextQA).acall(context="c", question="q")

    assert asyncio.run(go()).answer == "Reno"
    assert lm.calls[0].messages[-1]["content"] == "Context: c\n\nQuestion: q"


def test_chain_of_thought_reasons_first_then_answers() -> None:
    # Not a small local model: "auto" keeps the rationale as the reply's first field.
    lm = ScriptedLM([{"reasoning": "Reno ships.", "answer": "Reno"}], adapter=ADAPTER)
    with dspy.context(lm=lm, adapter=ADAPTER):
        pred = dspy.ChainOfThought(ContextQA)(context="Reno ships.", question="Who ships?")
    assert (pred.reasoning, pred.answer) == ("Reno ships.", "Reno")
    assert '"reasoning" (text), "answer" (text)' in lm.calls[0].messages[0]["content"]


@pytest.mark.parametrize(
    ("reasoning", "local", "omitted"),
    [("auto", True, True), ("auto", False, False), ("omit", False, True), ("keep", True, False)],
)
def test_chain_of_thought_rationale_is_left_out_for_small_local_models(
    reasoning: Literal["auto", "omit", "keep"], local: bool, omitted: bool
) -> None:
    adapter = SmallModelAdapter(reasoning=reasoning)
    reply = {"answer": "Reno"} if omitted else {"reasoning": "Reno ships.", "answer": "Reno"}
    lm = ScriptedLM([reply], adapter=adapter, local=local)
    calls = LMCalls()
    with dspy.context(lm=lm, adapter=adapter, callbacks=[calls]):
        pred = dspy.ChainOfThought(ContextQA)(context="Reno ships.", question="Who ships?")
    system = lm.calls[0].messages[0]["content"]
    if omitted:
        # The prompt and reply of the signature without the rationale: one text answer, plain text, the
        # stops of a text reply; the prediction still has the field, empty, for programs that read it.
        assert system == ContextQA.instructions and "reasoning" not in lm.calls[0].messages[-1]["content"]
        assert "response_format" not in calls.kwargs[0] and "stop" in calls.kwargs[0]
        assert (pred.reasoning, pred.answer) == ("", "Reno")
    else:
        assert '"reasoning" (text), "answer" (text)' in system
        assert (pred.reasoning, pred.answer) == ("Reno ships.", "Reno")


def test_an_omitted_rationale_keeps_typed_answers_under_the_schema_and_demos_without_it() -> None:
    calls = LMCalls()
    lm = ScriptedLM([{"answer": 3}], adapter=ADAPTER, local=True)
    program = dspy.ChainOfThought("question -> answer: int")
    program.predict.demos = [dspy.Example(question="1+1?", reasoning="One and one.", answer=2)]
    with dspy.context(lm=lm, adapter=ADAPTER, callbacks=[calls]):
        pred = program(question="1+2?")
    assert (pred.reasoning, pred.answer) == ("", 3)
    schema = calls.kwargs[0]["response_format"].model_json_schema()
    assert list(schema["properties"]) == ["answer"]
    # The bootstrapped demo's rationale is not shown either: the model would imitate it.
    assert lm.calls[0].messages[1:3] == [
        {"role": "user", "content": "Question: 1+1?"},
        {"role": "assistant", "content": '{"answer": 2}'},
    ]


def test_a_lone_output_named_like_the_rationale_is_an_answer() -> None:
    lm = ScriptedLM([{"reasoning": "Because."}], adapter=ADAPTER, local=True)
    with dspy.context(lm=lm, adapter=ADAPTER):
        assert dspy.Predict("question -> reasoning")(question="Why?").reasoning == "Because."


def test_async_chain_of_thought_omits_the_rationale_too() -> None:
    lm = ScriptedLM([{"answer": "Reno"}], adapter=ADAPTER, local=True)

    async def go() -> dspy.Prediction:
        with dspy.context(lm=lm, adapter=ADAPTER):
            return await dspy.ChainOfThought(ContextQA).acall(context="c", question="q")

    pred = asyncio.run(go())
    assert (pred.reasoning, pred.answer) == ("", "Reno")


def test_the_reasoning_option_is_checked() -> None:
    with pytest.raises(ValueError, match="reasoning must be"):
        SmallModelAdapter(reasoning="short")  # type: ignore[arg-type]
