"""What the OpenAPI document says beyond the routes themselves: API-key schemes and error bodies.

Routes behind the API key declare :data:`SECURED` and answer :class:`ErrorOut` on their error statuses
(:func:`error_responses`), so generated clients and ``/docs`` know both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from fastapi import FastAPI
from pydantic import BaseModel

__all__ = ["CALLER_ERRORS", "SECURED", "ErrorDetail", "ErrorOut", "declare_security", "error_responses"]

_SECURITY_SCHEMES: dict[str, Any] = {
    "HTTPBearer": {"type": "http", "scheme": "bearer", "description": "An API key (GEODE_SERVE_API_KEYS)."},
    "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
SECURED: dict[str, Any] = {"security": [{name: []} for name in _SECURITY_SCHEMES]}
"""``openapi_extra`` of every route that needs an API key (when the server has keys)."""


class ErrorDetail(BaseModel):
    """What went wrong: a stable ``code`` (see docs/serving.md), a message, and the request's ids."""

    model_config = {"extra": "allow"}  # code-specific fields: details, retry_after_s, hint...

    code: str
    message: str
    request_id: str | None = None
    trace_id: str | None = None


class ErrorOut(BaseModel):
    """Every error response's body."""

    error: ErrorDetail


_ERROR_DESCRIPTIONS: Final[Mapping[int, str]] = {
    400: "the body is not JSON",
    401: "missing or unknown API key",
    404: "not found",
    413: "body too large",
    422: "invalid input",
    429: "rate limited or out of token budget",
    502: "the LM or a tool failed",
    503: "overloaded, draining, or a dependency is down",
    504: "deadline exceeded",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: these statuses answer :class:`ErrorOut` (422 replaces FastAPI's own)."""
    return {status: {"model": ErrorOut, "description": _ERROR_DESCRIPTIONS[status]} for status in statuses}


# What any route behind the API key can answer besides its own result: the key is checked, the caller's
# rate limited, the body's size and depth checked, its fields validated.
CALLER_ERRORS = (401, 413, 422, 429)


def declare_security(app: FastAPI) -> None:
    """Add the API-key schemes to the OpenAPI document (clients and /docs offer to send a key)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(_SECURITY_SCHEMES)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # FastAPI's documented way to customise the document
