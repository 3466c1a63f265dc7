"""Labels of mined runs: annotations (Phoenix span and trace annotations, user feedback) and their reduction.

A run's :class:`Annotation` objects come from an :class:`AnnotationSource` (:class:`PhoenixAnnotations`
reads a Phoenix project) or are passed in (the runtime's local feedback log); :class:`_Judgement`
reduces them to the score, label and feedback a mined record carries.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, Final, Protocol, cast

from geode.errors import TraceSourceError

_POSITIVE: Final = frozenset(
    {"thumbs_up", "thumbs-up", "thumbsup", "up", "👍", "good", "correct", "pass", "passed", "yes",
     "positive", "true", "1", "helpful", "right"}
)  # fmt: skip
_NEGATIVE: Final = frozenset(
    {"thumbs_down", "thumbs-down", "thumbsdown", "down", "👎", "bad", "incorrect", "wrong", "fail",
     "failed", "no", "negative", "false", "0", "unhelpful"}
)  # fmt: skip
_BATCH: Final = 100
"""Traces per annotation lookup (Phoenix takes at most 100 ids per request)."""


def label_score(label: str | None) -> float | None:
    """A score for a thumbs-style label: ``1.0`` for up/correct/pass, ``0.0`` for down/wrong/fail.

    Example:
        >>> label_score("thumbs_up"), label_score("Incorrect"), label_score("maybe")
        (1.0, 0.0, None)
    """
    if label is None:
        return None
    text = label.strip().lower()
    if text in _POSITIVE:
        return 1.0
    if text in _NEGATIVE:
        return 0.0
    return None


# -- annotations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Annotation:
    """One judgement of one run: a Phoenix span or trace annotation, or user feedback."""

    trace_id: str
    name: str
    """The annotation's name (``user_feedback``, ``correctness``...)."""
    score: float | None = None
    label: str | None = None
    explanation: str | None = None
    annotator_kind: str = "HUMAN"
    """``HUMAN``, ``LLM`` or ``CODE``."""
    span_id: str | None = None
    """The annotated span (``None`` for a trace annotation)."""
    source: str = "phoenix"
    """Where it was read: ``phoenix`` or ``local`` (the runtime's feedback log)."""
    at: float | None = None
    """When it was made or last updated (seconds since the epoch), to pick the latest per name."""

    @property
    def value(self) -> float | None:
        """The score, or else the score of a thumbs-style label (see :func:`label_score`)."""
        if self.score is not None and math.isfinite(self.score):
            return self.score
        return label_score(self.label)

    def to_json(self) -> dict[str, Any]:
        """The annotation as recorded in a mined record's ``metadata["annotations"]``."""
        out: dict[str, Any] = {
            "name": self.name,
            "annotator_kind": self.annotator_kind,
            "source": self.source,
        }
        for key in ("score", "label", "explanation", "span_id"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


class AnnotationSource(Protocol):
    """Somewhere annotations of traced runs can be read."""

    @property
    def description(self) -> str:
        """Where the annotations come from, for messages."""
        ...

    def annotations(self, runs: Sequence[tuple[str, str]]) -> list[Annotation]:
        """Annotations of these runs, given as ``(trace_id, root_span_id)`` pairs.

        Raises:
            TraceSourceError: The annotations cannot be read.
        """
        ...


class PhoenixAnnotations:
    """Span annotations on runs' root spans and trace annotations, read from a Phoenix project.

    Uses Phoenix's REST API (``GET /v1/projects/{project}/span_annotations`` and ``.../trace_annotations``,
    the endpoints ``arize-phoenix-client`` calls) over ``httpx``: importing ``phoenix.client`` costs
    about 20 s of CPU in an environment that also has the Phoenix server installed. Notes (annotations
    named ``note``, which Phoenix's UI reserves for free text) are left out, as the client does.

    Args:
        url: Phoenix's base URL.
        project: The project the runs were traced to.
        api_key: For a Phoenix with authentication.
        timeout_s: Per-request timeout.
    """

    def __init__(
        self, url: str, project: str, *, api_key: str | None = None, timeout_s: float = 30.0
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.project = project
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    @property
    def description(self) -> str:
        """Where the annotations come from."""
        return f"Phoenix annotations at {self.url}, project {self.project!r}"

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def annotations(self, runs: Sequence[tuple[str, str]]) -> list[Annotation]:
        """Span annotations of the root spans and trace annotations of the traces of ``runs``."""
        trace_of_span = {span_id: trace_id for trace_id, span_id in runs}
        found: list[Annotation] = []
        for start in range(0, len(runs), _BATCH):
            batch = runs[start : start + _BATCH]
            for item in self._pages("span_annotations", "span_ids", [s for _, s in batch]):
                trace_id = trace_of_span.get(str(item.get("span_id")))
                if trace_id is not None:
                    found.append(_from_phoenix(item, trace_id, str(item.get("span_id"))))
            for item in self._pages("trace_annotations", "trace_ids", [t for t, _ in batch]):
                found.append(_from_phoenix(item, str(item.get("trace_id")), None))
        return found

    def _pages(self, what: str, key: str, ids: list[str]) -> Iterator[dict[str, Any]]:
        import httpx

        cursor: str | None = None
        while True:
            params: dict[str, Any] = {key: ids, "limit": 1000, "exclude_annotation_names": ["note"]}
            if cursor:
                params["cursor"] = cursor
            try:
                response = self._http.get(f"v1/projects/{self.project}/{what}", params=params)
                if response.status_code == 404:
                    return  # no such project yet, or a Phoenix without trace annotations
                response.raise_for_status()
                payload = cast(dict[str, Any], response.json())
            except (httpx.HTTPError, ValueError) as err:
                raise TraceSourceError(
                    f"cannot read {what.replace('_', ' ')} from {self.description}: {err}",
                    hint="check that Phoenix is up (`geode phoenix`), or mine without labels",
                ) from err
            yield from cast(list[dict[str, Any]], payload.get("data") or [])
            cursor = payload.get("next_cursor")
            if not cursor:
                return


def _from_phoenix(item: Mapping[str, Any], trace_id: str, span_id: str | None) -> Annotation:
    result = item.get("result") or {}
    score = result.get("score")
    label = result.get("label")
    explanation = result.get("explanation")
    updated = item.get("updated_at") or item.get("created_at")
    at: float | None = None
    if isinstance(updated, str):
        try:
            at = datetime.fromisoformat(updated).timestamp()
        except ValueError:
            at = None
    return Annotation(
        trace_id=trace_id,
        name=str(item.get("name") or "annotation"),
        score=float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None,
        label=str(label) if label is not None else None,
        explanation=str(explanation) if explanation else None,
        annotator_kind=str(item.get("annotator_kind") or "HUMAN"),
        span_id=span_id,
        source="phoenix",
        at=at,
    )


@dataclass(frozen=True)
class _Judgement:
    """The annotations of one run, reduced to a score, a label and textual feedback."""

    annotations: tuple[Annotation, ...] = ()
    names: frozenset[str] | None = None

    @cached_property
    def chosen(self) -> tuple[Annotation, ...]:
        # The latest annotation per name: a changed mind replaces the first verdict, and the same
        # feedback read from Phoenix and from the local log counts once.
        latest: dict[str, Annotation] = {}
        for a in self.annotations:
            if self.names is not None and a.name not in self.names:
                continue
            kept = latest.get(a.name)
            if kept is None or (a.at or 0.0) >= (kept.at or 0.0):
                latest[a.name] = a
        return tuple(latest[name] for name in sorted(latest))

    @property
    def score(self) -> float | None:
        values = [v for v in (a.value for a in self.chosen) if v is not None]
        return sum(values) / len(values) if values else None

    @property
    def label(self) -> str | None:
        labels = [(a.name, a.label) for a in self.chosen if a.label]
        if not labels:
            return None
        return labels[0][1] if len(labels) == 1 else "; ".join(f"{n}={v}" for n, v in labels)

    @property
    def feedback(self) -> str | None:
        texts = [a.explanation for a in self.chosen if a.explanation]
        return "; ".join(dict.fromkeys(texts)) or None
