"""Evaluation: run a program over a dataset with ``dspy.Evaluate`` and measure score, latency and cost.

:func:`evaluate` runs in the caller's DSPy context (the runtime wraps it in ``rt.context()``, which
sets the LM and adapter; ``dspy.Evaluate``'s worker threads inherit it). Each example runs under its
own run identity, usage tracker and LM-call counter, so every example gets its own latency, LM calls,
tokens and cost, and its spans say which program version answered and which eval it belonged to.

An LM call DSPy answers from its response cache costs no tokens and no time: it is counted in
``cache_hits``, never in ``lm_calls`` (measuring commands turn the cache off; see ``--allow-cache``).
Examples without an expected output cannot be scored: they are left out (not run) and counted in
``unlabelled``.

A program error or a metric error on one example scores that example 0 and is recorded on it; it
never aborts the evaluation (unless ``max_errors`` is reached, after which the rest are skipped).

With ``phoenix_url`` the run is also logged to Phoenix as an experiment (dataset, one run per example,
one evaluation per run). Phoenix being down, missing or slow never fails the evaluation.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, cast

import dspy
from dspy.utils.callback import BaseCallback
from opentelemetry import trace as otel_trace

from geode.errors import DatasetError
from geode.evals.dataset import Dataset
from geode.evals.metrics import FieldMetric, metric_name, score_value
from geode.traces.context import RunIdentity, run_identity
from geode.traces.vocab import GeodeAttributes, OpenInferenceSpanKindValues, SpanAttributes

__all__ = [
    "EvalResult",
    "ExampleResult",
    "PhoenixLink",
    "Price",
    "Pricing",
    "evaluate",
    "log_to_phoenix",
    "percentile",
]

logger = logging.getLogger(__name__)


# -- pricing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Price:
    """What a model charges, in US dollars per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Dollars for this many tokens."""
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1_000_000


class Pricing:
    """Turns token counts into dollars: an explicit price table first, then litellm's price list.

    Args:
        prices: Model name → price; wins over litellm.
        free: Model names that cost nothing (the embedded local model).
        use_litellm: Look up ``provider/model`` names in litellm's bundled price list.
    """

    def __init__(
        self,
        prices: Mapping[str, Price] | None = None,
        *,
        free: Iterable[str] = (),
        use_litellm: bool = True,
    ) -> None:
        self.prices = dict(prices or {})
        self.free = frozenset(free)
        self.use_litellm = use_litellm

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Dollars for a model's tokens; ``None`` when its price is unknown."""
        if model in self.free:
            return 0.0
        price = self.prices.get(model)
        if price is not None:
            return price.cost(prompt_tokens, completion_tokens)
        # Only provider-qualified names are litellm models; anything else (a fake, a local engine)
        # has no list price, and importing litellm for it would cost seconds.
        if not self.use_litellm or "/" not in model:
            return None
        try:
            import litellm

            prompt_cost, completion_cost = litellm.cost_per_token(
                model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
        except Exception:  # unknown model or provider: no price, not an error
            return None
        return float(prompt_cost) + float(completion_cost)


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExampleResult:
    """One example's outcome."""

    index: int
    example_id: str
    inputs: Mapping[str, Any]
    expected: Mapping[str, Any]
    outputs: Mapping[str, Any]
    score: float
    latency_s: float
    lm_calls: int = 0
    """LM calls that reached the model (cache hits are not among them)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    cache_hits: int = 0
    """LM calls DSPy answered from its response cache (no tokens, no model time)."""
    feedback: str | None = None
    """The metric's explanation, when it gives one (feedback metrics, field metrics on a miss)."""
    error: str | None = None
    """Why the program or the metric failed on this example (it then scores 0)."""
    trace_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return _jsonable(self.__dict__)


@dataclass(frozen=True)
class PhoenixLink:
    """Where an evaluation was logged in Phoenix."""

    dataset_id: str
    experiment_id: str
    url: str


@dataclass(frozen=True)
class EvalResult:
    """An evaluation of one program on one dataset with one metric.

    ``score`` is the mean metric value in ``[0, 1]`` (multiply by 100 for DSPy's percentages).
    """

    program: str
    version: str | None
    metric: str
    dataset_id: str
    dataset_name: str | None
    split: str
    model: str | None
    score: float
    n: int
    errors: int
    latency_p50_s: float
    latency_p95_s: float
    lm_calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    """Total program cost in dollars; ``None`` when a model's price is unknown."""
    duration_s: float
    num_threads: int
    started_at: str
    examples: tuple[ExampleResult, ...] = field(repr=False)
    skipped: int = 0
    """Examples not run because ``max_errors`` was reached."""
    phoenix: PhoenixLink | None = None
    cache_hits: int = 0
    """LM calls answered from DSPy's response cache: not in ``lm_calls``, and their examples'
    latencies and tokens are not those of the model."""
    unlabelled: int = 0
    """Examples left out because they have no expected output (not run, not in ``n`` or ``score``)."""

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost_per_example(self) -> float | None:
        """Mean dollars per example."""
        return None if self.cost_usd is None or not self.n else self.cost_usd / self.n

    @property
    def score_per_dollar(self) -> float | None:
        """Score points (0 to 100) per dollar spent on the whole evaluation; ``inf`` when it was free."""
        if self.cost_usd is None:
            return None
        if self.cost_usd == 0:
            return float("inf")
        return 100 * self.score / self.cost_usd

    def to_dict(self, *, examples: bool = True) -> dict[str, Any]:
        """Plain JSON-able data (optionally without the per-example results)."""
        data = {k: v for k, v in self.__dict__.items() if k != "examples"}
        data["total_tokens"] = self.total_tokens
        if examples:
            data["examples"] = [e.to_dict() for e in self.examples]
        return _jsonable(data)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable(value.__dict__)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _jsonable(dump())
    return str(value)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in ``[0, 100]``) of ``values``; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


# -- measurement ----------------------------------------------------------------------------------


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


def _progress(
    show: bool, total: int, description: str
) -> tuple[AbstractContextManager[Any], Callable[[float | None], None]]:
    if not show:
        return nullcontext(), lambda _score: None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # On stderr, so stdout keeps only results; and only on a terminal: elsewhere nothing redraws a bar,
    # and its last frame would be a line cut at 80 columns among the results.
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("score {task.fields[score]}"),
        TimeElapsedColumn(),
        transient=False,
        console=console,
        disable=not console.is_terminal,
    )
    task = progress.add_task(description, total=total, score="-")
    totals = {"sum": 0.0, "n": 0}
    lock = threading.Lock()

    def advance(score: float | None) -> None:
        with lock:
            totals["n"] += 1
            totals["sum"] += score or 0.0
            mean = totals["sum"] / totals["n"]
        progress.update(task, advance=1, score=f"{mean:.1%}")

    return progress, advance


def _labelled_only(dataset: Dataset, metric: Callable[..., Any]) -> tuple[Dataset, int]:
    """The records a label metric can score, and how many were left out for having no expected output.

    Only Geode's field metrics are known to need labels; a custom metric may judge without them, so
    it gets every record.

    Raises:
        DatasetError: No record has an expected output for the metric.
    """
    if not isinstance(metric, FieldMetric):
        return dataset, 0
    labelled = [r for r in dataset.records if metric.labelled(r.outputs)]
    missing = len(dataset.records) - len(labelled)
    if not missing:
        return dataset, 0
    if not labelled:
        where = f" {dataset.source!r}" if dataset.source else ""
        raise DatasetError(
            f"cannot evaluate: none of the {missing} records of the dataset{where} has an expected output "
            f"for {metric.name}",
            hint="fill in their outputs (geode mine keeps the traced outputs of runs not known to be bad)",
        )
    logger.info("%d record(s) without an expected output left out of the evaluation", missing)
    return dataset.with_records(labelled), missing


def evaluate(
    program: Callable[..., Any],
    data: Dataset | Sequence[dspy.Example],
    metric: Callable[..., Any],
    *,
    program_name: str | None = None,
    version: str | None = None,
    split: str = "all",
    model: str | None = None,
    num_threads: int = 1,
    pricing: Pricing | None = None,
    max_errors: int | None = None,
    show_progress: bool = False,
    tracer: Any = None,
    phoenix_url: str | None = None,
    experiment_name: str | None = None,
    tags: Sequence[str] = (),
) -> EvalResult:
    """Evaluate ``program`` on ``data`` with ``metric`` through ``dspy.Evaluate``.

    Runs in the caller's DSPy context: wrap the call in ``rt.context()`` (or ``dspy.context(lm=...)``).

    Args:
        program: A ``dspy.Module`` (or any callable taking the inputs as keywords).
        data: A :class:`Dataset` or ``dspy.Example`` objects with declared inputs.
        metric: ``metric(example, pred, trace=None)`` returning a number, a bool or
            ``dspy.Prediction(score=..., feedback=...)``.
        program_name: Name on the spans and in the result; default: the program's class name.
        version: The program version being evaluated (stamped on spans).
        split: Which split ``data`` is (``train``, ``heldout``, ``all``), for the record.
        model: The LM's name, for the record; default: the context LM's ``model``.
        num_threads: Parallel examples (keep 1 for the embedded model: it runs one call at a time).
        pricing: Token prices; default: litellm's list for ``provider/model`` names.
        max_errors: After this many failed examples, skip the rest (default: never).
        show_progress: Show a rich progress bar with the running score.
        tracer: An OpenTelemetry tracer for one span per example (its trace id is recorded and
            linked from Phoenix experiments). Default: none.
        phoenix_url: Log the evaluation to this Phoenix as an experiment (best effort).
        experiment_name: The Phoenix experiment's name.
        tags: Tags on each example's run identity.

    Returns:
        The :class:`EvalResult`, per-example results in dataset order.

    Raises:
        DatasetError: ``data`` is empty, or the metric needs labels and no record has any.
    """
    dataset = data if isinstance(data, Dataset) else Dataset.from_examples(data)
    dataset.require(1, purpose="evaluate")
    source_id = dataset.id
    dataset, unlabelled = _labelled_only(dataset, metric)
    examples = dataset.examples()
    keys = [r.key for r in dataset.records]
    name = program_name or type(program).__name__
    lm = dspy.settings.lm
    model_name = model
    if model_name is None and lm is not None:
        model_name = str(getattr(lm, "model", "")) or None
    identity = RunIdentity(
        program=name,
        version=version,
        metadata={GeodeAttributes.EVAL_DATASET_ID: source_id, "geode.eval.split": split},
        tags=("geode.eval", *tags),
    )
    progress_cm, advance = _progress(show_progress, len(examples), f"eval {name}")
    run = _Run(
        program=program,
        metric=metric,
        examples=examples,
        keys=keys,
        identity=identity,
        dataset_id=source_id,
        pricing=pricing or Pricing(),
        tracer=tracer,
        max_errors=max_errors,
        advance=advance,
    )
    evaluator = dspy.Evaluate(
        devset=examples,
        metric=run.score,
        num_threads=max(1, num_threads),
        display_progress=False,
        display_table=False,
        # Errors are caught per example and scored 0; dspy's own error budget must never cancel the run.
        max_errors=len(examples) + 1,
        provide_traceback=False,
    )
    started = _dt.datetime.now(_dt.UTC)
    t0 = time.perf_counter()
    with progress_cm:
        outcome = evaluator(cast(Any, run.run_program))
    duration = time.perf_counter() - t0

    per_example: list[ExampleResult] = []
    for i, (example, pred, score) in enumerate(outcome.results):
        recorded = run.results.get(i)
        if recorded is None:  # dspy dropped it (cancelled); record that honestly
            recorded = ExampleResult(
                index=i,
                example_id=keys[i],
                inputs=dict(example.inputs().items()),
                expected={k: v for k, v in example.labels().items() if not k.startswith("geode_")},
                outputs=_outputs_of(pred),
                score=float(score or 0.0),
                latency_s=0.0,
                error="not run",
            )
        per_example.append(recorded)
    latencies = [e.latency_s for e in per_example if e.error is None or not e.error.startswith("skipped:")]
    costs = [e.cost_usd for e in per_example]
    result = EvalResult(
        program=name,
        version=version,
        metric=metric_name(metric),
        dataset_id=source_id,
        dataset_name=dataset.name,
        split=split,
        model=model_name,
        score=sum(e.score for e in per_example) / len(per_example),
        n=len(per_example),
        errors=run.errors,
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
        lm_calls=sum(e.lm_calls for e in per_example),
        prompt_tokens=sum(e.prompt_tokens for e in per_example),
        completion_tokens=sum(e.completion_tokens for e in per_example),
        cost_usd=None if any(c is None for c in costs) else float(sum(c for c in costs if c is not None)),
        duration_s=duration,
        num_threads=max(1, num_threads),
        started_at=started.isoformat(timespec="seconds"),
        examples=tuple(per_example),
        skipped=run.skipped,
        cache_hits=sum(e.cache_hits for e in per_example),
        unlabelled=unlabelled,
    )
    if phoenix_url:
        link = log_to_phoenix(result, dataset, phoenix_url, experiment_name=experiment_name)
        if link is not None:
            result = replace(result, phoenix=link)
    return result


# -- Phoenix --------------------------------------------------------------------------------------


def log_to_phoenix(
    result: EvalResult,
    dataset: Dataset,
    base_url: str,
    *,
    experiment_name: str | None = None,
    timeout_s: float = 10.0,
) -> PhoenixLink | None:
    """Log an evaluation to Phoenix as an experiment; ``None`` (and a warning) if that fails.

    The dataset is uploaded (as a new version of the Phoenix dataset ``geode/<name>``), then an
    experiment gets one run per example, with the example's output, timing, error and trace id, and
    one evaluation per run carrying the metric's score and feedback.

    Args:
        result: The evaluation to log.
        dataset: The dataset it ran on (the same records, in the same order).
        base_url: Phoenix's URL, e.g. ``http://127.0.0.1:6006``.
        experiment_name: Default: ``<program>@<version> <metric>``.
        timeout_s: Per-request timeout.
    """
    import httpx

    if len(dataset.records) != len(result.examples):
        logger.warning("Phoenix experiment not logged: the dataset does not match the evaluation")
        return None
    try:
        # A quick reachability check before importing the client, so a down Phoenix costs one short
        # timeout and no import time.
        httpx.get(base_url.rstrip("/") + "/healthz", timeout=min(timeout_s, 3.0)).raise_for_status()
    except Exception as err:
        logger.warning(
            "Phoenix experiment not logged: %s is not reachable (%s)", base_url, type(err).__name__
        )
        return None
    try:
        from phoenix.client import Client
    except ImportError:
        logger.warning("Phoenix experiment not logged: arize-phoenix-client is not installed")
        return None
    try:
        client = Client(base_url=base_url)
        timeout = max(1, int(timeout_s))
        px_dataset = client.datasets.create_dataset(
            name=f"geode/{dataset.name or dataset.id}",
            examples=[
                {
                    "input": dict(r.inputs),
                    "output": dict(r.outputs),
                    "metadata": {"geode_index": i, "geode_example_id": r.key, "geode_dataset_id": dataset.id},
                    **({"span_id": r.span_id} if r.span_id else {}),
                }
                for i, r in enumerate(dataset.records)
            ],
            dataset_description=dataset.description or f"Geode dataset {dataset.id}",
            timeout=timeout,
        )
        by_index: dict[int, str] = {}
        for ex in px_dataset.examples:
            meta = ex.get("metadata") or {}
            if isinstance(meta.get("geode_index"), int):
                by_index[meta["geode_index"]] = ex["id"]
        name = experiment_name or f"{result.program}@{result.version or 'base'} {result.metric}"
        experiment = client.experiments.create(
            dataset_id=px_dataset.id,
            dataset_version_id=px_dataset.version_id,
            experiment_name=name,
            experiment_metadata={
                "geode_dataset_id": result.dataset_id,
                "program": result.program,
                "version": result.version,
                "metric": result.metric,
                "model": result.model,
                "split": result.split,
                "score": result.score,
            },
            timeout=timeout,
        )
        started = _dt.datetime.fromisoformat(result.started_at)
        for ex in result.examples:
            example_id = by_index.get(ex.index)
            if example_id is None:
                continue
            end = started + _dt.timedelta(seconds=ex.latency_s)
            run = client.experiments.log_run(
                experiment_id=experiment["id"],
                dataset_example_id=example_id,
                output=_jsonable(ex.outputs),
                start_time=started,
                end_time=end,
                trace_id=ex.trace_id,
                error=ex.error,
                timeout=timeout,
            )
            if ex.error is None:
                client.experiments.log_evaluation(
                    experiment_run_id=run["id"],
                    name=result.metric,
                    score=ex.score,
                    explanation=ex.feedback,
                    start_time=end,
                    timeout=timeout,
                )
        url = client.experiments.get_experiment_url(px_dataset.id, experiment["id"])
        return PhoenixLink(dataset_id=px_dataset.id, experiment_id=experiment["id"], url=url)
    except Exception as err:  # Phoenix is optional: warn, never fail the evaluation
        logger.warning("Phoenix experiment not logged (%s: %s)", type(err).__name__, str(err)[:200])
        return None
