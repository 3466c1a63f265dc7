"""The llama.cpp execution engine behind :class:`~geode.runtime.lm.local.LocalLM`.

DSPy 3.4's extension point for a custom model is an *engine*: an object with
``complete(Request) -> Response`` (and ``stream``) handed to ``dspy.LM(..., engine=...)``. DSPy keeps its
cache, retries, ``n`` fan-out, history, usage tracking and callbacks; the engine only turns one canonical
request into one response. This module is that engine for an in-process llama.cpp model.

A loaded ``llama_cpp.Llama`` is not thread-safe and holds a KV cache that makes a shared prompt prefix
free on the next call, so each model file is loaded once per process and every use goes through its lock.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from dspy.lm15 import (
    Config,
    ContextLengthError,
    InvalidRequestError,
    Message,
    Request,
    Response,
    StreamDeltaEvent,
    StreamEndEvent,
    StreamStartEvent,
    TextDelta,
    TextPart,
    ThinkingPart,
    UnsupportedFeatureError,
    Usage,
)

from geode.errors import MissingExtraError, ModelFileError
from geode.runtime.lm._threads import usable_cores

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from llama_cpp import Llama, LlamaGrammar
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

__all__ = [
    "AsyncLlamaCppEngine",
    "LlamaCppEngine",
    "LoadedModel",
    "ModelSpec",
    "import_llama_cpp",
    "json_schema_grammar",
    "llama_response_format",
    "load_model",
]

logger = logging.getLogger(__name__)

PROVIDER: Final = "llama.cpp"

# What this engine honours. Adapters read it (through dspy.LM's capability hooks) to decide what to
# send: with "response_format" present and supports_response_schema, SmallModelAdapter and JSONAdapter
# send the output schema, which becomes a decoding grammar here.
SUPPORTED_PARAMS: Final = frozenset(
    {
        "temperature",
        "max_tokens",
        "top_p",
        "top_k",
        "stop",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "response_format",
        "stream",
    }
)

# llama.cpp sampling knobs with no canonical Config field; they arrive as Config.extensions.
_EXTENSION_PARAMS: Final = frozenset({"min_p", "typical_p", "repeat_penalty"})

# create_completion's own defaults differ from create_chat_completion's (16 tokens, temperature 0.8); an
# unset field must behave as llama.cpp's chat API does: no token cap but the context, temperature 0.2.
_CHAT_DEFAULTS: Final[Mapping[str, Any]] = {"temperature": 0.2, "max_tokens": None}

_GRAMMAR_CACHE_SIZE: Final = 128
_GGUF_MAGIC: Final = b"GGUF"


def import_llama_cpp() -> Any:
    """Import ``llama_cpp``, configured for a shared CPU, or say how to install it.

    Raises:
        MissingExtraError: ``llama-cpp-python`` is not installed.
    """
    # llama.cpp's OpenMP threads spin while waiting for work. On a machine whose cores are shared with
    # other processes, spinning threads steal the cores the working threads need: measured 3-4x slower
    # decoding on 2 busy cores. Passive waiting costs nothing when the machine is idle. libgomp reads the
    # variable once, when llama.cpp's library loads, so it must be set before the first import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import llama_cpp
    except ImportError as exc:
        raise MissingExtraError("the embedded LM", "local") from exc
    return llama_cpp


@dataclass(frozen=True)
class ModelSpec:
    """Everything that makes two loaded llama.cpp models different; one load per spec per process."""

    path: Path
    context_size: int
    threads: int | None
    """``None``: every core this process may use (:func:`~geode.runtime.lm._threads.usable_cores`)."""
    flash_attn: bool = True


class LoadedModel:
    """One ``llama_cpp.Llama`` shared by every ``LocalLM`` on the same spec, with the lock for its use.

    Attributes:
        spec: What was loaded.
        llama: The llama.cpp model. Hold :attr:`lock` for any call on it.
        lock: Serialises all use of :attr:`llama` (it is not thread-safe).
    """

    def __init__(self, spec: ModelSpec, llama: Llama) -> None:
        self.spec = spec
        self.llama = llama
        self.lock = threading.Lock()
        self.formatter = _chat_formatter(spec.path, llama)
        self._grammars: OrderedDict[str, LlamaGrammar] = OrderedDict()
        self._grammar_lock = threading.Lock()

    def grammar(self, response_format: Mapping[str, Any]) -> LlamaGrammar:
        """The decoding grammar for a canonical ``response_format``, built once per distinct schema."""
        key = json.dumps(response_format, sort_keys=True)
        with self._grammar_lock:
            cached = self._grammars.get(key)
            if cached is not None:
                self._grammars.move_to_end(key)
                return cached
        grammar = _build_grammar(response_format)
        with self._grammar_lock:
            self._grammars[key] = grammar
            while len(self._grammars) > _GRAMMAR_CACHE_SIZE:
                self._grammars.popitem(last=False)
        return grammar

    def prompt_tokens(self, messages: Sequence[Mapping[str, str]]) -> tuple[list[int], list[str]]:
        """Render messages with the model's own chat template and tokenize them, as llama.cpp does.

        Returns:
            The prompt tokens and the template's stop strings.
        """
        formatted = self.formatter(messages=cast(Any, list(messages)))
        tokens = self.llama.tokenize(
            formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True
        )
        stop = formatted.stop
        stops = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
        return tokens, [s for s in stops if s]


_models: dict[ModelSpec, LoadedModel] = {}
_models_lock = threading.Lock()


def check_model_file(path: Path) -> None:
    """Fail early, in one line, if ``path`` cannot be a GGUF model.

    Raises:
        ModelFileError: The file is missing, unreadable, or not GGUF.
    """
    hint = "set GEODE_LM_MODEL_PATH (or model_path=) to a .gguf file, or unset it to use the bundled model"
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}", hint=hint)
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc.strerror or exc}", hint=hint) from exc
    if magic != _GGUF_MAGIC:
        raise ModelFileError(f"{path} is not a GGUF model file", hint=hint)


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load the model for ``spec`` once per process; later calls return the same object.

    Raises:
        MissingExtraError: ``llama-cpp-python`` is not installed.
        ModelFileError: The file is not a loadable GGUF chat model.
    """
    with _models_lock:
        loaded = _models.get(spec)
        if loaded is not None:
            return loaded
        check_model_file(spec.path)
        llama_cpp = import_llama_cpp()
        threads = spec.threads or usable_cores()
        try:
            llama = llama_cpp.Llama(
                model_path=str(spec.path),
                n_ctx=spec.context_size,
                n_threads=threads,
                n_threads_batch=threads,
                flash_attn=spec.flash_attn,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelFileError(
                f"llama.cpp could not load {spec.path}: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                hint="check that the file is a complete GGUF model (re-download or reinstall it)",
            ) from exc
        loaded = LoadedModel(spec, llama)
        if not _models:
            atexit.register(_close_all)
        _models[spec] = loaded
        return loaded


def _close_all() -> None:
    # Free the models while llama_cpp's module globals still exist; freed during interpreter teardown
    # instead, llama-cpp-python's finaliser fails with "'NoneType' object is not callable".
    with _models_lock:
        loaded_models = list(_models.values())
        _models.clear()
    for loaded in loaded_models:
        # A generation still running in a daemon thread keeps its model; the process is ending anyway.
        if loaded.lock.acquire(timeout=1.0):
            try:
                loaded.llama.close()
            finally:
                loaded.lock.release()


def _chat_formatter(path: Path, llama: Llama) -> Jinja2ChatFormatter:
    # The same formatter llama-cpp-python builds from GGUF metadata for create_chat_completion. Rendering
    # the prompt here gives exact prompt token counts (also when streaming) and the reusable KV prefix.
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        raise ModelFileError(
            f"{path} has no chat template, so it is not an instruct/chat model",
            hint="use an instruct GGUF model (its metadata carries tokenizer.chat_template)",
        )
    eos_id, bos_id = llama.token_eos(), llama.token_bos()
    eos = llama.detokenize([eos_id], special=True).decode("utf-8", "replace") if eos_id != -1 else ""
    bos = llama.detokenize([bos_id], special=True).decode("utf-8", "replace") if bos_id != -1 else ""
    return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, stop_token_ids=[eos_id])


# -- structured output -----------------------------------------------------------------------------


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


def _build_grammar(response_format: Mapping[str, Any]) -> LlamaGrammar:
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    converted = llama_response_format(response_format)
    assert converted is not None
    schema = converted.get("schema")
    if schema is not None:
        try:
            return LlamaGrammar.from_string(json_schema_grammar(schema), verbose=False)
        except UnsupportedFeatureError as exc:
            # Any-JSON still beats free text for a small model; DSPy's own adapters degrade the same way.
            logger.warning("constraining to any JSON instead of the output schema: %s", exc.message)
    return LlamaGrammar.from_string(JSON_GBNF, verbose=False)


# -- request conversion ----------------------------------------------------------------------------


def _text_of(parts: Sequence[Any], where: str) -> str:
    texts: list[str] = []
    for index, part in enumerate(parts):
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, ThinkingPart):
            # Earlier reasoning in the history is not replayed to a model that has no reasoning mode.
            continue
        else:
            raise UnsupportedFeatureError(
                f"the local model takes text only, not {part.type} parts",
                feature=f"{where}.parts[{index}]",
                provider=PROVIDER,
            )
    return "\n".join(texts)


def chat_messages(request: Request) -> list[dict[str, str]]:
    """The request's system prompt and messages as OpenAI-style chat messages (text only).

    Raises:
        UnsupportedFeatureError: Non-text content, tool results, or tools.
    """
    if request.tools:
        raise UnsupportedFeatureError(
            "the local model has no native tool calling; use DSPy's text tool format (dspy.ReAct does)",
            feature="tools",
            provider=PROVIDER,
        )
    messages: list[dict[str, str]] = []
    if request.system is not None:
        system = request.system if isinstance(request.system, str) else _text_of(request.system, "system")
        messages.append({"role": "system", "content": system})
    for index, message in enumerate(request.messages):
        role = message.role
        if role == "tool":
            raise UnsupportedFeatureError(
                "the local model has no native tool calling", feature=f"messages[{index}]", provider=PROVIDER
            )
        content = _text_of(message.parts, f"messages[{index}]")
        messages.append({"role": "system" if role == "developer" else role, "content": content})
    return messages


def sampling_kwargs(config: Config) -> dict[str, Any]:
    """llama-cpp-python ``create_completion`` keyword arguments for a canonical ``Config``.

    Unset fields take the defaults of llama-cpp-python's chat API, so a bare request samples as
    ``create_chat_completion`` would.

    Raises:
        UnsupportedFeatureError: A setting the local model cannot honour (logprobs, reasoning, ...).
    """
    refused = {
        "config.logprobs": config.logprobs is not None,
        "config.reasoning": config.reasoning is not None and config.reasoning.effort != "off",
        "config.tool_choice": config.tool_choice is not None,
        "config.probabilities": config.probabilities is not None,
        "config.service_tier": config.service_tier is not None,
        "config.store": bool(config.store),
    }
    for feature, present in refused.items():
        if present:
            raise UnsupportedFeatureError(
                f"the local model does not support {feature.removeprefix('config.')}",
                feature=feature,
                provider=PROVIDER,
            )
    kwargs: dict[str, Any] = dict(_CHAT_DEFAULTS)
    for name in (
        "temperature",
        "max_tokens",
        "top_p",
        "top_k",
        "seed",
        "frequency_penalty",
        "presence_penalty",
    ):
        value = getattr(config, name)
        if value is not None:
            kwargs[name] = value
    for name, value in (config.extensions or {}).items():
        if name not in _EXTENSION_PARAMS:
            raise UnsupportedFeatureError(
                f"unknown setting {name!r} for the local model (known: {', '.join(sorted(_EXTENSION_PARAMS))})",
                feature=f"config.extensions.{name}",
                provider=PROVIDER,
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequestError(f"{name} must be a number, got {value!r}", provider=PROVIDER)
        kwargs[name] = float(value)
    return kwargs


# -- the engine ------------------------------------------------------------------------------------


class _TokenCounter:
    """A llama.cpp stopping criterion that never stops, only counts sampled tokens.

    llama-cpp-python reports no usage while streaming. Each sampled token passes through the stopping
    criteria once, with the evaluated tokens so far; one more call after the loop repeats the last length.
    """

    def __init__(self) -> None:
        self.prompt_tokens: int | None = None
        self.sampled = 0
        self._last_length = -1

    def __call__(self, input_ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> bool:
        length = len(input_ids)
        if length > self._last_length:
            if self.prompt_tokens is None:
                self.prompt_tokens = length
            self.sampled += 1
            self._last_length = length
        return False


class _RepetitionStop:
    """A llama.cpp stopping criterion that ends free text once the model repeats itself verbatim.

    A small model that loses the thread copies its own last sentence (or one token) until ``max_tokens``:
    measured on SmolLM2-135M, three answers of 47 ran to 512 tokens that way, more time than all the
    others together. Generation stops when the last ``ngram`` sampled tokens already occurred earlier in
    the output. The repeat itself stays in the text; everything the model said before it is kept.
    """

    def __init__(self, prompt_tokens: int, ngram: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.ngram = ngram

    def __call__(self, input_ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> bool:
        import numpy as np
        from numpy.lib.stride_tricks import sliding_window_view

        out = np.asarray(input_ids[self.prompt_tokens :])
        n = self.ngram
        if len(out) <= n:
            return False
        earlier = sliding_window_view(out[:-1], n)
        return bool((earlier == out[-n:]).all(axis=1).any())


def _common_prefix(left: Sequence[int], right: Sequence[int]) -> int:
    count = 0
    for a, b in zip(left, right, strict=False):
        if a != b:
            break
        count += 1
    return count


class _StopScanner:
    """Finds stop strings in streamed text, holding back a tail that may be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        self.buffer += text
        if not self.stops:
            out, self.buffer = self.buffer, ""
            return out
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.buffer = self.buffer[: min(hits)], ""
            return out
        keep = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.buffer)), 0, -1):
                if stop.startswith(self.buffer[-k:]):
                    keep = max(keep, k)
                    break
        out, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep :]
        return out

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


class LlamaCppEngine:
    """A DSPy engine running one canonical request at a time on an in-process llama.cpp model.

    Pass it to ``dspy.LM(model, engine=LlamaCppEngine(...))``; :class:`~geode.runtime.lm.local.LocalLM`
    does this for you. The engine declares what it honours through the capability attributes DSPy reads
    from custom engines (``supports_response_schema``, ``supported_params``).

    Args:
        model: The loaded model (see :func:`load_model`).
        structured_output: Declare JSON-schema support, so the adapter sends each signature's
            output schema and decoding is constrained to it. ``False`` leaves the adapter to ask for JSON in
            the prompt only (useful to measure what the constraint buys).
        sampling: Defaults for llama.cpp's own sampling knobs (``min_p``, ``typical_p``,
            ``repeat_penalty``); a request's ``Config.extensions`` overrides them. DSPy's call keywords
            cannot carry these (lm15 refuses unknown keys), so they are set here.
        repetition_retry: Repetition penalty for the one retry of a schema-constrained answer cut off by
            ``max_tokens`` before its JSON closed; ``None`` never retries.
        repetition_stop: End a free-text answer (no response schema) once its last this-many tokens
            repeat an earlier stretch of it verbatim (see :class:`_RepetitionStop`); ``None`` never does.
    """

    supports_function_calling = False
    supports_reasoning = False

    def __init__(
        self,
        model: LoadedModel,
        *,
        structured_output: bool = True,
        sampling: Mapping[str, float] | None = None,
        repetition_retry: float | None = 1.1,
        repetition_stop: int | None = 16,
    ) -> None:
        if repetition_stop is not None and repetition_stop < 2:
            raise ValueError(f"repetition_stop must be at least 2 tokens, got {repetition_stop}")
        unknown = set(sampling or ()) - _EXTENSION_PARAMS
        if unknown:
            raise ValueError(
                f"unknown llama.cpp sampling settings {sorted(unknown)}; known: {sorted(_EXTENSION_PARAMS)}"
            )
        self.model = model
        self.sampling = {key: float(value) for key, value in (sampling or {}).items()}
        self.repetition_retry = repetition_retry
        self.repetition_stop = repetition_stop
        self.supports_response_schema = structured_output
        self.supported_params = (
            SUPPORTED_PARAMS if structured_output else SUPPORTED_PARAMS - {"response_format"}
        )

    def _prepare(self, request: Request) -> tuple[list[int], list[str], dict[str, Any]]:
        messages = chat_messages(request)
        kwargs = {**self.sampling, **sampling_kwargs(request.config)}
        if request.config.response_format is not None:
            kwargs["grammar"] = self.model.grammar(request.config.response_format)
        # Tokenizing reads only the vocabulary, which llama.cpp never mutates, so it runs outside the lock.
        tokens, template_stops = self.model.prompt_tokens(messages)
        n_ctx = self.model.spec.context_size
        if len(tokens) >= n_ctx:
            raise ContextLengthError(
                f"the prompt is {len(tokens)} tokens but the local model's context window is {n_ctx}; "
                "raise GEODE_LM_CONTEXT_SIZE or send shorter inputs",
                provider=PROVIDER,
            )
        return tokens, template_stops, kwargs

    def _reused_prefix(self, tokens: Sequence[int]) -> int:
        # llama.cpp keeps the previous call's tokens in its KV cache and re-evaluates only what differs.
        llama = self.model.llama
        cached = llama.input_ids[: llama.n_tokens].tolist()
        return min(_common_prefix(cached, tokens), max(len(tokens) - 1, 0))

    def complete(self, request: Request) -> Response:
        """Generate one completion for ``request``.

        A schema-constrained answer that runs out of tokens before its JSON closes is, on a small model,
        almost always a repetition loop (the same list item again and again) and can never parse. It is
        generated once more with :attr:`repetition_retry` as the repetition penalty; usage counts both.

        Raises:
            UnsupportedFeatureError: The request asks for something the local model cannot do.
            ContextLengthError: The prompt does not fit the context window.
        """
        tokens, template_stops, kwargs = self._prepare(request)
        stop = [*request.config.stop, *template_stops]
        with self.model.lock:
            reused = self._reused_prefix(tokens)
            result = self._create(tokens, stop, kwargs)
            retried = self._needs_retry(request, kwargs, result)
            if retried:
                first_usage = result["usage"]
                result = self._create(tokens, stop, {**kwargs, "repeat_penalty": self.repetition_retry})
                for key in ("prompt_tokens", "completion_tokens"):
                    result["usage"][key] += first_usage[key]
                # The retry's prompt is the same, so all of it but the last token came from the KV cache.
                reused += len(tokens) - 1
        choice = result["choices"][0]
        usage = result["usage"]
        return Response(
            id=result.get("id"),
            model=request.model,
            message=Message.assistant([TextPart(choice["text"] or "")]),
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
            usage=Usage(
                input_tokens=usage["prompt_tokens"],
                output_tokens=usage["completion_tokens"],
                cache_read_tokens=reused,
            ),
            provider_data={"repetition_retry": True} if retried else None,
        )

    def _create(self, tokens: list[int], stop: list[str], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return cast(
                dict[str, Any],
                self.model.llama.create_completion(
                    tokens,
                    stop=stop,
                    stream=False,
                    stopping_criteria=self._criteria(len(tokens), kwargs),
                    **kwargs,
                ),
            )
        except ValueError as exc:
            raise InvalidRequestError(str(exc), provider=PROVIDER) from exc

    def _needs_retry(self, request: Request, kwargs: Mapping[str, Any], result: Mapping[str, Any]) -> bool:
        response_format = request.config.response_format
        if (
            self.repetition_retry is None
            or response_format is None
            or response_format.get("type") != "json_schema"
        ):
            return False
        if float(kwargs.get("repeat_penalty", 1.0)) >= self.repetition_retry:
            return False  # already sampling with at least this penalty: a retry would repeat itself
        choice = result["choices"][0]
        if choice.get("finish_reason") != "length":
            return False
        try:
            json.loads(choice["text"] or "")
        except ValueError:
            return True
        return False

    def _criteria(self, prompt_tokens: int, kwargs: Mapping[str, Any]) -> Any:
        from llama_cpp import StoppingCriteriaList

        stop_ids = self.model.formatter.stop_token_ids or set()

        # Parity with llama-cpp-python's chat handler: stop once the template's end token is in the input.
        def stop_on_template_token(input_ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> bool:
            return len(input_ids) > 0 and int(input_ids[-1]) in stop_ids

        criteria = StoppingCriteriaList([stop_on_template_token])
        # Under a grammar a repeat is usually legitimate (list items alike) and the retry handles loops.
        if self.repetition_stop is not None and "grammar" not in kwargs:
            criteria.append(_RepetitionStop(prompt_tokens, self.repetition_stop))
        return criteria

    def stream(self, request: Request) -> Iterator[Any]:
        """Stream one completion as lm15 events: start, text deltas, end (with real token usage).

        The model's lock is held while the stream is open; close the iterator to release it early.
        """
        tokens, template_stops, kwargs = self._prepare(request)
        return self._stream(request.model, tokens, template_stops, list(request.config.stop), kwargs)

    def _stream(
        self,
        model_name: str,
        tokens: list[int],
        template_stops: list[str],
        stops: list[str],
        kwargs: dict[str, Any],
    ) -> Iterator[Any]:
        counter = _TokenCounter()
        criteria = self._criteria(len(tokens), kwargs)
        criteria.append(counter)
        # Caller stop strings are matched here, not in llama.cpp, so the count of generated tokens stays
        # exact: llama.cpp reports "stop" both for the end token (not an output token) and for a stop string.
        scanner = _StopScanner(stops)
        with self.model.lock:
            reused = self._reused_prefix(tokens)
            chunks = cast(
                Iterator[dict[str, Any]],
                self.model.llama.create_completion(
                    tokens, stop=template_stops, stream=True, stopping_criteria=criteria, **kwargs
                ),
            )
            finish = "stop"
            with contextlib.closing(cast(Any, chunks)):
                yield StreamStartEvent(id=f"cmpl-{uuid.uuid4()}", model=model_name)
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    text = scanner.feed(choice.get("text") or "")
                    if text:
                        yield StreamDeltaEvent(TextDelta(text))
                    if scanner.stopped:
                        break
                    if choice.get("finish_reason") is not None:
                        finish = choice["finish_reason"]
            if not scanner.stopped:
                tail = scanner.flush()
                if tail:
                    yield StreamDeltaEvent(TextDelta(tail))
            # The end token is sampled but is not output; a length or stop-string finish has no such token.
            output_tokens = counter.sampled - (1 if finish == "stop" and not scanner.stopped else 0)
            yield StreamEndEvent(
                finish_reason="length" if finish == "length" else "stop",
                usage=Usage(
                    input_tokens=counter.prompt_tokens if counter.prompt_tokens is not None else len(tokens),
                    output_tokens=max(output_tokens, 0),
                    cache_read_tokens=reused,
                ),
            )

    def close(self) -> None:
        """Nothing to release: the model is shared by every LM on it for the life of the process."""


_DONE: Final = object()


class AsyncLlamaCppEngine:
    """The async counterpart DSPy needs for ``acall``: the sync engine, run in a worker thread.

    llama.cpp computes on its own threads and releases the GIL, so the event loop stays responsive; calls
    still run one at a time on the model.
    """

    supports_function_calling = False
    supports_reasoning = False

    def __init__(self, sync: LlamaCppEngine) -> None:
        self.sync = sync
        self.supports_response_schema = sync.supports_response_schema
        self.supported_params = sync.supported_params

    async def complete(self, request: Request) -> Response:
        """Generate one completion without blocking the event loop."""
        return await asyncio.to_thread(self.sync.complete, request)

    async def stream(self, request: Request) -> AsyncGenerator[Any, None]:
        """Stream events produced in a worker thread; leaving early stops generation at the next token."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()
        cancelled = threading.Event()

        def put(item: Any, error: BaseException | None = None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening any more
                loop.call_soon_threadsafe(queue.put_nowait, (item, error))

        def produce() -> None:
            try:
                with contextlib.closing(cast(Any, self.sync.stream(request))) as events:
                    for event in events:
                        if cancelled.is_set():
                            return
                        put(event)
            except BaseException as exc:  # delivered to the consumer, which re-raises it
                put(None, exc)
            finally:
                put(_DONE)

        worker = loop.run_in_executor(None, produce)
        try:
            while True:
                item, error = await queue.get()
                if error is not None:
                    raise error
                if item is _DONE:
                    break
                yield item
        finally:
            cancelled.set()
            await asyncio.shield(worker)

    async def aclose(self) -> None:
        """Nothing to release (see :meth:`LlamaCppEngine.close`)."""
