"""HTTP errors: every failure becomes JSON with a stable code, never a stack trace or raw LM text.

A body looks like ``{"error": {"code": "lm_rate_limited", "message": "...", "request_id": "...",
"trace_id": "..."}}``. The code is :attr:`geode.errors.GeodeError.code`; the HTTP status comes from
:data:`STATUS_BY_CODE`. Exceptions that are not :class:`~geode.errors.GeodeError` are logged here and
answered as ``internal_error`` with no detail.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

from dspy.utils.exceptions import LMRateLimitError, LMTimeoutError, LMTransportError

from geode.errors import (
    ClientClosedError,
    DeadlineExceededError,
    GeodeError,
    LMError,
    LMRateLimitedError,
    LMTimeoutGeodeError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    ProgramConfiguresDSPyError,
    RateLimitedError,
    ServiceUnavailableError,
    UnauthorizedError,
)
from geode.runtime.dspy_errors import DSPY_ERRORS, is_lm_timeout, translate_dspy_error
from geode.runtime.serving.configure_guard import configure_refused

__all__ = [
    "STATUS_BY_CODE",
    "ClientClosedError",
    "DeadlineExceededError",
    "LMRateLimitedError",
    "LMTimeoutGeodeError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "ProgramConfiguresDSPyError",
    "RateLimitedError",
    "ServiceUnavailableError",
    "UnauthorizedError",
    "error_body",
    "status_for",
    "translate_program_errors",
]

logger = logging.getLogger("geode.serve")


STATUS_BY_CODE: Final[Mapping[str, int]] = {
    "invalid_input": 422,
    "payload_too_large": 413,
    "unauthorized": 401,
    "rate_limited": 429,
    "deadline_exceeded": 504,
    "unavailable": 503,
    "overloaded": 503,
    "client_closed": 499,
    "not_found": 404,
    "program_not_found": 404,
    "version_error": 404,
    "lm_error": 502,
    "lm_output_unparseable": 502,
    "lm_rate_limited": 503,
    "lm_timeout": 504,
    "tool_error": 502,
    "tool_invalid_arguments": 502,
    "tool_timeout": 504,
    "budget_exceeded": 429,
    "retrieval_error": 503,
    "store_unavailable": 503,
    "collection_not_found": 503,
    "trace_source_error": 503,
    "program_load_error": 500,
    "program_configures_dspy": 500,
    "config_error": 500,
    "internal_error": 500,
}
"""HTTP status per error code; codes not listed (new GeodeError subclasses) answer 500."""


def status_for(code: str) -> int:
    """The HTTP status for an error code."""
    return STATUS_BY_CODE.get(code, 500)


def error_body(
    code: str,
    message: str,
    *,
    request_id: str | None = None,
    trace_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON error body the server answers with."""
    error: dict[str, Any] = {"code": code, "message": message}
    if request_id:
        error["request_id"] = request_id
    if trace_id:
        error["trace_id"] = trace_id
    if extra:
        error.update(extra)
    return {"error": error}


def retry_after_of(err: BaseException) -> float | None:
    """Seconds the caller should wait before retrying, when the error says so."""
    value = getattr(err, "retry_after_s", None)
    return float(value) if isinstance(value, int | float) and value >= 0 else None


@contextmanager
def translate_program_errors(program: str) -> Iterator[None]:
    """Turn DSPy's LM and parse errors into Geode errors with stable codes (no raw LM text).

    ``AdapterParseError`` carries the LM's whole answer in its message; it never reaches a response.
    Rate limits and timeouts keep their own codes so clients can back off (``Retry-After``). The
    translation is :func:`~geode.runtime.dspy_errors.translate_dspy_error`'s, for a client; a
    ``dspy.configure`` the server refused becomes ``program_configures_dspy``.
    """
    try:
        yield
    except DSPY_ERRORS as err:
        translated = translate_dspy_error(err, program, audience="client")
        assert translated is not None  # every DSPY_ERRORS exception translates
        raise translated from err
    except GeodeError:
        raise
    except RuntimeError as err:
        if not configure_refused(err):
            raise
        raise ProgramConfiguresDSPyError(
            f"{program!r} called dspy.configure while answering a request; nothing was changed",
            hint="a served program sets per-request settings with dspy.context(...); dspy.configure "
            "would change them for every request",
        ) from err


def describe(err: BaseException) -> tuple[str, str]:
    """The code and the client-safe message of an exception raised while answering a request."""
    if isinstance(err, GeodeError):
        cause = err.__cause__
        # The runtime folds every DSPy LM error into `lm_error`; rate limits and timeouts keep theirs.
        if type(err) is LMError and isinstance(cause, LMRateLimitError):
            return LMRateLimitedError.code, str(err)
        if (
            type(err) is LMError
            and isinstance(cause, LMTimeoutError | LMTransportError)
            and is_lm_timeout(cause)
        ):
            return LMTimeoutGeodeError.code, str(err)
        return err.code, str(err)
    return "internal_error", "the server failed to answer this request; the trace has the details"
