"""``POST /feedback``'s record and sinks, re-exported from :mod:`geode.runtime.feedback_sinks`.

They live in the runtime so that ``Runtime.feedback`` stores feedback without importing the HTTP
layer; this path keeps working for the code and tests that import them from here.
"""

from geode.runtime.feedback_sinks import (
    AnnotatorKind,
    FeedbackLog,
    FeedbackRecord,
    FeedbackSink,
    PhoenixFeedback,
    read_feedback,
)

__all__ = [
    "AnnotatorKind",
    "FeedbackLog",
    "FeedbackRecord",
    "FeedbackSink",
    "PhoenixFeedback",
    "read_feedback",
]
