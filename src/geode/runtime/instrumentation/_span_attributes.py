"""Span attributes for each kind of DSPy call: modules (chain, agent, retriever), LM calls and tools.

The callback (:mod:`geode.runtime.instrumentation._callback`) decides when spans open and close and
under which parent; the functions here say what a span records. Attribute names are OpenInference's
(``openinference.semconv``) or Geode's own (``geode.*``), values are built by ``_values``. Static
attributes of an LM or a tool are cached per instance, in caches the callback owns.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.trace import Span, StatusCode

from geode.runtime.instrumentation import _values
from geode.runtime.instrumentation._fast_attributes import set_attributes
from geode.runtime.instrumentation._fast_span import end_span, set_ok
from geode.traces.context import RunIdentity
from geode.traces.vocab import GeodeAttributes, SpanAttributes, SpanKind, ToolAttributes

if TYPE_CHECKING:
    from geode.runtime.instrumentation._open_spans import _Agent, _LMCapture, _Open

logger = logging.getLogger("geode.instrumentation")

_KIND: Final = SpanAttributes.OPENINFERENCE_SPAN_KIND
_AGENT: Final = SpanKind.AGENT.value
_CHAIN: Final = SpanKind.CHAIN.value
_LLM: Final = SpanKind.LLM.value
_TOOL: Final = SpanKind.TOOL.value
_RETRIEVER: Final = SpanKind.RETRIEVER.value
_EVALUATOR: Final = SpanKind.EVALUATOR.value
_INPUT: Final = SpanAttributes.INPUT_VALUE
_INPUT_MIME: Final = SpanAttributes.INPUT_MIME_TYPE
_OUTPUT: Final = SpanAttributes.OUTPUT_VALUE
_OUTPUT_MIME: Final = SpanAttributes.OUTPUT_MIME_TYPE
_PREDICTOR: Final = GeodeAttributes.PREDICTOR_NAME
_PROGRAM: Final = GeodeAttributes.PROGRAM_NAME
_PSEUDO_TOOLS: Final = frozenset({"finish", "submit"})
_TOKEN_KEYS: Final = (
    ("prompt_tokens", SpanAttributes.LLM_TOKEN_COUNT_PROMPT),
    ("completion_tokens", SpanAttributes.LLM_TOKEN_COUNT_COMPLETION),
    ("total_tokens", SpanAttributes.LLM_TOKEN_COUNT_TOTAL),
)
_TOKEN_DETAIL_KEYS: Final = (
    ("prompt_tokens_details", "cached_tokens", SpanAttributes.LLM_TOKEN_COUNT_PROMPT_DETAILS_CACHE_READ),
    (
        "prompt_tokens_details",
        "cache_creation_tokens",
        SpanAttributes.LLM_TOKEN_COUNT_PROMPT_DETAILS_CACHE_WRITE,
    ),
    ("prompt_tokens_details", "audio_tokens", SpanAttributes.LLM_TOKEN_COUNT_PROMPT_DETAILS_AUDIO),
    (
        "completion_tokens_details",
        "reasoning_tokens",
        SpanAttributes.LLM_TOKEN_COUNT_COMPLETION_DETAILS_REASONING,
    ),
    ("completion_tokens_details", "audio_tokens", SpanAttributes.LLM_TOKEN_COUNT_COMPLETION_DETAILS_AUDIO),
)
_CACHE_LIMIT: Final = 2048


def _identity_attributes(identity: RunIdentity) -> dict[str, Any]:
    attrs: dict[str, Any] = {_PROGRAM: identity.program}
    if identity.version:
        attrs[GeodeAttributes.PROGRAM_VERSION] = identity.version
    if identity.kind:
        attrs[GeodeAttributes.PROGRAM_KIND] = identity.kind
    if identity.aliases:
        attrs[GeodeAttributes.PROGRAM_ALIASES] = identity.aliases
    if identity.session_id:
        attrs[SpanAttributes.SESSION_ID] = identity.session_id
    if identity.user_id:
        attrs[SpanAttributes.USER_ID] = identity.user_id
    if identity.metadata:
        attrs[SpanAttributes.METADATA] = _values.to_json(dict(identity.metadata))
    if identity.tags:
        attrs[SpanAttributes.TAG_TAGS] = tuple(str(t) for t in identity.tags)
    return attrs


def _record_error(span: Span, exception: BaseException) -> None:
    span.record_exception(exception)
    span.set_status(StatusCode.ERROR, f"{type(exception).__name__}: {exception}")


# -- modules: chain, agent, retriever ---------------------------------------------------------------


def _end_module_span(record: _Open, outputs: Any, exception: BaseException | None) -> None:
    """Status and closing attributes of a module's span: output (a retriever's documents), agent ending."""
    span = record.span
    info = record.info
    attributes: dict[str, Any] = {}
    if exception is not None:
        _record_error(span, exception)
    else:
        # OK rather than UNSET, so Phoenix shows a finished run as succeeded.
        set_ok(span)
        if info is not None and info.kind == _RETRIEVER:
            passages = _values.iter_passages(outputs)
            if passages is not None:
                _values.document_attributes(list(passages), attributes)
        elif outputs is not None:
            value, mime = _values.value_and_mime(_values.prediction_fields(outputs))
            attributes[_OUTPUT] = value
            attributes[_OUTPUT_MIME] = mime
    agent = record.agent
    if agent is not None and agent.react is not None:
        if agent.iteration is not None:
            end_span(agent.iteration)
            agent.iteration = None
        attributes[GeodeAttributes.AGENT_ITERATIONS] = agent.iterations
        attributes[GeodeAttributes.AGENT_TERMINATION] = _termination(record, agent, outputs, exception)
    elif agent is not None and exception is not None:
        # Agents that count their own iterations say how they ended in geode_span_attributes,
        # which they cannot do when they raise.
        attributes[GeodeAttributes.AGENT_TERMINATION] = "error"
    if info is not None and info.span_attributes:
        try:
            extra = record.module.geode_span_attributes(record.inputs or {}, outputs)
            if isinstance(extra, Mapping):
                attributes.update(extra)
        except Exception:
            logger.debug("geode_span_attributes of %s raised", info.class_name, exc_info=True)
    if attributes:
        set_attributes(span, attributes)


def _termination(record: _Open, agent: _Agent, outputs: Any, exception: BaseException | None) -> str:
    if exception is not None:
        return "error"
    reason = getattr(outputs, "termination_reason", None)  # ReActV2
    if reason == "submit":
        return "finish"
    if reason == "forced_submit":
        return "max_iters"
    if agent.finished:
        return "finish"
    max_iters = (record.inputs or {}).get("max_iters", getattr(record.module, "max_iters", None))
    if isinstance(max_iters, int) and agent.iterations >= max_iters:
        return "max_iters"
    # ReAct ends the loop early, without finish, when the step's output cannot be used.
    return "error"


# -- LM calls --------------------------------------------------------------------------------------


def _lm_static(cache: dict[int, tuple[Any, dict[str, Any]]], lm: Any) -> dict[str, Any]:
    """The attributes every call of ``lm`` shares: span kind, model and provider (cached in ``cache``)."""
    cached = cache.get(id(lm))
    if cached is not None and cached[0] is lm:
        return cached[1]
    model = str(getattr(lm, "model", None) or type(lm).__name__)
    static: dict[str, Any] = {_KIND: _LLM, SpanAttributes.LLM_MODEL_NAME: model}
    if "/" in model:
        static[SpanAttributes.LLM_PROVIDER] = model.split("/", 1)[0].lower()
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[id(lm)] = (lm, static)
    return static


def _invocation_parameters(cache: dict[Any, str], lm: Any, call_kwargs: Mapping[str, Any] | None) -> str:
    """The LM's parameters for this call as JSON (memoized: they rarely change between calls)."""
    merged = {**(getattr(lm, "kwargs", None) or {}), **(call_kwargs or {})}
    try:
        key: Any = tuple(merged.items())
        cached = cache.get(key)
    except TypeError:  # an unhashable value, e.g. a response_format schema dict
        key, cached = None, None
    if cached is not None:
        return cached
    text = _values.to_json({k: v for k, v in merged.items() if v is not None and not k.startswith("api_")})
    if key is not None:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[key] = text
    return text


def _end_lm_span(record: _Open, outputs: Any, exception: BaseException | None) -> None:
    """Status and closing attributes of an LLM span: output messages, token counts, cost, cache hit."""
    span = record.span
    if exception is not None:
        _record_error(span, exception)
    else:
        set_ok(span)
    attributes: dict[str, Any] = {}
    if isinstance(outputs, list):
        first = _values.output_message_attributes(outputs, attributes)
        if len(outputs) == 1 and first is not None:
            attributes[_OUTPUT] = first
            attributes[_OUTPUT_MIME] = _values.TEXT_MIME
        else:
            attributes[_OUTPUT] = _values.to_json(outputs)
            attributes[_OUTPUT_MIME] = _values.JSON_MIME
    elif outputs is not None:
        value, mime = _values.value_and_mime(outputs)
        attributes[_OUTPUT] = value
        attributes[_OUTPUT_MIME] = mime

    if record.lm is not None:
        _usage_attributes(record.lm, exception, attributes)
    if attributes:
        set_attributes(span, attributes)


def _usage_attributes(
    capture: _LMCapture, exception: BaseException | None, attributes: dict[str, Any]
) -> None:
    """Token counts, cost, response model and cache-hit flag of one LM call."""
    entry = capture.history[-1] if capture.history else None
    usage = capture.usage if capture.tracked else (entry or {}).get("usage")
    if entry is not None and exception is None:
        # DSPy reports usage for every call except a cache hit.
        cache_hit = not capture.tracked
        attributes[GeodeAttributes.LLM_CACHE_HIT] = cache_hit
        response_model = entry.get("response_model")
        if response_model:
            attributes[SpanAttributes.LLM_RESPONSE_MODEL_NAME] = str(response_model)
        cost = entry.get("cost")
        if not cache_hit and isinstance(cost, int | float) and not isinstance(cost, bool):
            attributes[SpanAttributes.LLM_COST_TOTAL] = float(cost)
    if not usage or (type(usage) is not dict and not isinstance(usage, Mapping)):
        return
    for source, key in _TOKEN_KEYS:
        count = usage.get(source)
        if isinstance(count, int) and not isinstance(count, bool):
            attributes[key] = count
    if SpanAttributes.LLM_TOKEN_COUNT_TOTAL not in attributes:
        prompt = attributes.get(SpanAttributes.LLM_TOKEN_COUNT_PROMPT)
        completion = attributes.get(SpanAttributes.LLM_TOKEN_COUNT_COMPLETION)
        if isinstance(prompt, int) and isinstance(completion, int):
            attributes[SpanAttributes.LLM_TOKEN_COUNT_TOTAL] = prompt + completion
    for group, source, key in _TOKEN_DETAIL_KEYS:
        details = usage.get(group)
        if not details:
            continue
        count = details.get(source) if type(details) is dict or isinstance(details, Mapping) else None
        if isinstance(count, int) and not isinstance(count, bool) and count:
            attributes[key] = count


# -- tools -----------------------------------------------------------------------------------------


def _tool_static(cache: dict[int, tuple[Any, dict[str, Any]]], tool: Any) -> dict[str, Any]:
    """The attributes every call of ``tool`` shares: kind, name, description, parameters (cached)."""
    cached = cache.get(id(tool))
    if cached is not None and cached[0] is tool:
        return cached[1]
    static: dict[str, Any] = {
        _KIND: _TOOL,
        ToolAttributes.TOOL_NAME: str(getattr(tool, "name", "") or "tool"),
    }
    description = getattr(tool, "desc", None)
    if description:
        static[ToolAttributes.TOOL_DESCRIPTION] = str(description)
    args = getattr(tool, "args", None)
    schema = {"type": "object", "properties": args if isinstance(args, Mapping) else {}}
    static[SpanAttributes.TOOL_PARAMETERS] = _values.to_json(schema)
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[id(tool)] = (tool, static)
    return static


def _is_pseudo_tool(tool: Any) -> bool:
    """ReAct's own ``finish``/``submit``: not a tool call of the program, so no span."""
    if getattr(tool, "name", None) not in _PSEUDO_TOOLS:
        return False
    module = getattr(getattr(tool, "func", None), "__module__", None) or ""
    return module.startswith(("dspy.", "geode."))
