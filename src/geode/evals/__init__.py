"""Metrics, datasets, evaluation, recompilation, model comparison and reports.

The learning loop's library half: everything here runs in the caller's DSPy context and knows nothing
of the runtime, so it works under ``rt.batch()``, under ``dspy.context(lm=...)``, or in a test with a
scripted LM.
"""

from geode.evals.compile import CompileResult, OptimizerSettings, compile_program
from geode.evals.dataset import Dataset, DatasetSplit, HealthReport, Record, load_dataset
from geode.evals.evaluate import EvalResult, ExampleResult, Price, Pricing, evaluate
from geode.evals.metrics import (
    FeedbackMetric,
    FieldMetric,
    LMJudge,
    contains,
    exact_match,
    f1,
    numeric_match,
    resolve_metric,
    with_feedback,
)
from geode.evals.model_selection import ModelRunner, compare_models

__all__ = [
    "CompileResult",
    "Dataset",
    "DatasetSplit",
    "EvalResult",
    "ExampleResult",
    "FeedbackMetric",
    "FieldMetric",
    "HealthReport",
    "LMJudge",
    "ModelRunner",
    "OptimizerSettings",
    "Price",
    "Pricing",
    "Record",
    "compare_models",
    "compile_program",
    "contains",
    "evaluate",
    "exact_match",
    "f1",
    "load_dataset",
    "numeric_match",
    "resolve_metric",
    "with_feedback",
]
