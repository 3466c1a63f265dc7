"""What an evaluation produced: :class:`EvalResult`, its :class:`ExampleResult` objects, the Phoenix link."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EvalResult", "ExampleResult", "PhoenixLink", "percentile"]


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
