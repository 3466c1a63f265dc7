"""What :func:`~geode.evals.mining.mine` reads, keeps and labels: :class:`MiningOptions`.

The Python API and ``geode mine`` build the same object: which traces to read is a
:class:`~geode.traces.sources.TraceFilter`, the rest is mining's own filters and policies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from geode.evals.mining.annotations import Annotation, AnnotationSource
from geode.evals.mining.records import OutputPolicy
from geode.evals.mining.result import MiningProgress
from geode.traces.sources import TraceFilter


@dataclass(frozen=True)
class MiningOptions:
    """What :func:`~geode.evals.mining.mine` reads, keeps and labels.

    Example:
        >>> from datetime import UTC, datetime
        >>> from geode.traces.sources import TraceFilter
        >>> options = MiningOptions(TraceFilter(start=datetime(2026, 1, 1, tzinfo=UTC)), failures=True)
        >>> options.traces.start.year, options.failures
        (2026, True)
    """

    traces: TraceFilter = field(default_factory=TraceFilter)
    """Which traces to read: ``session_id``, the window (``start``, ``end``), a Phoenix ``where`` query.
    Its ``program`` is :func:`~geode.evals.mining.mine`'s ``program`` (leave it unset or give the same
    name); its ``status``, unless set, is ``ERROR`` when ``failures`` is asked without ``max_score``."""
    where: Mapping[str, str] | None = None
    """Attribute filters on the run's root span, ``{"geode.program.version": "3f9c..."}``; a
    ``metadata.<key>`` filter looks into the run's metadata. Values compare as text."""
    failures: bool = False
    """Only failed runs (the root span's status is ERROR). With ``max_score`` too, a run qualifies when
    it failed *or* scored low."""
    max_score: float | None = None
    """Only runs whose annotation score is at most this (unscored runs are left out)."""
    annotation_names: Sequence[str] | None = None
    """Which annotations give a run's score, label and feedback (default: all; the latest annotation
    per name counts, and the score is the mean over names)."""
    annotations: Sequence[Annotation] = ()
    """Extra annotations, e.g. the runtime's local feedback log."""
    annotation_source: AnnotationSource | None = None
    """Where to read annotations; default: the Phoenix project of a Phoenix source, none for others."""
    wait_for: Sequence[str] | None = None
    """Trace ids of runs that just happened: wait until exactly these are complete in the source (at
    most ``wait_timeout_s``) and mine them; ids that do not arrive are skipped as
    :attr:`~geode.evals.mining.SkipReason.NOT_ARRIVED`."""
    wait_timeout_s: float = 60.0
    """Deadline for ``wait_for``."""
    outputs: OutputPolicy = "auto"
    """Which traced outputs become expected outputs (see :data:`~geode.evals.mining.OutputPolicy`)."""
    pass_score: float = 0.5
    """With ``outputs="auto"``, runs scored below this keep no expected outputs."""
    near_duplicates: bool = True
    """Also drop runs whose inputs nearly repeat a kept run's."""
    limit: int | None = None
    """At most this many records (the newest runs)."""
    name: str | None = None
    """The dataset's name (default: derived from the program)."""
    progress: Callable[[MiningProgress], None] | None = None
    """Called after each trace read."""
