"""Geode's error taxonomy.

Every error a user can cause or meet carries a message that says what went wrong and what to do.
The CLI prints ``str(error)`` as one line; the HTTP server maps ``code`` to a stable JSON error code.
This module is a leaf: every layer may import it.
"""

from __future__ import annotations

__all__ = [
    "BudgetExceededError",
    "ClientClosedError",
    "CollectionNotFoundError",
    "ConfigError",
    "CrystallizeError",
    "DatasetError",
    "DeadlineExceededError",
    "ExpressionError",
    "GeodeError",
    "InputError",
    "LMError",
    "LMRateLimitedError",
    "LMTimeoutGeodeError",
    "MissingExtraError",
    "ModelFileError",
    "NotFoundError",
    "OutputParseError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PhoenixPortInUseError",
    "PhoenixStartError",
    "ProgramConfiguresDSPyError",
    "ProgramLoadError",
    "ProgramNotFoundError",
    "RateLimitedError",
    "RetrievalError",
    "ServiceUnavailableError",
    "StoreUnavailableError",
    "ToolArgumentError",
    "ToolError",
    "ToolTimeoutError",
    "TraceSourceError",
    "UnauthorizedError",
    "VersionError",
    "WorkflowGuardError",
    "WorkflowSpecError",
]


class GeodeError(Exception):
    """Base class of every error Geode raises on purpose.

    Attributes:
        code: A stable, machine-readable error code (used in HTTP error bodies).
        hint: What the user can do about it, appended to the message.
    """

    code: str = "geode_error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class ConfigError(GeodeError):
    """A setting or argument is invalid; raised at start-up, before any work is done."""

    code = "config_error"


class MissingExtraError(ConfigError):
    """An optional dependency group is not installed."""

    code = "missing_extra"

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(
            f"{what} needs the optional dependency group {extra!r}",
            hint=f"install it with: pip install 'geode[{extra}]'  (or `make install`)",
        )


class ProgramNotFoundError(GeodeError):
    """A program reference does not resolve to a DSPy module."""

    code = "program_not_found"


class ProgramLoadError(GeodeError):
    """A saved program artifact is missing, corrupt, tampered with, or not JSON."""

    code = "program_load_error"


class InputError(GeodeError):
    """Inputs for a program are missing, malformed or too large."""

    code = "invalid_input"


class LMError(GeodeError):
    """The language model failed: unreachable, timed out, refused, or returned unusable output."""

    code = "lm_error"


class OutputParseError(LMError):
    """The LM answered, but its output could not be parsed into the signature's fields."""

    code = "lm_output_unparseable"


class ModelFileError(ConfigError):
    """The local model weights cannot be found or loaded."""

    code = "model_file_error"


class ToolError(GeodeError):
    """A tool raised, timed out, or was called with invalid arguments."""

    code = "tool_error"


class ToolTimeoutError(ToolError):
    """A tool did not return within its timeout."""

    code = "tool_timeout"


class BudgetExceededError(GeodeError):
    """A run used up its budget (iterations, LM calls, tokens or seconds)."""

    code = "budget_exceeded"


class RetrievalError(GeodeError):
    """The vector store or embedder failed."""

    code = "retrieval_error"


class CollectionNotFoundError(RetrievalError):
    """The named collection does not exist in the store."""

    code = "collection_not_found"


class StoreUnavailableError(RetrievalError):
    """The store cannot be reached, is locked by another process, or timed out."""

    code = "store_unavailable"


class TraceSourceError(GeodeError):
    """Traces cannot be read from a source (Phoenix down, bad OTLP file, ...)."""

    code = "trace_source_error"


class DatasetError(GeodeError):
    """A dataset is missing, malformed, or too small for the requested job."""

    code = "dataset_error"


class VersionError(GeodeError):
    """A program version does not exist, or promotion was refused."""

    code = "version_error"


class WorkflowSpecError(ProgramLoadError):
    """A workflow spec is malformed, refers to something that does not exist, or was tampered with."""

    code = "workflow_spec_invalid"


class WorkflowGuardError(GeodeError):
    """The crystallized workflow cannot answer this input itself; the guard hands it to the agent."""

    code = "workflow_guard"


class CrystallizeError(GeodeError):
    """The recorded runs cannot be turned into a workflow (none found, none succeeded, no pattern)."""

    code = "crystallize_error"


class ToolArgumentError(ToolError):
    """A tool was called with arguments that do not match its schema; the function did not run."""

    code = "tool_invalid_arguments"


class ExpressionError(ToolError):
    """An expression could not be evaluated: bad syntax, unknown name, division by zero, too large."""

    code = "invalid_expression"


class PhoenixPortInUseError(ConfigError):
    """The port asked for Phoenix is held by another program."""

    code = "port_in_use"


class PhoenixStartError(GeodeError):
    """``phoenix serve`` exited during start-up or did not become ready before the deadline."""

    code = "phoenix_start_failed"


# -- errors the HTTP server answers with (their statuses: geode.runtime.serving.errors) -------------


class UnauthorizedError(GeodeError):
    """The request carries no API key, or one the server does not know."""

    code = "unauthorized"


class ClientClosedError(GeodeError):
    """The client disconnected before the run finished (a stream it stopped reading); not a server error."""

    code = "client_closed"


class PayloadTooLargeError(GeodeError):
    """The request body is larger than ``GEODE_SERVE_MAX_BODY_BYTES``."""

    code = "payload_too_large"


class RateLimitedError(GeodeError):
    """The caller's key sent more requests, or used more tokens, than its allowance."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(GeodeError):
    """The request did not finish within its deadline (``GEODE_SERVE_REQUEST_TIMEOUT_S``)."""

    code = "deadline_exceeded"


class ServiceUnavailableError(GeodeError):
    """The server is starting, shutting down, or at its concurrency limit."""

    code = "unavailable"


class NotFoundError(GeodeError):
    """The thing asked for does not exist for this caller (another caller's is not shown either)."""

    code = "not_found"


class OverloadedError(ServiceUnavailableError):
    """Every run slot stayed busy for the whole queue wait (``GEODE_SERVE_QUEUE_TIMEOUT_S``)."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after_s = retry_after_s


class ProgramConfiguresDSPyError(GeodeError):
    """The program called ``dspy.configure`` while answering a request (it must use ``dspy.context``)."""

    code = "program_configures_dspy"


class LMRateLimitedError(LMError):
    """The LM provider kept answering 429 after the configured retries."""

    code = "lm_rate_limited"

    def __init__(self, message: str, *, retry_after_s: float | None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after_s = retry_after_s


class LMTimeoutGeodeError(LMError):
    """The LM did not answer within its timeout."""

    code = "lm_timeout"
