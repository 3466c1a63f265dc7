"""``SmallModelAdapter``: DSPy programs on small models, prompted the way those models were trained.

DSPy's ChatAdapter and JSONAdapter were written for large models. Their scaffolding (``[[ ## field ## ]]``
markers, "Outputs will be a JSON object with the following fields" and a template with ``{answer}``
placeholders) is noise to a 135M-parameter model: it copies the placeholders, answers inside the markers,
or spends its few good tokens on the format. Measured on the embedded SmolLM2-135M (see
``benchmarks/bench_fidelity.py``), that costs half the answers and several times the time.

This adapter writes the prompt a person would write for such a model:

- **system message**: the signature's instructions (where MIPROv2 and GEPA put their rewrites), plus,
  only when the reply is JSON, one sentence naming the keys and their types;
- **user message**: the inputs as labelled blocks (``Context:`` then the passages, ``Question: ...``), the label being
  each field's DSPy prefix;
- **demos** (LabeledFewShot, BootstrapFewShot, KNNFewShot...) and ``dspy.History`` as earlier
  user/assistant turns in the same shape;
- **reply**: a single ``str`` output is the assistant's plain text (no JSON, stop strings at the input
  labels so the model cannot run on into an invented next turn). Several outputs, or any typed output
  (``Literal``, ``int``, ``float``, ``bool``, ``list[...]``, pydantic models) are one compact JSON object,
  keys in signature order. When the LM accepts a response schema (``geode.LocalLM`` turns it into a
  llama.cpp grammar; OpenAI-style APIs enforce it server-side) the schema is sent, so types are enforced
  while decoding; otherwise the reply is parsed leniently (code fences, text around the object, a bare
  value for a single field).

A reply that still cannot be read raises DSPy's ``AdapterParseError`` carrying the raw text, never a
silently wrong value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Literal, cast

import dspy
import json_repair
import pydantic
from dspy.adapters.utils import apply_output_field_defaults, parse_value, serialize_for_json
from dspy.clients.capabilities import with_capability_planning
from dspy.signatures.signature import Signature
from dspy.utils.callback import BaseCallback
from dspy.utils.exceptions import AdapterParseError
from pydantic.fields import FieldInfo

from geode.adapters._render import (
    field_desc,
    field_label,
    output_schema,
    render_block,
    render_value,
    schema_model,
    type_hint,
)

__all__ = ["SmallModelAdapter", "text_token_cap"]

_MAX_STOPS = 4  # OpenAI-compatible APIs accept at most four stop sequences
# Characters per token when a declared max_length becomes a token cap. English BPE averages about 4
# (3.7 on SmolLM2's replies in benchmarks/bench_fidelity.py); 3 leaves room, so a reply that fits the
# declared length is rarely cut.
_CHARS_PER_TOKEN = 3
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```\s*$", re.DOTALL)


# The rationale field `dspy.ChainOfThought` prepends to a signature's outputs (DSPy's name, not a user's).
RATIONALE = "reasoning"

Reasoning = Literal["auto", "omit", "keep"]


def _is_plain(signature: type[Signature]) -> bool:
    """Whether the reply is plain text: exactly one output field, and it is a ``str``."""
    outputs = list(signature.output_fields.values())
    return len(outputs) == 1 and outputs[0].annotation is str


def text_token_cap(signature: type[Signature]) -> int | None:
    """The token cap a plain-text reply gets from its field's declared length, if it declares one.

    A field declares its length the pydantic way, ``dspy.OutputField(max_length=100)`` (DSPy keeps the
    constraint; a JSON reply's schema carries it as ``maxLength``). The cap is enough tokens for that many
    characters: a small model then stops where the signature says the answer ends, instead of running
    on into a second paragraph at a decoding cost per token. The text itself is not cut to ``max_length``.
    """
    if not _is_plain(signature):
        return None
    info = next(iter(signature.output_fields.values()))
    limits = [m.max_length for m in info.metadata if isinstance(getattr(m, "max_length", None), int)]
    return -(-min(limits) // _CHARS_PER_TOKEN) if limits else None


def _rationale(signature: type[Signature]) -> str | None:
    """The name of ``ChainOfThought``'s rationale field when ``signature`` has one before its outputs.

    It is the first output, a ``str``, followed by at least one other output: the shape ChainOfThought
    builds. A user's own first output of that name that is the only output is an answer, not a rationale.
    """
    outputs = list(signature.output_fields.items())
    if len(outputs) < 2:
        return None
    name, info = outputs[0]
    return name if name == RATIONALE and info.annotation is str else None


class SmallModelAdapter(dspy.Adapter):
    """A DSPy adapter for small models: natural chat prompts, plain-text answers, schema-constrained JSON.

    Geode's runtime uses it for the embedded ``geode.LocalLM``; pass it as ``Runtime(adapter=...)``,
    ``GEODE_LM_ADAPTER=small`` or ``dspy.context(adapter=SmallModelAdapter())`` for any other small model
    (an Ollama or vLLM server, a small hosted model).

    Args:
        callbacks: DSPy callbacks run around ``format`` and ``parse``.
        text_max_tokens: Cap on generated tokens for every plain-text reply (a single ``str`` output);
            ``None`` keeps the LM's own ``max_tokens``. A smaller cap bounds the time a rambling small
            model can spend; the LM's own setting still applies when it is lower. Independently, an
            output field that declares ``max_length`` (``dspy.OutputField(max_length=100)``) caps its
            reply at ``max_length / 3`` tokens (:func:`text_token_cap`).
        lead_text_max_chars: For LMs that decode under a grammar (they declare ``small_local_model``,
            as ``geode.LocalLM`` does), the most characters of a free-text field that is followed by
            other fields, such as ``ChainOfThought``'s ``reasoning``. A small model that starts repeating
            itself then still closes the field and reaches the answer. ``None``: no cap.
        stop_at_labels: Stop a plain-text reply when the model starts a line with one of the input labels
            (it is inventing the next turn).
        reasoning: What becomes of ``dspy.ChainOfThought``'s ``reasoning`` field. ``"omit"``: the model
            is not asked for it (the prompt and reply are those of the same signature without it, so a
            single text answer is a plain-text reply) and the prediction carries ``reasoning=""``, so
            programs that read it still run. ``"keep"``: it is the reply's first JSON field, capped by
            ``lead_text_max_chars`` on grammar-decoding LMs. ``"auto"`` (default): ``"omit"`` for LMs that
            declare ``small_local_model`` (``geode.LocalLM``), ``"keep"`` for any other LM. Measured on
            SmolLM2-135M (``benchmarks/bench_fidelity.py --module cot``), a 135M model's reasoning costs
            answers and several times the time.

    Example:
        >>> import dspy
        >>> from geode.adapters import SmallModelAdapter
        >>> adapter = SmallModelAdapter()
        >>> messages = adapter.format(dspy.Signature("context, question -> answer", "Answer briefly."), [],
        ...                           {"context": "Paris is in France.", "question": "Where is Paris?"})
        >>> [m["role"] for m in messages], messages[0]["content"]
        (['system', 'user'], 'Answer briefly.')
        >>> print(messages[1]["content"])
        Context: Paris is in France.
        <BLANKLINE>
        Question: Where is Paris?
    """

    def __init__(
        self,
        *,
        callbacks: list[BaseCallback] | None = None,
        text_max_tokens: int | None = None,
        lead_text_max_chars: int | None = 400,
        stop_at_labels: bool = True,
        reasoning: Reasoning = "auto",
    ) -> None:
        super().__init__(callbacks=callbacks, use_native_function_calling=False)
        if text_max_tokens is not None and text_max_tokens < 1:
            raise ValueError(f"text_max_tokens must be at least 1, got {text_max_tokens}")
        if lead_text_max_chars is not None and lead_text_max_chars < 1:
            raise ValueError(f"lead_text_max_chars must be at least 1, got {lead_text_max_chars}")
        self.text_max_tokens = text_max_tokens
        self.lead_text_max_chars = lead_text_max_chars
        self.stop_at_labels = stop_at_labels
        if reasoning not in ("auto", "omit", "keep"):
            raise ValueError(f"reasoning must be 'auto', 'omit' or 'keep', got {reasoning!r}")
        self.reasoning: Reasoning = reasoning

    def __repr__(self) -> str:
        return (
            f"SmallModelAdapter(text_max_tokens={self.text_max_tokens}, "
            f"lead_text_max_chars={self.lead_text_max_chars}, stop_at_labels={self.stop_at_labels}, "
            f"reasoning={self.reasoning!r})"
        )

    # -- the call --------------------------------------------------------------------------------

    @with_capability_planning
    def __call__(
        self,
        lm: dspy.BaseLM,
        lm_kwargs: dict[str, Any],
        signature: type[Signature],
        demos: list[dict[str, Any]],
        inputs: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """Format, call the LM with this signature's decoding settings, and parse every completion."""
        self.prepare_request(lm, lm_kwargs, self.asked_signature(signature, lm))
        return self._fill_omitted(signature, lm, super().__call__(lm, lm_kwargs, signature, demos, inputs))

    @with_capability_planning
    async def acall(
        self,
        lm: dspy.BaseLM,
        lm_kwargs: dict[str, Any],
        signature: type[Signature],
        demos: list[dict[str, Any]],
        inputs: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """Async :meth:`__call__`."""
        self.prepare_request(lm, lm_kwargs, self.asked_signature(signature, lm))
        results = await super().acall(lm, lm_kwargs, signature, demos, inputs)
        return self._fill_omitted(signature, lm, results)

    def asked_signature(self, signature: type[Signature], lm: dspy.BaseLM | None) -> type[Signature]:
        """The signature the model is actually prompted with: ``signature`` less an omitted rationale.

        See the ``reasoning`` argument. ``lm`` decides ``"auto"``; ``None`` reads as a non-local LM.
        """
        name = _rationale(signature)
        if name is None or not self._omits_reasoning(lm):
            return signature
        return signature.delete(name)

    def _omits_reasoning(self, lm: dspy.BaseLM | None) -> bool:
        if self.reasoning == "auto":
            return bool(getattr(lm, "small_local_model", False))
        return self.reasoning == "omit"

    def _call_preprocess(
        self,
        lm: dspy.BaseLM,
        lm_kwargs: dict[str, Any],
        signature: type[Signature],
        inputs: dict[str, Any],
    ) -> type[Signature]:
        # DSPy's hook for the signature that is formatted and parsed; its postprocessing then sets every
        # field of the caller's signature that the reply lacks to None (refilled by _fill_omitted).
        return self.asked_signature(super()._call_preprocess(lm, lm_kwargs, signature, inputs), lm)

    def _fill_omitted(
        self, signature: type[Signature], lm: dspy.BaseLM, results: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """An omitted rationale as ``""`` (it is a ``str`` field; programs may read or concatenate it)."""
        name = _rationale(signature)
        if name is None or not self._omits_reasoning(lm):
            return results
        return [{name: "", **{k: v for k, v in result.items() if k != name}} for result in results]

    def prepare_request(self, lm: dspy.BaseLM, lm_kwargs: dict[str, Any], signature: type[Signature]) -> None:
        """Set the call's decoding settings: stops and token cap for text, a response schema for JSON.

        Settings the caller passed explicitly (``response_format``, ``stop``) are kept.
        """
        if _is_plain(signature):
            params = lm.supported_params
            # An LM that declares its parameters without `stop` (OpenAI's reasoning models) refuses it;
            # one that declares none (a custom BaseLM) is given it.
            if self.stop_at_labels and "stop" not in lm_kwargs and (not params or "stop" in params):
                stops = [f"\n{field_label(n, f)}:" for n, f in signature.input_fields.items()]
                if stops:
                    lm_kwargs["stop"] = stops[:_MAX_STOPS]
            caps = [c for c in (self.text_max_tokens, text_token_cap(signature)) if c is not None]
            if caps:
                current = lm_kwargs.get("max_tokens") or getattr(lm, "kwargs", {}).get("max_tokens")
                lm_kwargs["max_tokens"] = min(caps) if current is None else min(int(current), *caps)
            return
        if "response_format" in lm_kwargs or "response_format" not in lm.supported_params:
            return
        if not lm.supports_response_schema:
            lm_kwargs["response_format"] = {"type": "json_object"}
            return
        try:
            schema = self.response_schema(signature, lm)
        except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticInvalidForJsonSchema, TypeError):
            # A type without a JSON schema: any JSON object still beats free text; parsing checks types.
            lm_kwargs["response_format"] = {"type": "json_object"}
            return
        lm_kwargs["response_format"] = schema_model("Outputs", schema)

    def response_schema(self, signature: type[Signature], lm: dspy.BaseLM) -> dict[str, Any]:
        """The JSON schema a JSON reply is decoded under: the output fields in order, types enforced.

        Subclasses may tighten it further (``geode.Agent`` pairs each tool with its own arguments).
        """
        schema = output_schema(signature.output_fields)
        cap = self.lead_text_max_chars
        if cap is not None and getattr(lm, "small_local_model", False):
            properties = schema.get("properties") or {}
            names = list(properties)
            for name in names[:-1]:
                prop = properties[name]
                if isinstance(prop, dict) and prop.get("type") == "string" and "enum" not in prop:
                    prop.setdefault("maxLength", cap)
        return schema

    # -- prompt ----------------------------------------------------------------------------------

    def format_system_message(self, signature: type[Signature]) -> str:
        """The instructions; for a JSON reply, one more sentence naming the keys and their types."""
        instructions = (signature.instructions or "").strip()
        if _is_plain(signature):
            return instructions
        keys = []
        for name, info in signature.output_fields.items():
            hint = type_hint(info.annotation)
            desc = field_desc(name, info)
            keys.append(f'"{name}" ({hint}: {desc})' if desc else f'"{name}" ({hint})')
        reply = f"Reply with a JSON object with the keys {', '.join(keys)}, in this order."
        return f"{instructions}\n\n{reply}" if instructions else reply

    def format_user_message_content(
        self,
        signature: type[Signature],
        inputs: dict[str, Any],
        prefix: str = "",
        suffix: str = "",
        main_request: bool = False,
    ) -> str:
        """The inputs present in ``inputs`` as labelled blocks, in signature order."""
        blocks = [prefix.strip()] if prefix.strip() else []
        for name, info in signature.input_fields.items():
            if name in inputs and inputs[name] is not None:
                blocks.append(render_block(field_label(name, info), render_value(info, inputs[name])))
        if suffix.strip():
            blocks.append(suffix.strip())
        return "\n\n".join(blocks)

    def format_assistant_message_content(
        self,
        signature: type[Signature],
        outputs: dict[str, Any],
        missing_field_message: str | None = None,
    ) -> str:
        """A reply as the model should give it: plain text, or a compact JSON object of the fields present."""
        if _is_plain(signature):
            name = next(iter(signature.output_fields))
            value = outputs.get(name)
            return "" if value is None else str(value).strip()
        present = {
            name: outputs[name]
            for name in signature.output_fields
            if name in outputs and outputs[name] is not None
        }
        return json.dumps(serialize_for_json(present), ensure_ascii=False)

    def format_demos(self, signature: type[Signature], demos: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each usable demo as a user turn and the assistant's reply.

        A demo needs at least one input and, for a plain-text reply, its output (a JSON reply shows the
        outputs the demo has: DSPy's LabeledFewShot on a ChainOfThought program has answers but no
        reasoning). No "not supplied" filler: a small model copies it.
        """
        messages: list[dict[str, Any]] = []
        for demo in demos:
            if not any(_present(demo, name) for name in signature.input_fields):
                continue
            outputs = {name: _get(demo, name) for name in signature.output_fields if _present(demo, name)}
            if not outputs or (_is_plain(signature) and len(outputs) != 1):
                continue
            user = self.format_user_message_content(
                signature, {n: _get(demo, n) for n in signature.input_fields if _present(demo, n)}
            )
            messages.append({"role": "user", "content": user})
            messages.append(
                {"role": "assistant", "content": self.format_assistant_message_content(signature, outputs)}
            )
        return messages

    def format_field_with_value(self, fields_with_values: Mapping[Any, Any], role: str = "user") -> str:
        """Render named values as this adapter does (how ``dspy.utils.DummyLM`` and ``ScriptedLM`` answer).

        ``fields_with_values`` maps DSPy's ``FieldInfoWithName`` (name and field info) to values. As the
        assistant, one string value is the plain reply and anything else a JSON object.
        """
        named = {getattr(key, "name", str(key)): value for key, value in fields_with_values.items()}
        if role != "assistant":
            return "\n\n".join(render_block(name, render_value(_ANY_FIELD, v)) for name, v in named.items())
        if len(named) == 1:
            value = next(iter(named.values()))
            if isinstance(value, str):
                return value
        return json.dumps(serialize_for_json(named), ensure_ascii=False)

    # -- parsing ---------------------------------------------------------------------------------

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        """Read a reply into the signature's output fields.

        Raises:
            AdapterParseError: Empty text, no JSON object where one is needed, a missing field, or a value
                of the wrong type. It carries the raw reply.
        """
        if _is_plain(signature):
            return self._parse_text(signature, completion)
        return self._parse_json(signature, completion)

    def _fail(
        self, signature: type[Signature], completion: str, message: str, parsed: Any = None
    ) -> AdapterParseError:
        return AdapterParseError(
            adapter_name=type(self).__name__,
            signature=cast(Any, signature),  # DSPy annotates an instance; it is given the class
            lm_response=completion,
            message=message,
            parsed_result=parsed,
        )

    def _parse_text(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        name, info = next(iter(signature.output_fields.items()))
        text = completion.strip()
        # A model that labels its answer the way the inputs are labelled ("Answer: 42") means the value.
        label = f"{field_label(name, info)}:"
        if text[: len(label)].casefold() == label.casefold():
            text = text[len(label) :].strip()
        if not text:
            raise self._fail(signature, completion, "The LM's reply is empty")
        return {name: text}

    def _parse_json(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        outputs = signature.output_fields
        text = completion.strip()
        fenced = _FENCE.match(text)
        if fenced:
            text = fenced.group(1).strip()
        found = _load_json(text)
        if len(outputs) == 1:
            name, info = next(iter(outputs.items()))
            if not (isinstance(found, dict) and name in found):
                # One field: the model may give the bare value ("positive", 42, [...], {...the model...}).
                value = _coerce(info, found if found is not _NOTHING else text)
                if value is _NOTHING:
                    raise self._fail(signature, completion, f"The reply is not a valid value for `{name}`")
                return {name: value}
        if not isinstance(found, dict):
            raise self._fail(signature, completion, "The reply has no JSON object")
        values: dict[str, Any] = {}
        for name, info in outputs.items():
            if name not in found:
                continue
            try:
                values[name] = parse_value(found[name], info.annotation)
            except (ValueError, TypeError, pydantic.ValidationError) as exc:
                raise self._fail(
                    signature, completion, f"`{name}` has the wrong type: {exc}", values
                ) from exc
        values = apply_output_field_defaults(signature, values)
        missing = [name for name in outputs if name not in values]
        if missing:
            raise self._fail(
                signature, completion, f"The reply lacks {', '.join(f'`{m}`' for m in missing)}", values
            )
        return values


_NOTHING: Any = object()
_ANY_FIELD = FieldInfo(annotation=str)


def _present(demo: Mapping[str, Any] | Any, name: str) -> bool:
    try:
        return name in demo and demo[name] is not None
    except (TypeError, KeyError):
        return False


def _get(demo: Mapping[str, Any] | Any, name: str) -> Any:
    return demo[name]


def _load_json(text: str) -> Any:
    """The JSON value in ``text``: all of it, else its first ``{...}`` (repaired); ``_NOTHING`` if none."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the interpreter's stack
        pass
    found = _first_object(text)
    if found is None:
        return _NOTHING
    try:
        return json.loads(found)  # an object in prose: braces balanced, so it is a dict if it parses
    except (ValueError, RecursionError):
        pass
    if len(found) > _MAX_REPAIR_CHARS or _too_deep(found):
        return _NOTHING
    try:
        repaired = json_repair.loads(found)
    except Exception:  # json_repair raises assorted errors on hopeless input
        return _NOTHING
    return repaired if isinstance(repaired, dict) else _NOTHING


def _first_object(text: str) -> str | None:
    """The leftmost balanced ``{...}`` in ``text`` (braces counted, strings not), in one linear pass.

    A recursive regex did the same in quadratic time or worse: 4 s for a reply of 5,000 ``{``, 24 s
    for 20,000 (a small model looping on a brace), on the request's thread.
    """
    opened: list[int] = []
    best: tuple[int, int] | None = None
    for index, char in enumerate(text):
        if char == "{":
            opened.append(index)
        elif char == "}" and opened:
            start = opened.pop()
            # A brace matched later can only start further left if it encloses this one.
            if best is None or start < best[0]:
                best = (start, index + 1)
    return text[best[0] : best[1]] if best is not None else None


# Bounds on text handed to json_repair (directly, or through DSPy's parse_value), which recurses and is
# slow on some input: 0.14 s for 1,000 open braces, 2.8 s for 8,000 balanced ones, 0.86 s for 20,000
# "(" (tests/fuzz found these). A reply that needs repair past these bounds is unparseable: LM replies
# for a signature nest a few levels, and a valid long reply parses without repair.
_MAX_REPAIR_DEPTH = 32
_MAX_REPAIR_CHARS = 8_000


def _too_deep(text: str) -> bool:
    """Whether brackets (``{`` and ``[`` together) nest deeper than :data:`_MAX_REPAIR_DEPTH` in ``text``."""
    depth = 0
    for char in text:
        if char in "{[":
            depth += 1
            if depth > _MAX_REPAIR_DEPTH:
                return True
        elif char in "}]" and depth:
            depth -= 1
    return False


def _coerce(info: FieldInfo, value: Any) -> Any:
    # DSPy's parse_value repairs a string as JSON for any type but str, then falls back to
    # ast.literal_eval: both recurse, and repair is slow on long input.
    if (
        isinstance(value, str)
        and info.annotation is not str
        and (len(value) > _MAX_REPAIR_CHARS or _too_deep(value))
    ):
        return _NOTHING
    try:
        return parse_value(value, info.annotation)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError, pydantic.ValidationError):
        return _NOTHING
