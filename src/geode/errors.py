"""Geode's error taxonomy.

Every error a user can cause or meet carries a message that says what went wrong and what to do.
The CLI prints ``str(error)`` as one line; the HTTP server maps ``code`` to a stable JSON error code.
This module is a leaf: every layer may import it.
"""

from __future__ import annotations


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
