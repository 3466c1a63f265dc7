"""``POST /feedback``: its body and answer, and how a score or label on a served run is stored.

Only the caller a run was served to may score it (feedback feeds mining and promotion). By default the
record goes through the runtime's durable outbox (the local log, then Phoenix, re-sent until Phoenix
takes it); explicit sinks are tried once each.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, model_validator

from geode.runtime.feedback_sinks import FeedbackRecord
from geode.runtime.serving.calls import RecentRun
from geode.runtime.serving.errors import NotFoundError, ServiceUnavailableError
from geode.runtime.serving.server import Server

if TYPE_CHECKING:
    # For types only: the outbox's module (Phoenix and mining readers) loads when the runtime builds one.
    from geode.runtime.feedback import FeedbackOutbox

__all__ = ["FeedbackIn", "FeedbackOut", "accept_feedback"]

logger = logging.getLogger("geode.serve")


class FeedbackIn(BaseModel):
    """A score and/or label on one served run."""

    trace_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="The X-Trace-Id of the run.")
    name: str = Field(default="user_feedback", min_length=1, max_length=100)
    score: float | None = Field(default=None, ge=-1e9, le=1e9)
    label: str | None = Field(default=None, max_length=200)
    explanation: str | None = Field(default=None, max_length=4000)
    annotator_kind: Literal["HUMAN", "CODE", "LLM"] = "HUMAN"
    span_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")

    @model_validator(mode="after")
    def _says_something(self) -> FeedbackIn:
        # Feedback with nothing in it would be an empty annotation: refuse it as rt.feedback does.
        if self.score is None and self.label is None and not self.explanation:
            raise ValueError("feedback needs a score, a label or an explanation")
        return self


class FeedbackOut(BaseModel):
    """Where the feedback is: each target either holds it now or will be sent it."""

    trace_id: str
    delivered: list[str]
    """Targets that hold it now: ``local`` (the feedback log under the Geode home), ``phoenix``."""
    pending: list[str] = Field(default_factory=list)
    """Targets it is queued for in the durable outbox, re-sent until they take it (``phoenix`` while
    Phoenix is down or has not ingested the run yet)."""
    problems: list[str] = Field(default_factory=list)


async def accept_feedback(server: Server, body: FeedbackIn, caller: str) -> FeedbackOut:
    """Store feedback on a run served to ``caller``.

    Raises:
        NotFoundError: No run with that trace id was served to this caller (here or on any replica).
        ServiceUnavailableError: The feedback could not be stored anywhere.
    """
    known = await _find_run(server, body.trace_id)
    if known is None or known.caller != caller:
        # Feedback feeds mining and promotion: only the caller a run was served to may score it.
        raise NotFoundError(
            f"no run with trace id {body.trace_id} was served to this API key",
            hint="send the X-Trace-Id of a run this key made, within GEODE_SERVE_RUN_RETENTION_S",
        )
    if server.gate is not None:
        server.gate.keep(body.trace_id)
    record = FeedbackRecord(
        trace_id=body.trace_id,
        name=body.name,
        span_id=body.span_id or (known.span_id if known else None),
        score=body.score,
        label=body.label,
        explanation=body.explanation,
        annotator_kind=body.annotator_kind,
        program=known.program if known else None,
        version=known.version if known else None,
    )
    if server.outbox is not None:
        return await _to_outbox(server, server.outbox, record)
    return await _to_sinks(server, record)


async def _find_run(server: Server, trace_id: str) -> RecentRun | None:
    known = await asyncio.to_thread(server.find_run, trace_id)
    if known is None and server.runs is not None:
        # Another replica may have answered this run a moment ago and not written its batch yet.
        grace = 2 * server.settings.run_index_delay_s + 0.5
        step = max(0.05, server.settings.run_index_delay_s)
        deadline = time.monotonic() + grace
        while known is None and time.monotonic() < deadline:
            await asyncio.sleep(step)
            known = await asyncio.to_thread(server.find_run, trace_id)
    return known


async def _to_sinks(server: Server, record: FeedbackRecord) -> FeedbackOut:
    stored: list[str] = []
    problems: list[str] = []
    for sink in server.feedback_sinks:
        try:
            await asyncio.wait_for(
                asyncio.to_thread(sink.send, record), server.settings.feedback_timeout_s + 1
            )
        except Exception as err:
            problems.append(f"{sink.name}: {type(err).__name__}")
            logger.warning("feedback for trace %s not stored in %s: %s", record.trace_id, sink.name, err)
            continue
        stored.append(sink.name)
        server.metrics.feedback(record.program or "unknown", record.version, sink.name)
    if not stored:
        raise ServiceUnavailableError("the feedback could not be stored anywhere", hint="; ".join(problems))
    return FeedbackOut(trace_id=record.trace_id, delivered=stored, problems=problems)


async def _to_outbox(server: Server, outbox: FeedbackOutbox, record: FeedbackRecord) -> FeedbackOut:
    try:
        receipt = await asyncio.to_thread(outbox.submit, record, timeout_s=server.settings.feedback_timeout_s)
    except OSError as err:
        # Only the local disk refusing the write gets here: then the feedback is nowhere.
        raise ServiceUnavailableError(
            "the feedback could not be stored", hint=f"the Geode home refused the write: {err}"
        ) from err
    delivered = ["local", "phoenix"] if receipt.delivered else ["local"]
    for target in delivered:
        server.metrics.feedback(record.program or "unknown", record.version, target)
    problems = [] if receipt.delivered or outbox.last_error is None else [f"phoenix: {outbox.last_error}"]
    return FeedbackOut(
        trace_id=record.trace_id,
        delivered=delivered,
        pending=[] if receipt.delivered else ["phoenix"],
        problems=problems,
    )
