"""The DSPy engines on a loaded llama.cpp model: one canonical request in, one response (or stream) out.

DSPy 3.4's extension point for a custom model is an *engine*: an object with
``complete(Request) -> Response`` (and ``stream``) handed to ``dspy.LM(..., engine=...)``. DSPy keeps its
cache, retries, ``n`` fan-out, history, usage tracking and callbacks; the engine only turns one canonical
request into one response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

from dspy.lm15 import (
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
    Usage,
)

from geode.runtime.lm._llama_request import _EXTENSION_PARAMS, PROVIDER, chat_messages, sampling_kwargs
from geode.runtime.lm._llama_stopping import _RepetitionStop, _StopScanner, _TokenCounter

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from geode.runtime.lm._llama import LoadedModel

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


def _common_prefix(left: Sequence[int], right: Sequence[int]) -> int:
    count = 0
    for a, b in zip(left, right, strict=False):
        if a != b:
            break
        count += 1
    return count


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
