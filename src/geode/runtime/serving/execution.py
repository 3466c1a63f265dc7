"""Running the program for one call: under its span, identity, settings and deadline.

Programs run with ``acall`` when they have an async path and through ``dspy.asyncify`` otherwise; a
streamed run goes through ``dspy.streamify`` with a listener per output field. DSPy's LM and parse
errors become Geode errors with stable codes, and a run past its deadline is abandoned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import dspy
from opentelemetry import context as otel_context
from opentelemetry import trace

from geode.adapters import SmallModelStreamListener
from geode.agents.tools import run_deadline
from geode.errors import GeodeError
from geode.runtime.lm import cache_namespace_values
from geode.runtime.runtime import Runtime
from geode.runtime.serving.abandon import AbandonedRunGuard, RunAbandoned, abandonment
from geode.runtime.serving.calls import Call, Outcome, jsonable, usage_of
from geode.runtime.serving.errors import DeadlineExceededError, translate_program_errors
from geode.traces.context import RunIdentity, run_identity

__all__ = ["execute"]


async def execute(
    call: Call,
    runtime: Runtime,
    guard: AbandonedRunGuard,
    timeout: float,
    *,
    stream: Callable[[Any], Awaitable[None]] | None = None,
) -> Outcome:
    """Run the program for one call under its span, identity, settings and deadline.

    Args:
        call: The call, its span already open.
        runtime: Its LM, adapter and callbacks answer.
        guard: The callback that stops an abandoned run's next LM call.
        timeout: Seconds before the call fails with ``deadline_exceeded``.
        stream: Receives each streamed item (tokens, status messages); None for a plain run.

    Raises:
        DeadlineExceededError: The program did not answer within ``timeout``.
        GeodeError: The program or its LM failed (DSPy's errors translated).
    """
    assert call.span is not None
    identity = RunIdentity(
        program=call.hosted.name,
        aliases=call.hosted.aliases,
        version=call.version,
        session_id=call.session_id,
        user_id=call.user_id,
        metadata={"request_id": call.request_id, "role": call.role},
    )
    token = otel_context.attach(trace.set_span_in_context(call.span))
    try:
        with (
            run_identity(identity),
            # One dspy.context for all of the run's DSPy settings (each copies every setting).
            dspy.context(**_dspy_settings(call, runtime, guard)),
            runtime.tracing_scope(),
            abandonment(call.abandoned),
            run_deadline(time.monotonic() + timeout),
            translate_program_errors(call.hosted.name),
        ):
            try:
                async with asyncio.timeout(timeout):
                    prediction = await _run(call, stream)
            except TimeoutError as err:
                # A sync program's thread runs on; it makes no further LM call.
                call.abandoned.set()
                raise DeadlineExceededError(
                    f"{call.hosted.name!r} did not answer within {timeout:g} s",
                    hint="retry later, shorten the input, or raise GEODE_SERVE_REQUEST_TIMEOUT_S",
                ) from err
    except RunAbandoned as err:  # the run outlived its request (it never should reach here)
        raise DeadlineExceededError(f"{call.hosted.name!r} was abandoned at its deadline") from err
    finally:
        otel_context.detach(token)
    prompt, completion, cost = usage_of(prediction)
    outputs = {name: jsonable(prediction.get(name)) for name in call.hosted.interface.output_names}
    return Outcome(outputs, prompt, completion, cost)


def _dspy_settings(call: Call, runtime: Runtime, guard: AbandonedRunGuard) -> dict[str, Any]:
    """The run's DSPy settings: the runtime's LM, adapter and callbacks, and this request's own.

    LM history stays off so memory stays flat; the request's LM overrides apply; each API key answers
    from its own cached responses, never another key's (T25); the guard is the first callback, so an
    abandoned run's next LM call stops before any span opens.
    """
    values = runtime.context_values(disable_history=True, **call.lm_overrides)
    lm = values["lm"]
    values.update(cache_namespace_values(call.caller, ensure=bool(getattr(lm, "cache", True))))
    # Without Geode's instrumentation the runtime sets no callbacks: the ones in effect stay, after the guard.
    callbacks = values.get("callbacks")
    if callbacks is None:
        callbacks = dspy.settings.get("callbacks") or []
    values["callbacks"] = [guard, *callbacks]
    return values


async def _run(call: Call, stream: Callable[[Any], Awaitable[None]] | None) -> Any:
    module = call.module
    if stream is None:
        if _has_async_path(module):
            return await module.acall(**call.inputs)
        runner: Callable[..., Awaitable[Any]] = dspy.asyncify(module)
        return await runner(**call.inputs)
    listeners = _listeners(module, call.hosted.interface.output_names)
    streamer: Any = dspy.streamify(
        module, stream_listeners=listeners, is_async_program=_has_async_path(module)
    )
    prediction: Any = None
    async for item in streamer(**call.inputs):
        if isinstance(item, dspy.Prediction):
            prediction = item
        else:
            await stream(item)
    if prediction is None:
        raise GeodeError(f"{call.hosted.name!r} streamed no final prediction")
    return prediction


def _has_async_path(module: dspy.Module) -> bool:
    return callable(getattr(module, "aforward", None))


def _output_fields(predictor: Any) -> Mapping[str, Any]:
    signature = getattr(predictor, "signature", None)
    return getattr(signature, "output_fields", None) or {}


def _listeners(module: dspy.Module, outputs: Sequence[str]) -> list[dspy.streaming.StreamListener]:
    """Stream listeners for the output fields that one predictor of ``module`` produces."""
    predictors = list(module.named_predictors())
    listeners: list[dspy.streaming.StreamListener] = []
    for name in outputs:
        owners = [(pname, p) for pname, p in predictors if name in _output_fields(p)]
        if not owners:
            continue
        pname, predictor = owners[-1]
        # DSPy's own listener for DSPy's adapters, and it also reads SmallModelAdapter's replies.
        listeners.append(
            SmallModelStreamListener(signature_field_name=name, predict=predictor, predict_name=pname)
        )
    return listeners
