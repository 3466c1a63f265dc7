"""What the demo runs (options, injectable parts) and what it did (:class:`DemoResult`, its JSON summary).

The JSON summary (:meth:`DemoResult.summary`) is one document for ``geode demo --json``, the run's
``summary.json`` and ``<home>/demo/latest.json``: the programs with their held-out figures, the gate's
decision, the Phoenix URL, the report and the run folder (paths as they are once the run is complete).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from geode.agents.crystallize import CostCheck, Crystallization
from geode.errors import DatasetError
from geode.evals.dataset import Dataset
from geode.evals.evaluate import EvalResult
from geode.evals.mining import MiningResult
from geode.retrieval import Embedder, IngestReport, Store
from geode.runtime.phoenix import PhoenixServer, PhoenixStatus
from geode.runtime.settings import Settings

__all__ = [
    "DEFAULT_HELD_OUT",
    "DEFAULT_QUESTIONS",
    "DEFAULT_VALIDATION",
    "QUICK",
    "DemoOptions",
    "DemoParts",
    "DemoResult",
    "Gate",
    "Progress",
    "Row",
    "workflow_program",
]

DEFAULT_QUESTIONS = 16
"""Training questions the agent answers by default (its recorded runs; at least 12)."""
DEFAULT_HELD_OUT = 23
"""Held-out questions every program is evaluated on by default: all of them."""
DEFAULT_VALIDATION = 12
"""Training questions set aside for the promotion gate (never run by the agent nor tuned on)."""


def workflow_program(settings: Settings) -> str:
    """The workflow's program name: the path of its spec, as ``geode run`` and the registry name it."""
    return str(settings.home / "demo" / "workflow.json")


class Progress:
    """Where the demo reports what it is doing; the default says nothing (the CLI prints)."""

    def stage(self, number: int, title: str) -> None:
        """A stage starts."""

    def info(self, message: str) -> None:
        """A line of detail."""

    def warn(self, message: str) -> None:
        """Something went wrong but the demo goes on."""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int, str], None]]:
        """A progress bar; the yielded function sets ``(completed, status text)``."""
        yield lambda done, status: None


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs.

    The 48 training questions are split in two: ``validation`` of them (spread over the list) are set
    aside for the promotion gate; the agent runs on ``questions`` of the rest, and the recompilation tunes
    on those runs (labelled) and, with ``more_tuning``, on the training questions left over. The held-out
    questions are only ever used for the final table.
    """

    questions: int = DEFAULT_QUESTIONS
    """Training questions the agent runs on (its recorded runs)."""
    held_out: int = DEFAULT_HELD_OUT
    """Held-out questions the programs are evaluated on."""
    validation: int = DEFAULT_VALIDATION
    """Training questions the gate decides on (disjoint from the agent's)."""
    fresh: bool = False
    """Start over: drop the demo's collection, runs and program versions (Phoenix keeps its data)."""
    phoenix: bool = True
    """Start (or reuse) a local Phoenix and send the traces there."""
    include_docs: bool = True
    """Ingest Geode's own docs along with the shop's pages."""
    finetune: bool = False
    """Also try a LoRA fine-tune of the embedded model's weights in the recompile search (minutes of CPU)."""
    more_tuning: bool = True
    """Also score the recompile's candidates on the training questions neither the agent nor the gate
    uses (labelled from the question set): 36 tuning questions by default instead of the 16 runs, so
    the choice is not one question's luck."""

    def __post_init__(self) -> None:
        if self.questions < 2:
            raise DatasetError(
                f"--questions must be at least 2 (crystallizing needs 2 runs), got {self.questions}"
            )
        if self.held_out < 1:
            raise DatasetError(f"--held-out must be at least 1, got {self.held_out}")
        if self.validation < 1:
            raise DatasetError(f"--validation must be at least 1, got {self.validation}")


QUICK = DemoOptions(questions=6, held_out=8, validation=6, more_tuning=False)
"""The sizes of ``geode demo --quick``: a smaller run that shows every stage."""


@dataclass
class DemoParts:
    """Parts to inject instead of building them from settings (tests, or an application's own)."""

    lm: dspy.BaseLM | None = None
    store: Store | None = None
    embedder: Embedder | None = None
    adapter: dspy.Adapter | None = None
    phoenix: PhoenixServer | None = None
    """The Phoenix launcher; default: the one for the settings' home."""


@dataclass(frozen=True)
class Row:
    """One program's line in the summary."""

    label: str
    program: str
    result: EvalResult
    version: str | None = None

    @property
    def correct(self) -> int:
        """Held-out questions answered right (the metric is 0 or 1 per question)."""
        return sum(1 for e in self.result.examples if e.score >= 1.0)

    def summary(self) -> dict[str, Any]:
        """The row as JSON: quality with n, and LM calls, tokens and p50 latency per question."""
        r = self.result
        n = max(1, r.n)
        return {
            "name": self.label,
            "program": self.program,
            "version": self.version,
            "correct": self.correct,
            "n": r.n,
            "quality": round(r.score, 4),
            "lm_calls_per_question": round(r.lm_calls / n, 3),
            "tokens_per_question": round(r.total_tokens / n, 1),
            "latency_p50_s": round(r.latency_p50_s, 3),
            "errors": r.errors,
        }


@dataclass(frozen=True)
class Gate:
    """The promotion gate's decision on the recompiled workflow (scored on the validation split)."""

    decision: str
    """``promoted``, ``refused`` or ``none`` (nothing to decide)."""
    reason: str
    margin: float | None = None
    """Candidate minus serving score on the validation questions (a fraction; x100 for points)."""
    required: float | None = None
    """The margin promotion needs."""
    n: int = 0
    """Validation questions the decision rests on."""
    candidate: str | None = None
    serving: str | None = None

    def summary(self) -> dict[str, Any]:
        """The decision as JSON."""
        return {
            "decision": self.decision,
            "margin": None if self.margin is None else round(self.margin, 4),
            "required_margin": self.required,
            "split": "validation",
            "n": self.n,
            "candidate": self.candidate,
            "serving": self.serving,
            "reason": self.reason,
        }


@dataclass
class DemoResult:
    """Everything the demo did, for the summary, the report and tests."""

    run_id: str
    run_dir: Path
    """The run's folder, as it is named once the run is complete (every path shown is under it)."""
    settings: Settings
    phoenix: PhoenixStatus | None = None
    ingest: IngestReport | None = None
    train_scores: list[float] = field(default_factory=list[float])
    train_run_scores: dict[str, float] = field(default_factory=dict[str, float])
    """The metric's score of each traced training run, by trace id (what crystallization learns from)."""
    mining: MiningResult | None = None
    labelled: Dataset | None = None
    crystallization: Crystallization | None = None
    cost: CostCheck | None = None
    """The workflow's expected LM calls against the agent's on the recorded runs."""
    kept_agent: str | None = None
    """Why the demo kept the agent instead of a workflow, when it did."""
    search: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    """The recompilation's candidates and their scores on the training data."""
    rows: list[Row] = field(default_factory=list[Row])
    gate: Gate | None = None
    skipped: dict[str, str] = field(default_factory=dict[str, str])
    """Stages that did not run, and why."""
    report: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict[str, float])
    """Wall time per stage."""
    total_seconds: float = 0.0

    @property
    def workflow_spec(self) -> Path:
        """Where the published workflow spec is."""
        return Path(workflow_program(self.settings))

    @property
    def train_trace_ids(self) -> list[str]:
        """The traced training runs' trace ids, in the order they ran."""
        return list(self.train_run_scores)

    @property
    def promotion(self) -> str | None:
        """What happened at the gate, in one sentence."""
        return self.gate.reason if self.gate else None

    @property
    def promoted(self) -> str | None:
        """The version promoted, if any."""
        return self.gate.candidate if self.gate and self.gate.decision == "promoted" else None

    def row(self, label: str) -> Row | None:
        """The summary row with this label."""
        return next((r for r in self.rows if r.label == label), None)

    def summary(self) -> dict[str, Any]:
        """The run as one JSON document (``geode demo --json``, ``summary.json``, ``latest.json``)."""
        return {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir),
            "model": self.rows[0].result.model if self.rows else None,
            "metric": self.rows[0].result.metric if self.rows else None,
            "programs": [row.summary() for row in self.rows],
            "gate": (self.gate or Gate("none", "no gate decision")).summary(),
            "training": {
                "runs": len(self.train_scores),
                "correct": int(sum(s >= 1.0 for s in self.train_scores)),
                "kept_agent": self.kept_agent,
                "cost": None
                if self.cost is None
                else {
                    "agent_lm_calls": round(self.cost.agent_lm_calls, 3),
                    "workflow_lm_calls": round(self.cost.workflow_lm_calls, 3),
                    "cheaper": self.cost.cheaper,
                },
                "recompile_candidates": self.search,
            },
            "phoenix_url": self.phoenix.url if self.phoenix else None,
            "report": str(self.report) if self.report else None,
            "workflow_spec": str(self.workflow_spec) if self.crystallization is not None else None,
            "skipped": self.skipped,
            "seconds": round(self.total_seconds, 1),
            "stage_seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }
