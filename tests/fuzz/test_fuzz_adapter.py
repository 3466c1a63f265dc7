"""Fuzzing SmallModelAdapter's reply parsing and streaming (plan row T44, and T15's parser half).

Must hold for any reply text: parsing returns exactly the signature's output fields, with values of their
types, or raises ``AdapterParseError`` (which the server answers as 502 ``lm_output_unparseable``); no other
exception, and each reply is handled in bounded time. Streaming the same reply never raises, and for a
``str`` field what it streams is what parsing returns.
"""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace
from typing import Any, Literal

import dspy
import pytest
from dspy.signatures.signature import ensure_signature
from dspy.utils.exceptions import AdapterParseError
from tests.tiers import require_tier

from geode.adapters import SmallModelAdapter
from geode.adapters.streaming import SmallModelStreamListener

from .conftest import Timings

pytestmark = pytest.mark.fuzz
require_tier("fuzz", import_name="hypothesis")

from hypothesis import example, given  # noqa: E402  (after the tier check: a missing hypothesis skips, named)
from hypothesis import strategies as st  # noqa: E402

ADAPTER = SmallModelAdapter()
# Per reply, on a loaded 2-core machine; replies here are up to ~60,000 characters (an LM's max_tokens
# bounds a real reply well below that).
BOUND_S = 1.0


class Triage(dspy.Signature):
    """Triage a message."""

    message: str = dspy.InputField()
    label: Literal["spam", "ham"] = dspy.OutputField()
    urgent: bool = dspy.OutputField()
    count: int = dspy.OutputField()
    tags: list[str] = dspy.OutputField()


def _signature(text: str) -> type[dspy.Signature]:
    found = ensure_signature(text)
    assert found is not None
    return found


SIGNATURES: dict[str, type[dspy.Signature]] = {
    "plain": _signature("question -> answer"),
    "one int": _signature("question -> count: int"),
    "one list": _signature("question -> tags: list[str]"),
    "reasoning + answer": _signature("question -> reasoning, answer"),
    "typed": Triage,
}

# Every code point, lone surrogates included (an LM server can emit them when it cuts a multi-byte char).
any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=400)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=20,
)


@st.composite
def field_objects(draw: st.DrawFn) -> str:
    """A JSON object with some of the signatures' field names, values of any type, maybe cut short."""
    names = ["answer", "reasoning", "count", "tags", "label", "urgent", "extra"]
    obj = draw(st.dictionaries(st.sampled_from(names), json_values, max_size=6))
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return text


@st.composite
def pathological(draw: st.DrawFn) -> str:
    """Long runs of what parsers recurse or backtrack on: brackets, quotes, digits, escapes."""
    unit = draw(st.sampled_from(["{", "[", '{"a":', '"', "\\", "9", "(", "{}", '{"label": [', "```"]))
    return unit * draw(st.integers(1, 20_000)) + draw(st.sampled_from(["", "}", "]", '"', "}" * 50]))


@st.composite
def replies(draw: st.DrawFn) -> str:
    """What a model might send back: prose, JSON fields, fences, truncation, garbage, huge numbers."""
    core = draw(
        st.one_of(
            any_text,
            field_objects(),
            json_values.map(json.dumps),
            pathological(),
            st.integers(4000, 6000).map(lambda n: "7" * n),  # past int()'s 4,300-digit limit
            st.binary(max_size=300).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
        )
    )
    prefix = draw(st.sampled_from(["", "Sure! Here is the answer:\n", "```json\n", "Answer: ", "  "]))
    suffix = draw(st.sampled_from(["", "\n```", " Hope this helps.", "}"]))
    return prefix + core + suffix


def _check_parsed(signature: type[dspy.Signature], parsed: dict[str, Any]) -> None:
    assert set(parsed) == set(signature.output_fields), parsed
    for name, info in signature.output_fields.items():
        annotation = info.annotation
        if annotation is str:
            assert isinstance(parsed[name], str)
        elif annotation is int:
            assert isinstance(parsed[name], int)
        elif annotation is bool:
            assert isinstance(parsed[name], bool)
        elif annotation == list[str]:
            assert isinstance(parsed[name], list) and all(isinstance(v, str) for v in parsed[name])
        elif annotation == Literal["spam", "ham"]:
            assert parsed[name] in ("spam", "ham")


@pytest.mark.parametrize("kind", list(SIGNATURES))
def test_any_reply_parses_into_the_fields_or_raises_adapter_parse_error(kind: str) -> None:
    signature = SIGNATURES[kind]
    timings = Timings(f"SmallModelAdapter.parse ({kind})")

    # Replies that broke parsing before the fuzzer found them: a recursive regex took 24 s on 20,000 "{",
    # json.loads raised RecursionError on deep "[", json_repair took 0.9 s on 20,000 "(".
    @example(reply="{" * 20_000)
    @example(reply="[" * 100_000 + "]" * 100_000)
    @example(reply='{"label": ' + "[" * 100_000)
    @example(reply="Sure! " + "(" * 20_000)
    @given(reply=replies())
    def check(reply: str) -> None:
        with timings.measure(lambda: f"{len(reply)} chars starting {reply[:24]!r}"):
            try:
                parsed = ADAPTER.parse(signature, reply)
            except AdapterParseError:
                parsed = None
        if parsed is not None:
            _check_parsed(signature, parsed)

    check()
    timings.report(BOUND_S)


def _chunk(text: str) -> Any:
    return SimpleNamespace(choices=[SimpleNamespace(delta=SimpleNamespace(content=text))])


def _stream(signature: type[dspy.Signature], field: str, pieces: list[str]) -> str:
    listener = SmallModelStreamListener(field, predict=dspy.Predict(signature), predict_name="p")
    sent: list[str] = []
    with dspy.context(adapter=ADAPTER):
        for piece in pieces:
            out = listener.receive(_chunk(piece))
            if out is not None:
                sent.append(out.chunk)
        final = listener.finalize()
        if final is not None:
            sent.append(final.chunk)
    return "".join(sent)


@st.composite
def split(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("kind", ["plain", "reasoning + answer"])
def test_streaming_any_reply_never_raises_and_a_str_field_streams_what_parse_returns(kind: str) -> None:
    signature = SIGNATURES[kind]
    field = "answer"
    timings = Timings(f"SmallModelStreamListener ({kind})")

    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        reply = data.draw(replies() if kind == "plain" else field_objects() | replies())
        pieces = data.draw(split(reply))
        with timings.measure(lambda: f"{len(reply)} chars in {len(pieces)} pieces starting {reply[:24]!r}"):
            streamed = _stream(signature, field, pieces)
        try:
            parsed = ADAPTER.parse(signature, reply)[field]
        except AdapterParseError:
            return
        # A JSON reply streams a str field's characters as they arrive; a non-str JSON value in a str
        # field (null, 42, [..]) streams as JSON while parsing gives Python's str() of it ('None'), so
        # the property covers string values.
        if kind == "plain" or _string_field(reply, field):
            assert streamed == parsed, (reply, pieces)

    check()
    timings.report(BOUND_S * 5)  # re-reads the growing reply on every chunk


def _string_field(reply: str, field: str) -> bool:
    """Whether ``reply`` is a whole JSON object whose ``field`` is a string."""
    try:
        found = json.loads(reply)
    except (ValueError, RecursionError):
        return False
    return isinstance(found, dict) and isinstance(found.get(field), str)
