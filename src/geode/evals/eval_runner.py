"""One example's run under evaluation: its own run identity, span, usage tracker and LM-call counter.

:class:`_Run` is what ``dspy.Evaluate`` calls for the program and the metric; it measures each example
(latency, LM calls, cache hits, tokens, cost) and records its :class:`~geode.evals.eval_results.ExampleResult`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback
from opentelemetry import trace as otel_trace

from geode.evals.eval_results import ExampleResult, _jsonable
from geode.evals.metrics import FieldMetric, metric_name, score_value
from geode.evals.pricing import Pricing
from geode.traces.context import RunIdentity, run_identity
from geode.traces.vocab import GeodeAttributes, OpenInferenceSpanKindValues, SpanAttributes

# The evaluation's one logger, whichever of its modules logs: users configure "geode.evals.evaluate".
logger = logging.getLogger("geode.evals.evaluate")


class _LMCallCounter(BaseCallback):
    """Counts LM calls (cache hits included) made while it is installed."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with self._lock:
            self.calls += 1


class _CallHistory:
    """Receives the history entry of every LM call made below it.

    DSPy appends each LM call's history entry to every module in ``settings.caller_modules``; put
    first in that list for one example's run, this object sees exactly that run's calls. DSPy
    records a call answered from its cache with empty usage (it adds nothing to usage trackers for
    the same reason), and some responses also carry ``cache_hit``.
    """

    def __init__(self) -> None:
        self.history: deque[dict[str, Any]] = deque()

    @property
    def cache_hits(self) -> int:
        """Calls answered from DSPy's cache."""
        return sum(1 for entry in list(self.history) if _cache_hit(entry))


def _cache_hit(entry: Mapping[str, Any]) -> bool:
    return bool(getattr(entry.get("response"), "cache_hit", False)) or not entry.get("usage")


@dataclass
class _Measure:
    latency_s: float
    lm_calls: int
    usage: dict[str, dict[str, Any]]
    error: str | None
    trace_id: str | None
    cache_hits: int = 0


def _outputs_of(pred: Any) -> dict[str, Any]:
    if isinstance(pred, dspy.Prediction):
        return dict(pred.items())
    if isinstance(pred, Mapping):
        return dict(pred)
    return {"output": pred}


def _error_text(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0][:500] if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


class _Run:
    """State shared by the program and metric wrappers of one evaluation."""

    def __init__(
        self,
        *,
        program: Callable[..., Any],
        metric: Callable[..., Any],
        examples: Sequence[dspy.Example],
        keys: Sequence[str],
        identity: RunIdentity,
        dataset_id: str,
        pricing: Pricing,
        tracer: Any,
        max_errors: int | None,
        advance: Callable[[float | None], None],
    ) -> None:
        self.program = program
        self.metric = metric
        self.metric_name = metric_name(metric)
        self.index = {id(ex): i for i, ex in enumerate(examples)}
        self.keys = keys
        self.identity = identity
        self.dataset_id = dataset_id
        self.pricing = pricing
        self.tracer = tracer
        self.max_errors = max_errors
        self.advance = advance
        self.results: dict[int, ExampleResult] = {}
        self.errors = 0
        self.skipped = 0
        self._lock = threading.Lock()
        self._local = threading.local()

    def _start_span(self, inputs: Mapping[str, Any]) -> Any:
        if self.tracer is None:
            return None
        attributes: dict[str, Any] = {
            SpanAttributes.OPENINFERENCE_SPAN_KIND: OpenInferenceSpanKindValues.CHAIN.value,
            SpanAttributes.INPUT_VALUE: json.dumps(_jsonable(inputs), ensure_ascii=False),
            SpanAttributes.INPUT_MIME_TYPE: "application/json",
            GeodeAttributes.EVAL_DATASET_ID: self.dataset_id,
            GeodeAttributes.EVAL_METRIC: self.metric_name,
            GeodeAttributes.PROGRAM_NAME: self.identity.program,
        }
        if self.identity.version:
            attributes[GeodeAttributes.PROGRAM_VERSION] = self.identity.version
        try:
            return self.tracer.start_span("geode.eval.example", attributes=attributes)
        except Exception:  # telemetry never breaks the evaluation
            logger.debug("could not start the eval example span", exc_info=True)
            return None

    # dspy.Evaluate calls program(**inputs) then metric(example, prediction) on the same worker
    # thread, so the program wrapper hands its measurements to the metric wrapper thread-locally.
    def run_program(self, **inputs: Any) -> Any:
        if self.max_errors is not None and self.errors >= self.max_errors:
            self._local.measure = _Measure(0.0, 0, {}, "skipped: max_errors reached", None)
            self._local.span = None
            return dspy.Prediction()
        counter = _LMCallCounter()
        calls = _CallHistory()
        callbacks = [*(dspy.settings.get("callbacks") or []), counter]
        callers = [calls, *(dspy.settings.get("caller_modules") or [])]
        error: str | None = None
        pred: Any = dspy.Prediction()
        # The span stays open until the metric has scored the example (see score()).
        span = self._start_span(inputs)
        self._local.span = span
        trace_id = _trace_id(span)
        start = time.perf_counter()
        with (
            otel_trace.use_span(span, end_on_exit=False) if span is not None else nullcontext(),
            run_identity(self.identity),
            dspy.track_usage() as usage,
            dspy.context(callbacks=callbacks, caller_modules=callers),
        ):
            try:
                pred = self.program(**inputs)
            except Exception as err:  # one example's failure is recorded, never raised
                error = _error_text(err)
        latency = time.perf_counter() - start
        hits = min(calls.cache_hits, counter.calls)
        self._local.measure = _Measure(
            latency, counter.calls - hits, usage.get_total_tokens(), error, trace_id, cache_hits=hits
        )
        return pred

    def score(self, example: dspy.Example, pred: Any, trace: Any = None) -> float:
        measure: _Measure = getattr(self._local, "measure", None) or _Measure(0.0, 0, {}, "not run", None)
        self._local.measure = None
        span = getattr(self._local, "span", None)
        self._local.span = None
        index = self.index.get(id(example), -1)
        score, feedback, error = 0.0, None, measure.error
        if error is None:
            try:
                raw = self.metric(example, pred)
                score = score_value(raw)
                if isinstance(raw, dspy.Prediction) and raw.get("feedback"):
                    feedback = str(raw["feedback"])
                elif isinstance(self.metric, FieldMetric) and score < 1.0:
                    feedback = self.metric.feedback(example, pred)
            except Exception as err:  # a metric bug on one example scores it 0, visibly
                error = f"metric {self.metric_name} failed: {_error_text(err)}"
        prompt_tokens = sum(int(u.get("prompt_tokens") or 0) for u in measure.usage.values())
        completion_tokens = sum(int(u.get("completion_tokens") or 0) for u in measure.usage.values())
        costs = [
            self.pricing.cost(model, int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
            for model, u in measure.usage.items()
        ]
        cost = None if any(c is None for c in costs) else float(sum(c for c in costs if c is not None))
        result = ExampleResult(
            index=index,
            example_id=self.keys[index] if 0 <= index < len(self.keys) else "",
            inputs=dict(example.inputs().items()),
            expected={k: v for k, v in example.labels().items() if not k.startswith("geode_")},
            outputs=_outputs_of(pred),
            score=score,
            latency_s=measure.latency_s,
            lm_calls=measure.lm_calls,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
            cache_hits=measure.cache_hits,
            feedback=feedback,
            error=error,
            trace_id=measure.trace_id,
        )
        if span is not None:
            _finish_span(span, result)
        with self._lock:
            self.results[index] = result
            if error is not None:
                if error.startswith("skipped:"):
                    self.skipped += 1
                else:
                    self.errors += 1
        self.advance(score)
        return score


def _trace_id(span: Any) -> str | None:
    if span is None:
        return None
    try:
        ctx = span.get_span_context()
    except Exception:
        return None
    return f"{ctx.trace_id:032x}" if getattr(ctx, "trace_id", 0) else None


def _finish_span(span: Any, result: ExampleResult) -> None:
    # Telemetry never breaks the evaluation.
    try:
        span.set_attribute(
            SpanAttributes.OUTPUT_VALUE, json.dumps(_jsonable(result.outputs), ensure_ascii=False)
        )
        span.set_attribute(SpanAttributes.OUTPUT_MIME_TYPE, "application/json")
        span.set_attribute(GeodeAttributes.EVAL_SCORE, result.score)
        span.set_attribute(GeodeAttributes.EVAL_EXAMPLE_ID, result.example_id)
        if result.error is not None:
            span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, result.error))
    except Exception:
        logger.debug("could not annotate the eval example span", exc_info=True)
    finally:
        try:
            span.end()
        except Exception:
            logger.debug("could not end the eval example span", exc_info=True)


# -- evaluate -------------------------------------------------------------------------------------
