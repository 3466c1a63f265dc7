"""What mining produces: :class:`MiningResult`, :class:`MiningProgress`, and the running tally behind them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from geode.evals.dataset import Dataset, HealthReport
from geode.traces.sources import TraceWait


@dataclass(frozen=True)
class MiningProgress:
    """Handed to :func:`mine`'s ``progress`` callback after each trace."""

    traces: int
    """Traces read so far."""
    spans: int
    """Spans in those traces."""
    records: int
    """Records mined so far (before de-duplication)."""
    expected: int | None
    """How many traces will be read, when known (waiting for given trace ids)."""


@dataclass(frozen=True)
class MiningResult:
    """What :func:`mine` produced and everything it left out, with the reasons."""

    program: str
    dataset: Dataset
    """One record per kept run, newest first."""
    predictors: Mapping[str, Dataset]
    """Per named predictor (``geode.predictor.name``): one record per call in the kept runs."""
    source_used: str
    """Which source was read and how: waited for given trace ids, or read what was there."""
    traces_read: int
    spans_read: int
    skipped: Mapping[str, int]
    """Traces that gave no example, by :class:`SkipReason`."""
    skipped_traces: Mapping[str, tuple[str, ...]]
    """The trace ids behind :attr:`skipped` (at most 20 per reason)."""
    filtered: Mapping[str, int]
    """Faithful traces that did not pass the filters, by filter."""
    exact_duplicates: int
    """Runs dropped because an earlier kept run had the same normalised inputs."""
    near_duplicates: int
    """Runs dropped because a kept run's inputs were nearly the same (word Jaccard >= 0.8)."""
    predictor_skipped: Mapping[str, int]
    """Predictor calls left out of the per-predictor datasets, by reason."""
    wait: TraceWait | None
    """The result of waiting for ``wait_for`` trace ids, if :func:`mine` waited."""
    annotations_read: int
    elapsed_s: float

    @cached_property
    def health(self) -> HealthReport:
        """The mined dataset's health: size, diversity, duplicates, label balance, score spread."""
        return self.dataset.health()

    @property
    def spans_per_s(self) -> float:
        """Mining throughput."""
        return self.spans_read / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def save(self, path: str | Path, *, predictors_dir: str | Path | None = None) -> list[Path]:
        """Write the dataset as JSON Lines and, with ``predictors_dir``, one file per predictor.

        Returns:
            The files written (the dataset first).
        """
        written = [self.dataset.save(path)]
        if predictors_dir is not None:
            folder = Path(predictors_dir)
            for name, data in sorted(self.predictors.items()):
                written.append(data.save(folder / f"{_slug(name, 'predictor')}.jsonl"))
        return written

    def summary(self) -> dict[str, Any]:
        """The counts as plain JSON-able data."""
        return {
            "program": self.program,
            "dataset_id": self.dataset.id,
            "records": len(self.dataset),
            "predictors": {k: len(v) for k, v in sorted(self.predictors.items())},
            "source": self.source_used,
            "traces_read": self.traces_read,
            "spans_read": self.spans_read,
            "skipped": dict(self.skipped),
            "filtered": dict(self.filtered),
            "exact_duplicates": self.exact_duplicates,
            "near_duplicates": self.near_duplicates,
            "predictor_skipped": dict(self.predictor_skipped),
            "annotations_read": self.annotations_read,
            "elapsed_s": round(self.elapsed_s, 3),
        }


def _slug(text: str, fallback: str) -> str:
    """A file-name-safe form of a program or predictor name."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-") or fallback


@dataclass
class _Tally:
    traces: int = 0
    spans: int = 0
    records: int = 0
    annotations: int = 0
    skipped: Counter[str] = field(default_factory=Counter[str])
    skipped_ids: dict[str, list[str]] = field(default_factory=dict[str, list[str]])
    filtered: Counter[str] = field(default_factory=Counter[str])
    predictor_skipped: Counter[str] = field(default_factory=Counter[str])

    def skip(self, reason: str, trace_id: str) -> None:
        self.skipped[reason] += 1
        ids = self.skipped_ids.setdefault(reason, [])
        if len(ids) < 20:
            ids.append(trace_id)


def _dataset_name(program: str) -> str:
    return "mined-" + _slug(program, "program")
