"""Trace mining: a program's traced runs become an eval dataset and per-predictor examples.

Every run of a program leaves a trace whose root span carries ``geode.program.name``, the run's inputs
(``input.value``) and outputs (``output.value``) as JSON. :func:`mine` reads those traces from any
:class:`~geode.traces.sources.TraceSource` (Phoenix, the runtime's OTLP-JSON file, memory) and turns
each into a dataset :class:`~geode.evals.dataset.Record`: inputs, outputs, trace and span ids, program
version, latency, tokens and error. The predictor spans inside (``geode.predictor.name``) become one
dataset per predictor, the shape optimizers use as demos.

Labels come from annotations: Phoenix span annotations on the root span and trace annotations (human
thumbs, LLM-judge or code scores), plus feedback passed in (the runtime's local feedback log). Traces
that cannot give a faithful example are skipped and counted by reason: no root span, spans whose
parent is missing, unfinished spans, redacted or truncated inputs/outputs, inputs that are not a JSON
object. Exact and near-duplicate inputs are dropped (the dataset health report's definitions).

Mining right after a run must not guess whether the backend has caught up: pass ``wait_for`` with the
run's trace ids, and :func:`mine` waits for exactly those traces (bounded by ``wait_timeout_s``) and
says so in :attr:`MiningResult.source_used`; or read the runtime's own OTLP-JSON file, which has every
span as soon as it is exported.

The stages, one module each: ``examine`` (can this trace give an example?), ``annotations`` (the run's
labels), ``records`` (records, per-predictor records, de-duplication), ``miner`` (the loop and
:func:`mine`), ``result``, ``options`` (:class:`MiningOptions`) and ``phoenix_dataset`` (upload).
"""

from __future__ import annotations

from geode.evals.mining.annotations import Annotation, AnnotationSource, PhoenixAnnotations, label_score
from geode.evals.mining.examine import SkipReason
from geode.evals.mining.miner import mine
from geode.evals.mining.options import MiningOptions
from geode.evals.mining.phoenix_dataset import PhoenixDatasetLink, upload_to_phoenix
from geode.evals.mining.records import OutputPolicy
from geode.evals.mining.result import MiningProgress, MiningResult

__all__ = [
    "Annotation",
    "AnnotationSource",
    "MiningOptions",
    "MiningProgress",
    "MiningResult",
    "OutputPolicy",
    "PhoenixAnnotations",
    "PhoenixDatasetLink",
    "SkipReason",
    "label_score",
    "mine",
    "upload_to_phoenix",
]
