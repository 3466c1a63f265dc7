"""The DSPy callback that turns module, LM, tool and evaluation calls into OpenTelemetry spans.

DSPy calls ``on_<component>_start`` before a call and ``on_<component>_end`` after it, in the same
thread and context, with ``ACTIVE_CALL_ID`` still naming the *caller's* call during the start handler.
Each start opens a span and makes it current (so user spans and other instrumentations nest inside);
each end closes it. The parent is the current OpenTelemetry span when there is one, else the span of
the DSPy call that made this one (``ACTIVE_CALL_ID``): DSPy binds that id into ``dspy.Parallel``,
``Module.batch`` and ``Evaluate`` workers, so their spans stay in the request's trace even where the
OpenTelemetry context did not travel.

Everything here runs on the application's thread, so it is written to be cheap: per-class and
per-program facts are computed once and cached, and span attributes are built in one dict and set
when the span starts or ends.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, Final

import dspy
from dspy.dsp.utils.settings import thread_local_overrides as _dspy_overrides
from dspy.dsp.utils.utils import dotdict as _DotDict
from dspy.utils.callback import BaseCallback
from dspy.utils.callback_context import ACTIVE_CALL_ID
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, StatusCode, Tracer

from geode.errors import ToolTimeoutError
from geode.runtime.instrumentation import _values
from geode.traces.context import RunIdentity, current_run, note_trace_id
from geode.traces.vocab import GEODE_SPAN_KIND_ATTR, GeodeAttributes, SpanAttributes, SpanKind, ToolAttributes

__all__ = ["SCOPED_TRACER", "GeodeCallback"]

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
_SUPPRESS_KEY: Final = otel_context._SUPPRESS_INSTRUMENTATION_KEY
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

SCOPED_TRACER: ContextVar[Tracer | None] = ContextVar("geode_scoped_tracer", default=None)
"""The tracer of the runtime call in progress (see ``instrumentation.tracing_to``); ``None`` outside one."""


# -- per-class and per-program facts, computed once ------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ModuleClass:
    kind: str
    class_name: str
    is_react: bool
    span_name: bool
    """The class defines ``geode_span_name(inputs)``."""
    span_attributes: bool
    """The class defines ``geode_span_attributes(inputs, outputs)``."""


def _describe_class(cls: type) -> _ModuleClass:
    declared = getattr(cls, GEODE_SPAN_KIND_ATTR, None)
    is_react = issubclass(cls, dspy.ReAct) or _is_react_v2(cls)
    if isinstance(declared, str) and declared:
        kind = declared.upper()
    elif is_react:
        kind = _AGENT
    elif issubclass(cls, dspy.Retrieve):
        kind = _RETRIEVER
    else:
        kind = _CHAIN
    return _ModuleClass(
        kind=kind,
        class_name=cls.__name__,
        is_react=is_react,
        span_name=callable(getattr(cls, "geode_span_name", None)),
        span_attributes=callable(getattr(cls, "geode_span_attributes", None)),
    )


def _is_react_v2(cls: type) -> bool:
    react_v2 = getattr(dspy, "ReActV2", None)
    return isinstance(react_v2, type) and issubclass(cls, react_v2)


_signatures: dict[int, tuple[Any, str | None]] = {}


def _signature_text(instance: Any) -> str | None:
    """``"question -> answer"`` for a predictor's signature (cached per signature class)."""
    signature = getattr(instance, "signature", None)
    if signature is None:
        return None
    cached = _signatures.get(id(signature))
    if cached is not None and cached[0] is signature:
        return cached[1]
    text = getattr(signature, "signature", None)
    text = text if isinstance(text, str) else None
    if len(_signatures) >= _CACHE_LIMIT:
        _signatures.clear()
    _signatures[id(signature)] = (signature, text)
    return text


def _module_names(module: Any) -> dict[int, str]:
    """``id(submodule) -> name``, named as ``named_predictors()`` names predictors.

    DSPy's ``named_sub_modules()`` walks every attribute, a module's whole call history included,
    which grows with each call; this walks modules and the lists and dicts holding them only.
    """
    names: dict[int, str] = {}
    if isinstance(module, dspy.Predict):
        names[id(module)] = "self"
    seen = {id(module)}
    pending: list[tuple[str, Any]] = [("", module)]
    while pending:
        prefix, parent = pending.pop()
        attributes = getattr(parent, "__dict__", None)
        if not isinstance(attributes, dict):
            continue
        for attr, value in attributes.items():
            children: list[tuple[str, Any]]
            if isinstance(value, dspy.Module):
                children = [(f"{prefix}{attr}", value)]
            elif isinstance(value, list | tuple):
                children = [
                    (f"{prefix}{attr}[{i}]", v) for i, v in enumerate(value) if isinstance(v, dspy.Module)
                ]
            elif isinstance(value, dict) and attr not in ("history", "callbacks"):
                children = [
                    (f"{prefix}{attr}['{k}']", v) for k, v in value.items() if isinstance(v, dspy.Module)
                ]
            else:
                continue
            for name, child in children:
                if id(child) in seen:
                    continue
                seen.add(id(child))
                names[id(child)] = name
                pending.append((f"{name}.", child))
    return names


class _Names:
    """Sub-module names of a program root, cached per root instance (weakly)."""

    def __init__(self) -> None:
        self._by_root: weakref.WeakKeyDictionary[Any, dict[int, str]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def of(self, root: Any, *, refresh: bool = False) -> dict[int, str]:
        try:
            names = None if refresh else self._by_root.get(root)
        except TypeError:  # unhashable module
            return _module_names(root)
        if names is None:
            names = _module_names(root)
            with self._lock:
                try:
                    self._by_root[root] = names
                except TypeError:
                    pass
        return names


# -- open spans ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Agent:
    react: Any = None
    """The ReAct loop's step predictor; its calls delimit iterations."""
    iteration: Span | None = None
    iterations: int = 0
    finished: bool = False


@dataclass(slots=True)
class _Open:
    span: Span
    token: Token[Context] | None
    identity_attrs: Mapping[str, Any]
    identity: RunIdentity | None
    tracer: Tracer | None = None
    """The tracer this call's span came from; its children use it too (worker threads included)."""
    root: Any = None
    """The program instance whose sub-module names apply below this span."""
    names: dict[int, str] = field(default_factory=dict[int, str])
    predictor: str | None = None
    agent: _Agent | None = None
    module: Any = None
    info: _ModuleClass | None = None
    inputs: Mapping[str, Any] | None = None
    lm: _LMCapture | None = None
    lm_token: Token[Any] | None = None

    def parent_span(self) -> Span:
        """Where a child opened directly under this call belongs (the open ReAct iteration, if any)."""
        agent = self.agent
        if agent is not None and agent.iteration is not None:
            return agent.iteration
        return self.span


class _LMCapture:
    """Stands in for DSPy's usage tracker and history owner during one LM call.

    DSPy hands each call's usage to ``settings.usage_tracker`` (except on cache hits) and its history
    entry (usage, cost, response model) to every module in ``settings.caller_modules``; installing this
    object in both for the duration of the call gives the span exactly its own call's numbers, even
    when threads share one LM. Usage is forwarded to the tracker it replaced.
    """

    __slots__ = ("history", "outer", "tracked", "usage")

    def __init__(self, outer: Any) -> None:
        self.outer = outer
        self.usage: Mapping[str, Any] | None = None
        self.tracked = False
        self.history: list[dict[str, Any]] = []

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        self.tracked = True
        self.usage = usage_entry
        if self.outer is not None:
            self.outer.add_usage(lm, usage_entry)

    def __getattr__(self, name: str) -> Any:
        # Any other tracker method (get_total_tokens...) answers from the tracker this one wraps.
        outer = object.__getattribute__(self, "outer")
        if outer is None:
            raise AttributeError(name)
        return getattr(outer, name)


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


# -- the callback ----------------------------------------------------------------------------------


class GeodeCallback(BaseCallback):
    """Records DSPy calls as OpenInference spans on a tracer.

    Args:
        tracer: The tracer spans are started on.

    Use :func:`geode.instrument` rather than registering this directly; it also propagates context
    into thread pools and keeps exactly one instance registered.

    Instances pickle as a reference to the loading process's own instrumentation (see
    :meth:`__reduce__`), so ``dspy.settings.save()`` and anything else that pickles DSPy's callbacks
    work while Geode is instrumented.
    """

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        """Pickle as "Geode's callback, if the loading process is instrumented".

        The callback holds a tracer, locks and open spans, none of which can travel; and it belongs to
        the process's instrumentation, not to the settings or program that holds it. Unpickled, it is
        that process's active Geode callback, or DSPy's inert ``BaseCallback`` where Geode is not
        instrumenting (loading settings never starts tracing by itself).
        """
        return (_reinstate, ())

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self._open: dict[str, _Open] = {}
        self._classes: dict[type, _ModuleClass] = {}
        self._names = _Names()
        self._identities: dict[int, tuple[RunIdentity, dict[str, Any]]] = {}
        self._tools: dict[int, tuple[Any, dict[str, Any]]] = {}
        self._lms: dict[int, tuple[Any, dict[str, Any]]] = {}
        self._parameters: dict[Any, str] = {}
        self._failed_once = False

    # -- shared plumbing ---------------------------------------------------------------------------

    def _internal_error(self, where: str) -> None:
        # A bug in tracing must never surface in the program; say so once, with the traceback.
        if not self._failed_once:
            self._failed_once = True
            logger.warning(
                "Geode instrumentation failed in %s; the program is unaffected", where, exc_info=True
            )
        else:
            logger.debug("Geode instrumentation failed in %s", where, exc_info=True)

    def _identity(self, parent: _Open | None) -> tuple[RunIdentity | None, Mapping[str, Any]]:
        identity = current_run()
        if identity is None:
            if parent is not None:
                return parent.identity, parent.identity_attrs
            return None, {}
        cached = self._identities.get(id(identity))
        if cached is not None and cached[0] is identity:
            return identity, cached[1]
        attrs = _identity_attributes(identity)
        if len(self._identities) >= _CACHE_LIMIT:
            self._identities.clear()
        self._identities[id(identity)] = (identity, attrs)
        return identity, attrs

    def _parent(self) -> _Open | None:
        call_id = ACTIVE_CALL_ID.get()
        return self._open.get(call_id) if call_id is not None else None

    def _tracer(self, parent: _Open | None) -> Tracer:
        scoped = SCOPED_TRACER.get()
        if scoped is not None:
            return scoped
        if parent is not None and parent.tracer is not None:
            return parent.tracer
        return self.tracer

    def _start(
        self,
        call_id: str,
        name: str,
        attributes: dict[str, Any],
        parent: _Open | None,
        identity: tuple[RunIdentity | None, Mapping[str, Any]],
        *,
        suppress: bool = False,
    ) -> _Open:
        """Start a span under the right parent, make it current, and remember it as ``call_id``."""
        current = trace.get_current_span()
        parent_context = None
        if parent is not None:
            target = parent.parent_span()
            if current is parent.span:
                # The caller's span is current; only an open ReAct iteration changes the parent.
                if target is not current:
                    parent_context = trace.set_span_in_context(target)
            elif not current.get_span_context().is_valid:
                # No OpenTelemetry context came along (a DSPy worker thread): parent explicitly.
                parent_context = trace.set_span_in_context(target)
        tracer = self._tracer(parent)
        span = tracer.start_span(name, context=parent_context, attributes=attributes)
        if parent is None:
            span_context = span.get_span_context()
            if span_context.is_valid:
                note_trace_id(format(span_context.trace_id, "032x"))
        ctx = trace.set_span_in_context(span, parent_context)
        if suppress:
            # No second LLM span from an LM client instrumentation (litellm, openai) under ours.
            ctx = otel_context.set_value(_SUPPRESS_KEY, True, ctx)
        record = _Open(
            span=span,
            token=otel_context.attach(ctx),
            identity=identity[0],
            identity_attrs=identity[1],
            tracer=tracer,
        )
        self._open[call_id] = record
        return record

    @staticmethod
    def _detach(record: _Open) -> None:
        if record.token is not None:
            try:
                otel_context.detach(record.token)
            except Exception:
                logger.debug("context detach failed", exc_info=True)

    # -- modules -----------------------------------------------------------------------------------

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open an AGENT, RETRIEVER or CHAIN span for a module call."""
        try:
            self._module_start(call_id, instance, inputs)
        except Exception:
            self._internal_error("on_module_start")

    def _class(self, cls: type) -> _ModuleClass:
        info = self._classes.get(cls)
        if info is None:
            info = self._classes[cls] = _describe_class(cls)
        return info

    def _scope(
        self, parent: _Open | None, instance: Any, is_predictor: bool
    ) -> tuple[str | None, Any, dict[int, str]]:
        """``(path, root, names)``: the module's name under the program root, and the naming scope.

        Names are relative to the outermost program; a module the program does not hold as an
        attribute (built on the fly) starts its own naming scope.
        """
        if parent is not None and parent.root is not None:
            names = parent.names
            path = names.get(id(instance))
            if path is None and is_predictor:
                # The program may have gained this predictor since it was named (an optimizer swap).
                names = self._names.of(parent.root, refresh=True)
                path = names.setdefault(id(instance), "")
            if path:
                return path, parent.root, names
        return None, instance, self._names.of(instance)

    def _next_iteration(
        self,
        parent: _Open,
        agent: _Agent,
        instance: Any,
        identity_attrs: Mapping[str, Any],
        predictor: str | None,
    ) -> None:
        """A plain ReAct's iterations are its step predictor's calls.

        Each call opens "iteration N", which also parents the tool call that follows, until the next
        step or the final extraction starts.
        """
        if agent.iteration is not None:
            agent.iteration.end()
            agent.iteration = None
        if instance is agent.react:
            agent.iterations += 1
            agent.iteration = self._tracer(parent).start_span(
                f"iteration {agent.iterations}",
                context=trace.set_span_in_context(parent.span),
                attributes={
                    **identity_attrs,
                    _KIND: _CHAIN,
                    GeodeAttributes.AGENT_ITERATION: agent.iterations,
                    _PREDICTOR: predictor or "react",
                },
            )

    def _module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        info = self._class(type(instance))
        parent = self._parent()
        identity, identity_attrs = self._identity(parent)
        kwargs = _values.call_inputs(inputs)

        is_predictor = isinstance(instance, dspy.Predict)
        path, root, names = self._scope(parent, instance, is_predictor)
        if not identity_attrs:
            identity_attrs = {_PROGRAM: info.class_name}
        if is_predictor:
            predictor = path or names.get(id(instance)) or None
        else:
            predictor = parent.predictor if parent is not None else None
        if parent is not None and parent.agent is not None:
            self._next_iteration(parent, parent.agent, instance, identity_attrs, predictor)

        attributes: dict[str, Any] = dict(identity_attrs)
        attributes[_KIND] = info.kind
        attributes[GeodeAttributes.MODULE_CLASS] = info.class_name
        if predictor:
            attributes[_PREDICTOR] = predictor
        signature = _signature_text(instance)
        if signature is not None:
            attributes[GeodeAttributes.SIGNATURE] = signature

        if info.kind == _RETRIEVER:
            query = kwargs.get("query", kwargs.get("query_or_queries"))
            value, mime = _values.value_and_mime(query if isinstance(query, str) else kwargs)
        else:
            value, mime = _values.value_and_mime(kwargs)
        attributes[_INPUT] = value
        attributes[_INPUT_MIME] = mime

        new_agent: _Agent | None = None
        if info.kind == _AGENT:
            agent_name = getattr(instance, "name", None)
            if not isinstance(agent_name, str) or not agent_name:
                agent_name = path or info.class_name
            attributes[SpanAttributes.AGENT_NAME] = agent_name
            new_agent = _Agent(react=getattr(instance, "react", None) if info.is_react else None)
            name = agent_name
        else:
            name = path or info.class_name
        if info.span_name:
            try:
                custom = instance.geode_span_name(kwargs)
                if isinstance(custom, str) and custom:
                    name = custom
            except Exception:
                logger.debug("geode_span_name of %s raised", info.class_name, exc_info=True)

        record = self._start(call_id, name, attributes, parent, (identity, identity_attrs))
        record.root = root
        record.names = names
        record.predictor = predictor
        record.agent = new_agent
        record.module = instance
        record.info = info
        record.inputs = kwargs if (info.span_attributes or info.kind == _AGENT) else None

    def on_module_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        """Close the module's span with its output, documents or error."""
        record = self._open.pop(call_id, None)
        if record is None:
            return
        try:
            self._module_end(record, outputs, exception)
        except Exception:
            self._internal_error("on_module_end")
        finally:
            self._detach(record)
            record.span.end()

    def _module_end(self, record: _Open, outputs: Any, exception: BaseException | None) -> None:
        span = record.span
        info = record.info
        attributes: dict[str, Any] = {}
        if exception is not None:
            _record_error(span, exception)
        else:
            # OK rather than UNSET, so Phoenix shows a finished run as succeeded.
            span.set_status(StatusCode.OK)
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
                agent.iteration.end()
                agent.iteration = None
            attributes[GeodeAttributes.AGENT_ITERATIONS] = agent.iterations
            attributes[GeodeAttributes.AGENT_TERMINATION] = self._termination(
                record, agent, outputs, exception
            )
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
            span.set_attributes(attributes)

    @staticmethod
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

    # -- LM calls ----------------------------------------------------------------------------------

    def _lm_static(self, lm: Any) -> dict[str, Any]:
        cached = self._lms.get(id(lm))
        if cached is not None and cached[0] is lm:
            return cached[1]
        model = str(getattr(lm, "model", None) or type(lm).__name__)
        static: dict[str, Any] = {_KIND: _LLM, SpanAttributes.LLM_MODEL_NAME: model}
        if "/" in model:
            static[SpanAttributes.LLM_PROVIDER] = model.split("/", 1)[0].lower()
        if len(self._lms) >= _CACHE_LIMIT:
            self._lms.clear()
        self._lms[id(lm)] = (lm, static)
        return static

    def _invocation_parameters(self, lm: Any, call_kwargs: Mapping[str, Any] | None) -> str:
        """The LM's parameters for this call as JSON (memoized: they rarely change between calls)."""
        merged = {**(getattr(lm, "kwargs", None) or {}), **(call_kwargs or {})}
        try:
            key: Any = tuple(merged.items())
            cached = self._parameters.get(key)
        except TypeError:  # an unhashable value, e.g. a response_format schema dict
            key, cached = None, None
        if cached is not None:
            return cached
        text = _values.to_json(
            {k: v for k, v in merged.items() if v is not None and not k.startswith("api_")}
        )
        if key is not None:
            if len(self._parameters) >= _CACHE_LIMIT:
                self._parameters.clear()
            self._parameters[key] = text
        return text

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open an LLM span with model, parameters and input messages; capture this call's usage."""
        try:
            self._lm_start(call_id, instance, inputs)
        except Exception:
            self._internal_error("on_lm_start")

    def _lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        parent = self._parent()
        identity, identity_attrs = self._identity(parent)
        attributes: dict[str, Any] = dict(identity_attrs)
        attributes.update(self._lm_static(instance))
        if parent is not None and parent.predictor:
            attributes[_PREDICTOR] = parent.predictor

        attributes[SpanAttributes.LLM_INVOCATION_PARAMETERS] = self._invocation_parameters(
            instance, inputs.get("kwargs")
        )
        messages = inputs.get("messages")
        if not messages and inputs.get("prompt") is not None:
            messages = [{"role": "user", "content": inputs["prompt"]}]
        if messages:
            # The messages are the LLM span's input; an input.value repeating them as JSON would double
            # the span's size and the time to build it.
            _values.input_message_attributes(messages, attributes)

        name = str(attributes[SpanAttributes.LLM_MODEL_NAME])
        record = self._start(call_id, name, attributes, parent, (identity, identity_attrs), suppress=True)
        if parent is not None:
            record.predictor = parent.predictor

        # Equivalent to entering dspy.context(usage_tracker=..., caller_modules=...) for the call, without
        # merging every global setting into the overrides as dspy.context does.
        overrides = _dspy_overrides.get()
        capture = _LMCapture(dspy.settings.get("usage_tracker"))
        callers = dspy.settings.get("caller_modules") or []
        scoped = _DotDict(overrides)
        scoped["usage_tracker"] = capture
        # First in the list: DSPy's decision adapter reads the *last* caller as the calling module.
        scoped["caller_modules"] = [capture, *callers]
        record.lm = capture
        record.lm_token = _dspy_overrides.set(scoped)

    def on_lm_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        """Close the LLM span with output messages, token counts, cost and the cache-hit flag."""
        record = self._open.pop(call_id, None)
        if record is None:
            return
        try:
            if record.lm_token is not None:
                _dspy_overrides.reset(record.lm_token)
            self._lm_end(record, outputs, exception)
        except Exception:
            self._internal_error("on_lm_end")
        finally:
            self._detach(record)
            record.span.end()

    def _lm_end(self, record: _Open, outputs: Any, exception: BaseException | None) -> None:
        span = record.span
        if exception is not None:
            _record_error(span, exception)
        else:
            span.set_status(StatusCode.OK)
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
            self._usage_attributes(record.lm, exception, attributes)
        if attributes:
            span.set_attributes(attributes)

    @staticmethod
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

    # -- tools -------------------------------------------------------------------------------------

    def _tool_static(self, tool: Any) -> dict[str, Any]:
        cached = self._tools.get(id(tool))
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
        if len(self._tools) >= _CACHE_LIMIT:
            self._tools.clear()
        self._tools[id(tool)] = (tool, static)
        return static

    @staticmethod
    def _is_pseudo_tool(tool: Any) -> bool:
        if getattr(tool, "name", None) not in _PSEUDO_TOOLS:
            return False
        module = getattr(getattr(tool, "func", None), "__module__", None) or ""
        return module.startswith(("dspy.", "geode."))

    def on_tool_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open a TOOL span (none for ReAct's own ``finish``/``submit``)."""
        try:
            self._tool_start(call_id, instance, inputs)
        except Exception:
            self._internal_error("on_tool_start")

    def _tool_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        parent = self._parent()
        if self._is_pseudo_tool(instance):
            if parent is not None and parent.agent is not None:
                parent.agent.finished = True
            return
        identity, identity_attrs = self._identity(parent)
        static = self._tool_static(instance)
        attributes: dict[str, Any] = dict(identity_attrs)
        attributes.update(static)
        if parent is not None and parent.agent is not None and parent.agent.iteration is not None:
            attributes[_PREDICTOR] = "react" if parent.predictor is None else parent.predictor
        elif parent is not None and parent.predictor:
            attributes[_PREDICTOR] = parent.predictor
        kwargs = inputs.get("kwargs", inputs)
        attributes[_INPUT] = _values.to_json(kwargs)
        attributes[_INPUT_MIME] = _values.JSON_MIME
        self._start(call_id, static[ToolAttributes.TOOL_NAME], attributes, parent, (identity, identity_attrs))

    def on_tool_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        """Close the TOOL span with the tool's result or error."""
        record = self._open.pop(call_id, None)
        if record is None:
            return
        try:
            span = record.span
            if exception is not None:
                _record_error(span, exception)
                span.set_attribute(GeodeAttributes.TOOL_ERROR, True)
                if isinstance(exception, ToolTimeoutError | TimeoutError):
                    span.set_attribute(GeodeAttributes.TOOL_TIMEOUT, True)
            else:
                span.set_status(StatusCode.OK)
                if outputs is not None:
                    value, mime = _values.value_and_mime(outputs)
                    span.set_attributes({_OUTPUT: value, _OUTPUT_MIME: mime})
        except Exception:
            self._internal_error("on_tool_end")
        finally:
            self._detach(record)
            record.span.end()

    # -- evaluation --------------------------------------------------------------------------------

    def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open one EVALUATOR span, so an evaluation's program runs share its trace."""
        try:
            parent = self._parent()
            identity, identity_attrs = self._identity(parent)
            program = inputs.get("program")
            devset = inputs.get("devset") or getattr(instance, "devset", None) or ()
            metric = inputs.get("metric") or getattr(instance, "metric", None)
            summary = {
                "program": type(program).__name__ if program is not None else None,
                "metric": getattr(metric, "__name__", type(metric).__name__) if metric is not None else None,
                "examples": len(devset) if hasattr(devset, "__len__") else None,
            }
            attributes: dict[str, Any] = dict(identity_attrs) or {_PROGRAM: summary["program"] or "Evaluate"}
            attributes[_KIND] = _EVALUATOR
            attributes[_INPUT] = _values.to_json(summary)
            attributes[_INPUT_MIME] = _values.JSON_MIME
            self._start(call_id, "Evaluate", attributes, parent, (identity, identity_attrs))
        except Exception:
            self._internal_error("on_evaluate_start")

    def on_evaluate_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        """Close the EVALUATOR span with the score."""
        record = self._open.pop(call_id, None)
        if record is None:
            return
        try:
            if exception is not None:
                _record_error(record.span, exception)
            else:
                record.span.set_status(StatusCode.OK)
                score = getattr(outputs, "score", None)
                record.span.set_attributes(
                    {_OUTPUT: _values.to_json({"score": score}), _OUTPUT_MIME: _values.JSON_MIME}
                )
        except Exception:
            self._internal_error("on_evaluate_end")
        finally:
            self._detach(record)
            record.span.end()


def _reinstate() -> BaseCallback:
    """The unpickled form of a :class:`GeodeCallback` (see :meth:`GeodeCallback.__reduce__`)."""
    from geode.runtime.instrumentation import active_callback  # the package imports this module

    return active_callback() or BaseCallback()
