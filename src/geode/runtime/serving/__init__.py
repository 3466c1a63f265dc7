"""HTTP serving: ``geode serve`` and :func:`create_app` (FastAPI), usable as is under Ray Serve.

See ``docs/serving.md`` for the API and ``docs/deploy.md`` for production.
"""

from geode.runtime.feedback_sinks import FeedbackLog, FeedbackRecord, FeedbackSink, PhoenixFeedback
from geode.runtime.serving.app import HostedProgram, create_app
from geode.runtime.serving.guard import ApiKeys, Quotas, is_loopback
from geode.runtime.serving.metrics import ServerMetrics
from geode.runtime.serving.sessions import MemorySessionStore, SessionStore, Turn
from geode.runtime.serving.traffic import Candidate

__all__ = [
    "ApiKeys",
    "Candidate",
    "FeedbackLog",
    "FeedbackRecord",
    "FeedbackSink",
    "HostedProgram",
    "MemorySessionStore",
    "PhoenixFeedback",
    "Quotas",
    "ServerMetrics",
    "SessionStore",
    "Turn",
    "create_app",
    "is_loopback",
]
