"""Metrics with DSPy's signature ``metric(example, pred, trace=None)``, plus GEPA feedback variants.

Every metric compares the example's label fields (its non-input fields, minus Geode's reserved
``geode_*`` fields) with the prediction's fields of the same name and returns the mean over fields, a
float in ``[0, 1]``. When DSPy passes a ``trace`` (an optimizer deciding whether a bootstrapped run is
good enough to become a demo) a metric returns ``score >= threshold`` instead, as DSPy's optimizers
expect.

The feedback variants (:func:`with_feedback`) take GEPA's five arguments and return
``dspy.Prediction(score=..., feedback=...)``: what was expected, what came back, and, when the dataset
record carries one, the annotator's explanation (``geode_feedback``), so GEPA's reflection reads why an
answer was judged wrong.

Example:
    >>> import dspy
    >>> from geode.evals.metrics import exact_match, f1
    >>> gold = dspy.Example(question="Capital of France?", answer="Paris").with_inputs("question")
    >>> exact_match(gold, dspy.Prediction(answer="paris."))
    1.0
    >>> round(f1(gold, dspy.Prediction(answer="Paris, France")), 2)
    0.67
"""

from __future__ import annotations

import inspect
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import dspy

from geode.errors import ConfigError
from geode.refs import import_ref

__all__ = [
    "FEEDBACK_FIELD",
    "RESERVED_PREFIX",
    "FeedbackMetric",
    "FieldMetric",
    "LMJudge",
    "Metric",
    "contains",
    "exact_match",
    "f1",
    "label_fields",
    "metric_name",
    "normalize_text",
    "numeric_match",
    "resolve_metric",
    "shipped_metrics",
    "with_feedback",
]

RESERVED_PREFIX = "geode_"
"""Example fields starting with this prefix carry Geode's bookkeeping, never labels."""

FEEDBACK_FIELD = "geode_feedback"
"""Example field holding a dataset record's ``feedback`` (an annotator's explanation) for GEPA."""


@runtime_checkable
class Metric(Protocol):
    """DSPy's metric protocol: a score for one prediction, or pass/fail when ``trace`` is given."""

    def __call__(self, example: dspy.Example, pred: dspy.Prediction, trace: Any = None) -> float | bool:
        """Score ``pred`` against ``example``."""
        ...


# -- text normalisation and scorers ---------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def normalize_text(value: Any) -> str:
    """Lower-case, drop punctuation and English articles, collapse whitespace (SQuAD's normalisation)."""
    text = value if isinstance(value, str) else str(value)
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(value: Any) -> list[str]:
    return normalize_text(value).split()


def _alternatives(gold: Any) -> list[Any]:
    # A list of gold values means "any of these is right".
    if isinstance(gold, list | tuple) and gold and all(isinstance(g, str | int | float) for g in gold):
        return list(gold)
    return [gold]


def _exact(gold: Any, got: Any) -> float:
    return 1.0 if normalize_text(gold) == normalize_text(got) else 0.0


def _contains(gold: Any, got: Any) -> float:
    # Whole-token containment, so "1" is not found in "10" and "cat" not in "catalog".
    want, have = _tokens(gold), _tokens(got)
    if not want:
        return 1.0 if not have else 0.0
    width = len(want)
    return 1.0 if any(have[i : i + width] == want for i in range(len(have) - width + 1)) else 0.0


def _f1(gold: Any, got: Any) -> float:
    want, have = _tokens(gold), _tokens(got)
    if not want or not have:
        return 1.0 if want == have else 0.0
    common = Counter(want) & Counter(have)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(have), overlap / len(want)
    return 2 * precision * recall / (precision + recall)


def _first_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    match = _NUMBER.search(str(value))
    if match is None:
        return None
    try:
        return float(match.group().replace(",", ""))
    except ValueError:
        return None


def _numeric(gold: Any, got: Any, *, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> float:
    want, have = _first_number(gold), _first_number(got)
    if want is None or have is None:
        return 0.0
    return 1.0 if math.isclose(want, have, rel_tol=rel_tol, abs_tol=abs_tol) else 0.0


# -- field selection ------------------------------------------------------------------------------


def label_fields(example: dspy.Example, pred: Any = None) -> list[str]:
    """The example's label fields: its non-input fields minus reserved ``geode_*`` ones.

    An example without declared inputs (no ``with_inputs``) has no way to tell inputs from labels;
    then the fields it shares with the prediction are compared.
    """
    if getattr(example, "_input_keys", None):
        keys = list(example.labels().keys())
    else:
        keys = [k for k in example.keys() if pred is not None and _has(pred, k)]
    return [k for k in keys if not k.startswith(RESERVED_PREFIX)]


def _has(pred: Any, key: str) -> bool:
    try:
        return key in pred
    except TypeError:
        return hasattr(pred, key)


def _get(pred: Any, key: str) -> Any:
    if isinstance(pred, Mapping):
        return pred.get(key)
    try:
        return pred[key]
    except (KeyError, TypeError, IndexError):
        return getattr(pred, key, None)


# -- metric objects -------------------------------------------------------------------------------


class FieldMetric:
    """A metric that scores each label field with ``scorer(gold, got)`` and averages.

    Args:
        name: The metric's name (used in reports, version metadata and ``--metric``).
        scorer: ``scorer(gold, got) -> float`` in ``[0, 1]``.
        fields: Compare only these fields; default: every label field of the example.
        threshold: With a ``trace`` (optimizer bootstrapping) the metric returns ``score >= threshold``.
    """

    def __init__(
        self,
        name: str,
        scorer: Callable[[Any, Any], float],
        *,
        fields: Sequence[str] | None = None,
        threshold: float = 1.0,
    ) -> None:
        self.name = name
        self.__name__ = name
        self.scorer = scorer
        self.fields = tuple(fields) if fields is not None else None
        self.threshold = threshold

    def __repr__(self) -> str:
        return f"FieldMetric({self.name!r}, fields={self.fields!r}, threshold={self.threshold})"

    def for_fields(self, *fields: str) -> FieldMetric:
        """The same metric restricted to the given fields."""
        return FieldMetric(
            f"{self.name}[{','.join(fields)}]", self.scorer, fields=fields, threshold=self.threshold
        )

    def labelled(self, outputs: Mapping[str, Any]) -> bool:
        """Whether a record's expected ``outputs`` give this metric something to compare with.

        A record without them would score 0 whatever the program answers, so evaluation leaves it out.
        """
        fields = (
            self.fields
            if self.fields is not None
            else [k for k in outputs if not k.startswith(RESERVED_PREFIX)]
        )
        return any(outputs.get(field) is not None for field in fields)

    def compare(self, example: dspy.Example, pred: Any) -> list[tuple[str, Any, Any, float]]:
        """Per-field ``(field, gold, got, score)``; a field missing from the prediction scores 0."""
        fields = self.fields if self.fields is not None else label_fields(example, pred)
        rows: list[tuple[str, Any, Any, float]] = []
        for field in fields:
            gold = example.get(field)
            got = _get(pred, field) if pred is not None else None
            if got is None:
                rows.append((field, gold, None, 0.0))
                continue
            score = max(self.scorer(alt, got) for alt in _alternatives(gold))
            rows.append((field, gold, got, float(score)))
        return rows

    def score(self, example: dspy.Example, pred: Any) -> float:
        """Mean per-field score in ``[0, 1]`` (0 when the example has no label fields)."""
        rows = self.compare(example, pred)
        return sum(r[3] for r in rows) / len(rows) if rows else 0.0

    def feedback(self, example: dspy.Example, pred: Any) -> str:
        """A short text saying what was expected and what came back, field by field."""
        parts: list[str] = []
        for field, gold, got, score in self.compare(example, pred):
            if got is None:
                parts.append(f"The output field {field!r} is missing; expected {gold!r}.")
            elif score >= 1.0:
                parts.append(f"{field!r} is correct ({got!r}).")
            else:
                parts.append(f"{field!r} scored {score:.2f} by {self.name}: expected {gold!r}, got {got!r}.")
        return " ".join(parts) or "The example has no label fields to compare."

    def __call__(self, example: dspy.Example, pred: Any, trace: Any = None) -> float | bool:
        """Score ``pred``; with a ``trace``, whether the score reaches the threshold."""
        score = self.score(example, pred)
        return score if trace is None else score >= self.threshold


exact_match = FieldMetric("exact_match", _exact)
"""1 when each label equals the prediction after normalisation (case, punctuation, articles)."""

contains = FieldMetric("contains", _contains)
"""1 when each label appears, as whole tokens, inside the prediction's field."""

f1 = FieldMetric("f1", _f1, threshold=0.8)
"""Token-level F1 (SQuAD); bootstrapped demos need at least 0.8."""

numeric_match = FieldMetric("numeric_match", _numeric)
"""1 when the first number in the prediction equals the label's (``"8,849 metres"`` matches ``8849``)."""


def numeric_metric(
    *, rel_tol: float = 1e-6, abs_tol: float = 1e-9, fields: Sequence[str] | None = None
) -> FieldMetric:
    """A numeric match with a tolerance, e.g. ``numeric_metric(rel_tol=0.01)`` for 1%."""

    def scorer(gold: Any, got: Any) -> float:
        return _numeric(gold, got, rel_tol=rel_tol, abs_tol=abs_tol)

    return FieldMetric(f"numeric_match(rel_tol={rel_tol:g})", scorer, fields=fields)


# -- LM as judge ----------------------------------------------------------------------------------


class JudgeAnswer(dspy.Signature):
    """Judge whether the response is a correct answer to the task, given the reference answer.

    A response is correct when it states the same facts as the reference, even if worded differently.
    It is incorrect when it contradicts the reference, leaves it out, or adds wrong facts.
    """

    task: str = dspy.InputField(desc="the inputs the program was given")
    reference: str = dspy.InputField(desc="the expected output")
    response: str = dspy.InputField(desc="the program's output")
    reasoning: str = dspy.OutputField(desc="one or two sentences comparing response and reference")
    correct: bool = dspy.OutputField(desc="true if the response is correct")


def _render(values: Mapping[str, Any]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in values.items())


class LMJudge(dspy.Module):
    """An LM-as-judge metric: asks ``lm`` whether the prediction matches the reference answer.

    The judge runs on the LM it was given, never on the program's, and records nothing into an
    optimizer's trace (its calls must not become demos of the program being optimized).

    Args:
        lm: The judging LM (a stronger model than the program's, ideally).
        criteria: Extra instructions appended to the judge's signature.
        fields: Compare only these label fields; default: all label fields.

    Example:
        >>> judge = LMJudge(dspy.LM("openai/gpt-4o-mini"))  # doctest: +SKIP
        >>> judge(example, prediction)  # 1.0 or 0.0                # doctest: +SKIP
    """

    def __init__(
        self, lm: dspy.BaseLM, *, criteria: str | None = None, fields: Sequence[str] | None = None
    ) -> None:
        super().__init__()
        self.lm = lm
        self.fields = tuple(fields) if fields is not None else None
        signature: type[dspy.Signature] = JudgeAnswer
        if criteria:
            signature = JudgeAnswer.with_instructions(f"{JudgeAnswer.instructions}\n\n{criteria}")
        self.judge = dspy.Predict(signature)
        self.__name__ = "lm_judge"

    def verdict(self, example: dspy.Example, pred: Any) -> tuple[float, str]:
        """The judge's score (1.0 or 0.0) and its reasoning."""
        fields = self.fields if self.fields is not None else label_fields(example, pred)
        inputs = example.inputs().toDict() if getattr(example, "_input_keys", None) else {}
        reference = {f: example.get(f) for f in fields}
        response = {f: _get(pred, f) for f in fields}
        # trace=None: the judge's own predictor must never be recorded as part of the program's trace.
        with dspy.context(lm=self.lm, trace=None):
            out = self.judge(task=_render(inputs), reference=_render(reference), response=_render(response))
        return (1.0 if bool(out.correct) else 0.0), str(out.reasoning)

    def forward(self, example: dspy.Example, pred: Any, trace: Any = None) -> float | bool:
        """Score ``pred`` (1.0 correct, 0.0 not); with a ``trace``, a bool."""
        score, _ = self.verdict(example, pred)
        return score if trace is None else score >= 1.0

    def feedback(self, example: dspy.Example, pred: Any) -> str:
        """The judge's reasoning, as GEPA feedback."""
        return self.verdict(example, pred)[1]


# -- GEPA feedback variants -----------------------------------------------------------------------


class FeedbackMetric:
    """A GEPA metric: ``(gold, pred, trace, pred_name, pred_trace) -> dspy.Prediction(score, feedback)``.

    Also usable as a plain DSPy metric (it returns the score's float when called by ``dspy.Evaluate``
    through :meth:`score`).

    Args:
        metric: The metric to score with; :class:`FieldMetric` and :class:`LMJudge` give field-level
            feedback, any other callable gives the score alone.
    """

    def __init__(self, metric: Callable[..., Any]) -> None:
        self.metric = metric
        self.name = f"{metric_name(metric)}+feedback"
        self.__name__ = self.name

    def score(self, example: dspy.Example, pred: Any) -> float:
        """The wrapped metric's score as a float."""
        if isinstance(self.metric, LMJudge):
            return self.metric.verdict(example, pred)[0]
        return score_value(self.metric(example, pred))

    def __call__(
        self,
        gold: dspy.Example,
        pred: Any,
        trace: Any = None,
        pred_name: str | None = None,
        pred_trace: Any = None,
    ) -> dspy.Prediction:
        """Score and explain ``pred`` for GEPA's reflection."""
        if isinstance(self.metric, LMJudge):
            score, text = self.metric.verdict(gold, pred)
        else:
            score = score_value(self.metric(gold, pred))
            if isinstance(self.metric, FieldMetric):
                text = self.metric.feedback(gold, pred)
            else:
                text = f"This output scored {score:.2f} by {metric_name(self.metric)}."
        note = gold.get(FEEDBACK_FIELD) if isinstance(gold, dspy.Example) else None
        if note:
            text = f"{text} Reviewer's note on this example: {note}"
        return dspy.Prediction(score=score, feedback=text)


def with_feedback(metric: Callable[..., Any]) -> FeedbackMetric:
    """Wrap a metric as a GEPA feedback metric (a metric that already is one is returned as is)."""
    if isinstance(metric, FeedbackMetric):
        return metric
    return FeedbackMetric(metric)


def is_feedback_metric(metric: Callable[..., Any]) -> bool:
    """Whether ``metric`` accepts GEPA's five arguments."""
    if isinstance(metric, FeedbackMetric):
        return True
    try:
        inspect.signature(metric).bind(None, None, None, None, None)
    except (TypeError, ValueError):
        return False
    return True


def score_value(value: Any) -> float:
    """A metric's return value as a float: bools and numbers, or a ``Prediction``'s ``score``."""
    if isinstance(value, dspy.Prediction) or (isinstance(value, Mapping) and "score" in value):
        value = value["score"]
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        result = float(value)
        if math.isnan(result):
            raise ValueError("the metric returned NaN")
        return result
    raise TypeError(
        f"a metric must return a number, a bool or dspy.Prediction(score=...), got {type(value).__name__}"
    )


# -- names and resolution -------------------------------------------------------------------------


def metric_name(metric: Callable[..., Any]) -> str:
    """A metric's display name: its ``name``/``__name__``, else its class name."""
    name = getattr(metric, "name", None) or getattr(metric, "__name__", None)
    if isinstance(name, str) and name:
        return name
    return type(metric).__name__


def shipped_metrics() -> dict[str, Callable[..., Any]]:
    """The metrics usable by short name with ``--metric``."""
    return {
        "exact_match": exact_match,
        "contains": contains,
        "f1": f1,
        "numeric_match": numeric_match,
    }


def resolve_metric(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """Turn ``--metric`` into a metric callable.

    Args:
        ref: A shipped metric's short name (``exact_match``, ``contains``, ``f1``, ``numeric_match``), a
            ``module:attribute`` / ``file.py:attribute`` reference, or a callable (returned as is).
            A ``field`` suffix picks fields: ``exact_match:answer`` is not a module reference when
            ``exact_match`` is a shipped name.

    Raises:
        ConfigError: The reference names nothing callable.
    """
    if callable(ref):
        return ref
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError(f"a metric must be a name or 'module:function', got {ref!r}")
    ref = ref.strip()
    shipped = shipped_metrics()
    head, sep, tail = ref.partition(":")
    if ref in shipped:
        return shipped[ref]
    if sep and head in shipped and tail and "." not in tail:
        base = shipped[head]
        assert isinstance(base, FieldMetric)
        return base.for_fields(*[t for t in tail.split(",") if t])
    if not sep:
        raise ConfigError(
            f"unknown metric {ref!r} (shipped: {', '.join(sorted(shipped))})",
            hint="use a shipped name or 'package.module:function' with the signature metric(example, pred, trace=None)",
        )
    obj = import_ref(ref, what="metric", error=ConfigError)
    if not callable(obj):
        raise ConfigError(f"metric {ref!r} is a {type(obj).__name__}, not a callable")
    return obj
