"""The span vocabulary: OpenInference keys (re-exported) plus Geode's own ``geode.*`` keys.

Writers (the runtime's instrumentation) and readers (mining, crystallization, ``geode trace show``) use
these names, never string literals. OpenInference keys come from ``openinference.semconv`` so Phoenix
renders every span natively.
"""

from __future__ import annotations

from typing import Final

from openinference.semconv.trace import (
    DocumentAttributes,
    MessageAttributes,
    OpenInferenceMimeTypeValues,
    OpenInferenceSpanKindValues,
    SpanAttributes,
    ToolAttributes,
)

__all__ = [
    "GEODE_SPAN_KIND_ATTR",
    "DocumentAttributes",
    "GeodeAttributes",
    "MessageAttributes",
    "OpenInferenceMimeTypeValues",
    "OpenInferenceSpanKindValues",
    "SpanAttributes",
    "SpanKind",
    "ToolAttributes",
]

SpanKind = OpenInferenceSpanKindValues

GEODE_SPAN_KIND_ATTR: Final = "geode_span_kind"
"""Name of the class attribute a ``dspy.Module`` sets to choose its span kind (``"AGENT"``,
``"RETRIEVER"``...). Modules may also define ``geode_span_name(inputs) -> str`` to name their span and
``geode_span_attributes(inputs, outputs) -> Mapping[str, AttributeValue]`` to add attributes at the end."""


class GeodeAttributes:
    """Geode's own span attribute keys, all under ``geode.``."""

    PROGRAM_NAME: Final = "geode.program.name"
    """The program's one name (given, registered, declared by the module, else its reference); on every
    span of a run."""
    PROGRAM_ALIASES: Final = "geode.program.aliases"
    """Other names of the program (the reference it was run by, its class name); filters match them too."""
    PROGRAM_VERSION: Final = "geode.program.version"
    """Content hash of the program version that answered; on every span of a run."""
    PROGRAM_KIND: Final = "geode.program.kind"
    """``agent`` or ``workflow``."""
    OUTPUT_FIELDS: Final = "geode.output_fields"
    """On an agent's span: its signature's output fields. The span's ``output.value`` also holds the
    agent's bookkeeping (``steps``, ``termination``, ``trajectory``); mining keeps only these."""
    PREDICTOR_NAME: Final = "geode.predictor.name"
    """The predictor's name as in ``module.named_predictors()`` (``react``, ``extract.predict``)."""
    SIGNATURE: Final = "geode.signature"
    """The predictor's signature, ``"question -> answer"`` form."""
    MODULE_CLASS: Final = "geode.module.class"
    LLM_CACHE_HIT: Final = "geode.llm.cache_hit"
    """True when DSPy answered the LM call from its cache (no tokens were spent)."""
    AGENT_ITERATION: Final = "geode.agent.iteration"
    """The iteration's number within its agent run, from 1 (as in the span name ``iteration N``)."""
    AGENT_TERMINATION: Final = "geode.agent.termination"
    """Why an agent run ended: ``finish``, ``max_iters``, ``budget``, ``repeated_call``, ``error``."""
    AGENT_ITERATIONS: Final = "geode.agent.iterations"
    AGENT_TERMINATION_DETAIL: Final = "geode.agent.termination_detail"
    """A short human-readable reason for the termination, e.g. ``max_lm_calls=6 reached``."""
    TOOL_ERROR: Final = "geode.tool.error"
    TOOL_TIMEOUT: Final = "geode.tool.timed_out"
    FALLBACK_CHOICE: Final = "geode.fallback.choice"
    """``primary`` or ``fallback``: which branch of a ``geode.Fallback`` answered."""
    FALLBACK_REASON: Final = "geode.fallback.reason"
    WORKFLOW_STEP: Final = "geode.workflow.step"
    WORKFLOW_SOURCE_SPANS: Final = "geode.workflow.source_spans"
    """Lineage: span ids of the agent runs a crystallized step was derived from."""
    WORKFLOW_ROUTE: Final = "geode.workflow.route"
    """The route (tool pattern) a crystallized workflow took for this input."""
    REDACTED: Final = "geode.redacted"
    """True when redaction changed any attribute of this span."""
    TRUNCATED: Final = "geode.truncated"
    """True when an attribute of this span was truncated to the configured limit."""
    EVAL_DATASET_ID: Final = "geode.eval.dataset_id"
    """On an evaluation example's span: the content-hash id of the dataset it came from."""
    EVAL_EXAMPLE_ID: Final = "geode.eval.example_id"
    """On an evaluation example's span: the example's content hash within its dataset."""
    EVAL_METRIC: Final = "geode.eval.metric"
    """On an evaluation example's span: the metric's name."""
    EVAL_SCORE: Final = "geode.eval.score"
    """On an evaluation example's span: the metric's score for this example."""
    SERVE_ROLE: Final = "geode.serve.role"
    """On a served request's root span: ``primary``, ``canary`` or ``shadow`` (which side of a traffic split ran)."""
    SERVE_REQUEST_ID: Final = "geode.serve.request_id"
    """On a served request's root span: the ``X-Request-Id`` (shared by a request and its shadow run)."""
    SERVE_ERROR_CODE: Final = "geode.serve.error_code"
    """On a failed served request's root span: the stable error code returned to the client."""
