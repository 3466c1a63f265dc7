"""The registry's records: a version's metadata and scores, promotion events, and their validation.

A version file's ``metadata`` header becomes a :class:`VersionInfo` here; unknown or malformed
fields are refused (``ProgramLoadError``) rather than ignored.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geode.errors import ProgramLoadError

if TYPE_CHECKING:
    from geode.evals.evaluate import EvalResult

_METADATA_KEYS = frozenset(
    {
        "program",
        "parent",
        "created_at",
        "dataset_id",
        "metric",
        "scores",
        "optimizer",
        "optimizer_settings",
        "dependency_versions",
        "predictors",
        "demos",
        "note",
        "lm_artifact",
    }
)
_SCORE_KEYS = frozenset(
    {"dataset_id", "metric", "score", "n", "split", "source_dataset_id", "model", "measured_at"}
)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


def _dependency_versions() -> dict[str, str]:
    versions = {"python": f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"}
    for dist in ("geode", "dspy", "litellm", "gepa", "optuna"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return versions


@dataclass(frozen=True)
class Score:
    """A version's score with one metric on one dataset (usually a held-out split)."""

    dataset_id: str
    """The id of the exact examples scored (the held-out split's own content id)."""
    metric: str
    score: float
    """Mean metric value in ``[0, 1]``."""
    n: int
    split: str = "heldout"
    source_dataset_id: str | None = None
    """The dataset the split was cut from."""
    model: str | None = None
    measured_at: str = field(default_factory=_now)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data."""
        return dict(self.__dict__)

    @classmethod
    def heldout(cls, result: EvalResult, *, source_dataset_id: str | None = None) -> Score:
        """A held-out evaluation as a version's score (``source_dataset_id``: what the split was cut from)."""
        return cls(
            dataset_id=result.dataset_id,
            metric=result.metric,
            score=result.score,
            n=result.n,
            split="heldout",
            source_dataset_id=source_dataset_id,
            model=result.model,
        )

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Score:
        """Validate a score entry of a version file."""
        if not isinstance(obj, dict):
            raise ProgramLoadError(f"{where}: a score must be a JSON object")
        unknown = sorted(set(obj) - _SCORE_KEYS)
        if unknown:
            raise ProgramLoadError(f"{where}: unknown score field(s) {', '.join(map(repr, unknown))}")
        try:
            score = obj["score"]
            if isinstance(score, bool) or not isinstance(score, int | float):
                raise TypeError("score")
            return cls(
                dataset_id=str(obj["dataset_id"]),
                metric=str(obj["metric"]),
                score=float(score),
                n=int(obj["n"]),
                split=str(obj.get("split", "heldout")),
                source_dataset_id=obj.get("source_dataset_id"),
                model=obj.get("model"),
                measured_at=str(obj.get("measured_at", "")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ProgramLoadError(f"{where}: malformed score entry ({err})") from err


@dataclass(frozen=True)
class VersionInfo:
    """A stored program version's metadata (not its state)."""

    program: str
    version: str
    parent: str | None
    created_at: str
    dataset_id: str | None
    metric: str | None
    scores: tuple[Score, ...]
    optimizer: str | None
    optimizer_settings: Mapping[str, Any]
    dependency_versions: Mapping[str, str]
    predictors: Mapping[str, str]
    demos: int
    note: str | None
    path: Path
    lm_artifact: str | None = None
    """The LM artifact (fine-tuned weights) this version runs on; ``None``: the runtime's LM."""

    def score_on(self, dataset_id: str, metric: str) -> Score | None:
        """The latest score on exactly these examples with this metric."""
        matches = [s for s in self.scores if s.dataset_id == dataset_id and s.metric == metric]
        return matches[-1] if matches else None

    @property
    def heldout_score(self) -> Score | None:
        """The latest held-out score, if any."""
        held = [s for s in self.scores if s.split == "heldout"]
        return held[-1] if held else None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (without the path)."""
        return {"version": self.version, **self.metadata()}

    def metadata(self) -> dict[str, Any]:
        """The metadata header as stored in the version file."""
        extra = {"lm_artifact": self.lm_artifact} if self.lm_artifact else {}
        return {
            "program": self.program,
            "parent": self.parent,
            "created_at": self.created_at,
            "dataset_id": self.dataset_id,
            "metric": self.metric,
            "scores": [s.to_json() for s in self.scores],
            "optimizer": self.optimizer,
            "optimizer_settings": dict(self.optimizer_settings),
            "dependency_versions": dict(self.dependency_versions),
            "predictors": dict(self.predictors),
            "demos": self.demos,
            "note": self.note,
            **extra,
        }


@dataclass(frozen=True)
class PromotionEvent:
    """One change of the active pointer."""

    action: str
    """``promote``, ``rollback`` or ``route`` (the canary and shadow changed, the active version not)."""
    version: str | None
    """The version that became active (``None``: the unversioned base program)."""
    previous: str | None
    at: str
    forced: bool = False
    candidate_score: float | None = None
    active_score: float | None = None
    margin: float | None = None
    reason: str | None = None
    route: dict[str, Any] | None = None
    """The canary and shadow after this change, when it changed them."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (``route`` only when the change had one)."""
        data = dict(self.__dict__)
        if data["route"] is None:
            del data["route"]
        return data


def _metadata_from_json(meta: Any, where: str) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise ProgramLoadError(f"{where}: 'metadata' must be a JSON object")
    unknown = sorted(set(meta) - _METADATA_KEYS)
    if unknown:
        raise ProgramLoadError(
            f"{where}: unknown metadata field(s) {', '.join(map(repr, unknown))}",
            hint="the file was not written by this Geode, or was edited; roll back or re-save it",
        )
    if not isinstance(meta.get("program"), str):
        raise ProgramLoadError(f"{where}: metadata.program must be the program's name")
    for key in ("optimizer_settings", "dependency_versions", "predictors"):
        if not isinstance(meta.get(key, {}), dict):
            raise ProgramLoadError(f"{where}: metadata.{key} must be a JSON object")
    if not isinstance(meta.get("scores", []), list):
        raise ProgramLoadError(f"{where}: metadata.scores must be a list")
    return meta


def _info(version: str, meta: Mapping[str, Any], path: Path) -> VersionInfo:
    where = str(path)
    try:
        return _build_info(version, meta, path, where)
    except (TypeError, ValueError) as err:
        raise ProgramLoadError(f"{where}: malformed metadata ({err})") from err


def _build_info(version: str, meta: Mapping[str, Any], path: Path, where: str) -> VersionInfo:
    return VersionInfo(
        program=str(meta["program"]),
        version=version,
        parent=meta.get("parent"),
        created_at=str(meta.get("created_at", "")),
        dataset_id=meta.get("dataset_id"),
        metric=meta.get("metric"),
        scores=tuple(Score.from_json(s, where) for s in meta.get("scores", [])),
        optimizer=meta.get("optimizer"),
        optimizer_settings=dict(meta.get("optimizer_settings", {})),
        dependency_versions=dict(meta.get("dependency_versions", {})),
        predictors=dict(meta.get("predictors", {})),
        demos=int(meta.get("demos", 0) or 0),
        note=meta.get("note"),
        path=path,
        lm_artifact=meta.get("lm_artifact"),
    )
