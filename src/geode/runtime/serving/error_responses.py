"""Error responses: the JSON body, status and headers for an exception, and the app's handlers for them.

Every failure answers ``{"error": {"code": ..., "message": ...}}`` (see :mod:`.errors` for the codes and
their statuses), with ``Retry-After`` when the error says when to retry. A body that fails validation
names the schema it should have matched and never echoes the input back.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from geode.errors import GeodeError
from geode.runtime.serving.calls import REQUEST_HEADER, Call, response_headers
from geode.runtime.serving.errors import describe, error_body, retry_after_of, status_for

__all__ = ["error_response", "install_error_handlers", "retry_after"]

logger = logging.getLogger("geode.serve")


def retry_after(err: BaseException) -> float | None:
    """Seconds the caller should wait before retrying, if the error (or its cause) says."""
    retry = retry_after_of(err) or retry_after_of(err.__cause__ or err)
    cause_retry = getattr(err.__cause__, "retry_after", None)
    if retry is None and isinstance(cause_retry, int | float):
        retry = float(cause_retry)
    return retry


def error_response(call: Call | None, err: BaseException, request_id: str | None = None) -> JSONResponse:
    """The JSON error response for ``err``, raised while answering ``call`` (or before one began)."""
    code, message = describe(err)
    status = status_for(code)
    if code == "internal_error":
        logger.error("request %s failed", request_id or (call.request_id if call else "?"), exc_info=err)
    headers = response_headers(call) if call is not None else {}
    extra: dict[str, Any] = {}
    retry = retry_after(err)
    if retry is not None:
        headers["Retry-After"] = str(max(1, round(retry)))
        extra["retry_after_s"] = retry
    body = error_body(
        code,
        message,
        request_id=call.request_id if call else request_id,
        trace_id=call.trace_id if call else None,
        extra=extra,
    )
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Answer Geode errors, invalid bodies, unknown routes and any other exception as JSON errors."""

    @app.exception_handler(GeodeError)
    async def _geode_error(request: Request, err: GeodeError) -> JSONResponse:
        return error_response(None, err, request.headers.get(REQUEST_HEADER))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        body = error_body(
            "invalid_input",
            _invalid_message(request.url.path),
            request_id=request.headers.get(REQUEST_HEADER),
            extra={"details": _validation_details(err)},
        )
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            err.status_code, "http_error"
        )
        return JSONResponse(error_body(code, str(err.detail)), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception) -> JSONResponse:
        return error_response(None, err, request.headers.get(REQUEST_HEADER))


def _invalid_message(path: str) -> str:
    """What a body that fails validation should have matched, named after the endpoint's schema."""
    if path.rstrip("/").endswith("/feedback"):
        return (
            "the request does not match the feedback schema: trace_id (32 hex digits) and at least one "
            "of score, label, explanation; optional name, annotator_kind (HUMAN, LLM, CODE), span_id"
        )
    if path.startswith("/programs/"):
        return "the request does not match the program's inputs"
    return "the request does not match this endpoint's schema (see /docs)"


def _validation_details(err: RequestValidationError) -> list[dict[str, Any]]:
    # Never echo the input back: it may be megabytes, or secret.
    details = []
    for item in err.errors()[:20]:
        details.append({"loc": [str(p) for p in item.get("loc", ())], "msg": str(item.get("msg", ""))[:300]})
    return details
