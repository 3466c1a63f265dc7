"""The program registry: compiled program versions as JSON, an active pointer, promotion and rollback.

Layout: version files under ``settings.programs_dir`` (``<home>/programs``), the active pointer in the
state database (:mod:`geode.runtime.state`: ``<home>/state.db``, or PostgreSQL for a deployment)::

    <program>/versions/<version>.json   one file per version: a metadata header and the DSPy state
    state database                      per program: the active version, the rollback history, events

A version id is the first 16 hex digits of the SHA-256 of the program's canonical JSON state
(``module.dump_state()``), so the same compiled state always gets the same id. Each version file
also carries a checksum over its whole content: a file edited by hand, cut short or corrupted is
refused on load (``ProgramLoadError``) with the reason. Pickle is never read, whatever the file is
called. The checksum detects accidents; a ``mac`` (HMAC-SHA256 under the registry key, see
:mod:`geode.runtime.registry_trust`) detects a deliberate rewrite by someone who can write the folder
or the state database but does not hold the key. Files without a ``mac`` are refused until the
operator re-signs them (``geode versions <program> --sign-unsigned``).

A promotion or rollback is one database transaction (check, new pointer, event), so every process
sees the old or the new pointer, never half of one, and concurrent promotions serialise. The old
layout's ``<program>/active.json`` is moved into the database when a registry opens the folder.
Promotion is gated: a candidate must beat the active version by a
margin on the same held-out data unless forced. When the active version cannot be loaded, the
runtime keeps serving what it served before (see :class:`ActivePrograms`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import dspy

from geode.errors import GeodeError, ProgramLoadError, VersionError
from geode.runtime.programs import ResolvedProgram
from geode.runtime.registry_trust import registry_key_at, verifies, version_mac
from geode.runtime.state import (
    Pointer,
    PointerChange,
    Route,
    SqlPointers,
    SqlState,
    SqlVersionFiles,
    open_state,
    sqlite_url,
)

if TYPE_CHECKING:
    from geode.evals.evaluate import EvalResult

__all__ = [
    "ActivePrograms",
    "ProgramRegistry",
    "PromotionEvent",
    "RoutedVersion",
    "Score",
    "ServedProgram",
    "VersionInfo",
    "is_pickle",
    "program_version",
]

logger = logging.getLogger(__name__)

FORMAT = "geode.program-version"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 64 * 1024 * 1024
"""Version files larger than this are refused (a compiled DSPy state is kilobytes to a few megabytes)."""

_VERSION_KEYS = frozenset({"format", "format_version", "version", "checksum", "metadata", "state"})
_OPTIONAL_VERSION_KEYS = frozenset({"mac"})
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
_POINTER_KEYS = frozenset({"format", "format_version", "program", "active", "history", "events"})
_PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".pck", ".cloudpickle"})
_VERSION_RE = re.compile(r"^[0-9a-f]{16}$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


# -- hashing and files ----------------------------------------------------------------------------


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


def _state_of(module: dspy.Module) -> dict[str, Any]:
    state = module.dump_state()
    try:
        # Round-trip through JSON: what is hashed is exactly what is stored and later loaded.
        return json.loads(_canonical(state))
    except (TypeError, ValueError) as err:
        raise ProgramLoadError(
            f"cannot version {type(module).__name__}: its state is not JSON-serializable ({err})",
            hint="Geode stores program state as JSON only; keep demos and signatures to JSON values",
        ) from err


def program_version(module: dspy.Module, lm_artifact: str | None = None) -> str:
    """The version id of a program's current state: 16 hex digits of the SHA-256 of its canonical JSON.

    A version that names an LM artifact (fine-tuned weights) hashes the artifact id with the state: the
    same prompts on other weights are another version.
    """
    state = _state_of(module)
    return _version_id(_without_lm(state) if lm_artifact else state, lm_artifact)


def _version_id(state: Mapping[str, Any], lm_artifact: str | None) -> str:
    if lm_artifact is None:
        return _sha256(_canonical(state))[:16]
    return _sha256(_canonical({"lm_artifact": lm_artifact, "state": state}))[:16]


def _without_lm(state: Mapping[str, Any]) -> dict[str, Any]:
    # The LM a version runs on is named by its artifact id, not by the predictors' LM state (which would
    # hold this machine's file path and could not be loaded safely anyway).
    if _is_flat(state):
        return {**state, "lm": None} if "lm" in state else dict(state)
    return {
        name: ({**pstate, "lm": None} if isinstance(pstate, dict) and "lm" in pstate else pstate)
        for name, pstate in state.items()
    }


def _signed_content(version: str, metadata: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    return _canonical({"version": version, "metadata": metadata, "state": state})


def _checksum(version: str, metadata: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    return _sha256(_signed_content(version, metadata, state))


def is_pickle(path: Path, head: bytes | None = None) -> bool:
    """Whether a file is (or claims to be) a pickle: by suffix, or by the pickle protocol's magic bytes."""
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        return True
    if head is None:
        try:
            with path.open("rb") as fh:
                head = fh.read(2)
        except OSError:
            return False
    # Protocols 2-5 start with PROTO (0x80) and the protocol number.
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _pickle_error(path: Path) -> ProgramLoadError:
    return ProgramLoadError(
        f"{str(path)!r} is a pickle file; Geode never loads pickle (unpickling can run arbitrary code)",
        hint="save program state as JSON (module.save('program.json') or geode compile) and import that",
    )


def _read_json_file(path: Path) -> Any:
    if is_pickle(path):
        raise _pickle_error(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError as err:
        raise ProgramLoadError(f"program file {str(path)!r} does not exist") from err
    if size > MAX_FILE_BYTES:
        raise ProgramLoadError(
            f"{str(path)!r} is {size} bytes, over the {MAX_FILE_BYTES}-byte limit for program files"
        )
    data = path.read_bytes()
    if is_pickle(path, data[:2]):
        raise _pickle_error(path)
    if not data.strip():
        raise ProgramLoadError(
            f"{str(path)!r} is empty", hint="the file was truncated; roll back or re-save it"
        )
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ProgramLoadError(
            f"{str(path)!r} is not UTF-8 JSON (byte {err.start}); is it a program file?"
        ) from err
    except json.JSONDecodeError as err:
        raise ProgramLoadError(
            f"{str(path)!r} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
            "the file is corrupt or truncated",
            hint="roll back to another version, or re-save this one",
        ) from err


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_legacy_pointer(path: Path) -> dict[str, Any]:
    """An ``active.json`` of the file layout before the state database (Geode <= 0.x), validated."""
    doc = _read_json_file(path)
    where = str(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("program"), str):
        raise ProgramLoadError(f"{where}: the active pointer must be a JSON object naming its program")
    unknown = sorted(set(doc) - _POINTER_KEYS)
    if unknown:
        raise ProgramLoadError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))} in the active pointer"
        )
    active = doc.get("active")
    history = doc.get("history", [])
    if active is not None and (not isinstance(active, str) or not _VERSION_RE.match(active)):
        raise ProgramLoadError(f"{where}: malformed active version {active!r}")
    if not isinstance(history, list) or not all(
        h is None or (isinstance(h, str) and _VERSION_RE.match(h)) for h in history
    ):
        raise ProgramLoadError(f"{where}: malformed rollback history")
    events = doc.get("events", [])
    return {
        "program": doc["program"],
        "active": active,
        "history": list(history),
        "events": [e for e in events if isinstance(e, dict)] if isinstance(events, list) else [],
    }


class _Unset:
    """The type of :data:`_UNSET`: no ``expect_active`` given (``None`` means the base program)."""


_UNSET: Final = _Unset()


def _dependency_versions() -> dict[str, str]:
    versions = {"python": f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"}
    for dist in ("geode", "dspy", "litellm", "gepa", "optuna"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return versions


def _predictors(module: dspy.Module) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, predictor in module.named_predictors():
        signature = getattr(predictor, "signature", None)
        if signature is None:
            out[name] = type(predictor).__name__
            continue
        ins = ", ".join(signature.input_fields)
        outs = ", ".join(signature.output_fields)
        out[name] = f"{ins} -> {outs}"
    return out


# -- records --------------------------------------------------------------------------------------


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


def _is_flat(state: Mapping[str, Any]) -> bool:
    # A program that is itself a predictor (a bare dspy.Predict) dumps its own state, not a mapping
    # of predictor names to states.
    return isinstance(state.get("signature"), dict) and isinstance(state.get("demos"), list)


def _by_predictor(state: Mapping[str, Any]) -> dict[str, Any]:
    return {"self": state} if _is_flat(state) else dict(state)


def _check_state_shape(state: Any, where: str) -> dict[str, Any]:
    if not isinstance(state, dict) or not state:
        raise ProgramLoadError(f"{where}: 'state' must be a non-empty JSON object of predictor states")
    for name, pstate in _by_predictor(state).items():
        if not isinstance(pstate, dict):
            raise ProgramLoadError(f"{where}: the state of predictor {name!r} must be a JSON object")
        demos = pstate.get("demos", [])
        if not isinstance(demos, list) or not all(isinstance(d, dict) for d in demos):
            raise ProgramLoadError(f"{where}: demos of predictor {name!r} must be a list of JSON objects")
        signature = pstate.get("signature")
        if signature is not None and (
            not isinstance(signature, dict)
            or not isinstance(signature.get("instructions"), str)
            or not isinstance(signature.get("fields"), list)
        ):
            raise ProgramLoadError(f"{where}: the signature state of predictor {name!r} is malformed")
    return state


def _check_against(module: dspy.Module, state: Mapping[str, Any], where: str) -> None:
    """Refuse a state that does not fit the program: other predictors, other fields, unknown keys."""
    expected = _by_predictor(module.dump_state())
    saved_states = _by_predictor(state)
    missing = sorted(set(expected) - set(saved_states))
    extra = sorted(set(saved_states) - set(expected))
    if missing or extra:
        raise ProgramLoadError(
            f"{where}: the saved state does not fit {type(module).__name__}: "
            + "; ".join(
                part
                for part in (
                    f"missing predictor(s) {', '.join(missing)}" if missing else "",
                    f"unknown predictor(s) {', '.join(extra)}" if extra else "",
                )
                if part
            ),
            hint="the program's structure changed since this version was compiled; recompile it",
        )
    for name, fresh in expected.items():
        saved = saved_states[name]
        allowed = set(fresh) | (
            {"fields", "lm"} if isinstance(fresh, dict) and "signature" in fresh else set()
        )
        unknown = sorted(set(saved) - allowed)
        if unknown:
            raise ProgramLoadError(
                f"{where}: predictor {name!r} has unknown state field(s) {', '.join(map(repr, unknown))}",
                hint="the file was edited or written by something else; roll back or re-save it",
            )
        fresh_sig = fresh.get("signature") if isinstance(fresh, dict) else None
        saved_sig = saved.get("signature")
        if isinstance(fresh_sig, dict) and isinstance(saved_sig, dict):
            if len(fresh_sig.get("fields", [])) != len(saved_sig.get("fields", [])):
                raise ProgramLoadError(
                    f"{where}: predictor {name!r} was saved with {len(saved_sig.get('fields', []))} signature "
                    f"fields, the program has {len(fresh_sig.get('fields', []))}",
                    hint="the program's signature changed since this version was compiled; recompile it",
                )


# -- the registry ---------------------------------------------------------------------------------


class ProgramRegistry:
    """Versions of compiled programs, stored as JSON under ``root``.

    Args:
        root: The registry folder (``settings.programs_dir``).
        key: The HMAC key version files are signed and verified with
            (:func:`geode.runtime.registry_trust.registry_key`); default: the key generated into
            ``<root>/../keys/registry-signing.key``, the one a :class:`~geode.runtime.Runtime` on that
            home uses when ``GEODE_STATE_SIGNING_KEY`` is not set.

    Example:
        >>> reg = ProgramRegistry(tmp_path / "programs")  # doctest: +SKIP
        >>> info = reg.save("qa", compiled, dataset_id=ds.id, metric="exact_match")  # doctest: +SKIP
        >>> reg.promote("qa", info.version, candidate_score=0.8, active_score=0.6)  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        state: SqlState | None = None,
        poll_s: float | None = None,
        key: bytes | None = None,
    ) -> None:
        self.root = Path(root)
        self._key = key if key is not None else registry_key_at(self.root.parent)
        self._thread_lock = threading.RLock()
        # Default: the home's SQLite state file, the one a Runtime on <home> (root = <home>/programs) uses.
        self.state = state if state is not None else open_state(sqlite_url(self.root.parent / "state.db"))
        self.poll_s = self.state.poll_s if poll_s is None else poll_s
        self._pointers = SqlPointers(self.state)
        self._files = SqlVersionFiles(self.state)
        self._stamps: dict[str, tuple[float, int]] = {}
        self._migrate_legacy()

    # -- paths ---------------------------------------------------------------------------------

    def program_dir(self, name: str) -> Path:
        """The folder of one program (names that are not filename-safe get a slug plus a hash)."""
        if not name:
            raise VersionError("a program name is required")
        if _SAFE_NAME.match(name):
            return self.root / name
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:60] or "program"
        return self.root / f"{slug}-{_sha256(name)[:8]}"

    def _versions_dir(self, name: str) -> Path:
        return self.program_dir(name) / "versions"

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        # One writer at a time per program: a thread lock here, an advisory file lock across processes.
        folder = self.program_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        with self._thread_lock, (folder / ".lock").open("a") as fh:
            try:
                import fcntl

                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            except ImportError:  # not POSIX: the thread lock still serialises this process
                pass
            yield

    # -- versions ------------------------------------------------------------------------------

    def programs(self) -> list[str]:
        """Names of programs with at least one stored version or an active pointer."""
        names = set(self._pointers.programs()) | set(self._files.programs())
        if self.root.is_dir():
            for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
                name = self._name_in(folder)
                if name:
                    names.add(name)
        return sorted(names)

    def _name_in(self, folder: Path) -> str | None:
        for path in sorted((folder / "versions").glob("*.json")):
            with contextlib.suppress(ProgramLoadError, OSError):
                data = _read_json_file(path)
                meta = data.get("metadata") if isinstance(data, dict) else None
                if isinstance(meta, dict) and isinstance(meta.get("program"), str):
                    return meta["program"]
        return None

    def save(
        self,
        name: str,
        module: dspy.Module,
        *,
        parent: str | None = None,
        dataset_id: str | None = None,
        metric: str | None = None,
        scores: Sequence[Score] = (),
        optimizer: str | None = None,
        optimizer_settings: Mapping[str, Any] | None = None,
        note: str | None = None,
        lm_artifact: str | None = None,
    ) -> VersionInfo:
        """Store a program's current state as a version (idempotent: the same state is the same version).

        Saving a state that is already stored keeps its original metadata and adds any new scores.
        ``lm_artifact`` names the fine-tuned weights the version runs on (an
        :class:`~geode.runtime.finetune.LMArtifactStore` id); it is part of the version id.

        Returns:
            The stored version's metadata.
        """
        state = _state_of(module)
        if lm_artifact is not None:
            state = _without_lm(state)
        version = _version_id(state, lm_artifact)
        path = self._versions_dir(name) / f"{version}.json"
        with self._locked(name):
            info = None
            if path.exists():
                try:
                    info, _ = self._load(name, version)
                except ProgramLoadError as err:  # a damaged copy of this very state: rewrite it whole
                    logger.warning("program %r: rewriting damaged version file %s (%s)", name, path, err)
            if info is not None:
                merged = list(info.scores)
                for s in scores:
                    if not any(_same_score(s, old) for old in merged):
                        merged.append(s)
                meta = info.metadata()
                meta["scores"] = [s.to_json() for s in merged]
                if meta.get("parent") is None and parent is not None and parent != version:
                    meta["parent"] = parent
            else:
                meta = {
                    "program": name,
                    "parent": parent if parent != version else None,
                    "created_at": _now(),
                    "dataset_id": dataset_id,
                    "metric": metric,
                    "scores": [s.to_json() for s in scores],
                    "optimizer": optimizer,
                    "optimizer_settings": dict(optimizer_settings or {}),
                    "dependency_versions": _dependency_versions(),
                    "predictors": _predictors(module),
                    "demos": sum(len(getattr(p, "demos", []) or []) for _, p in module.named_predictors()),
                    "note": note,
                }
                if lm_artifact is not None:
                    meta["lm_artifact"] = lm_artifact
            self._write_version(path, version, meta, state)
        return _info(version, meta, path)

    def _write_version(
        self, path: Path, version: str, meta: Mapping[str, Any], state: Mapping[str, Any]
    ) -> None:
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": version,
            "checksum": _checksum(version, meta, state),
            "mac": version_mac(self._key, _signed_content(version, meta, state)),
            "metadata": meta,
            "state": state,
        }
        text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
        _atomic_write(path, text)
        self._files.store(meta["program"], version, text)

    def _materialise(self, name: str) -> None:
        # Versions saved by other machines on the same state database: written into this folder (their
        # checksums are verified on load like any file's).
        folder = self._versions_dir(name)
        have = {p.stem for p in folder.glob("*.json")} if folder.is_dir() else set()
        for version, text in self._files.missing(name, have):
            if _VERSION_RE.match(version):
                _atomic_write(folder / f"{version}.json", text)

    def add_score(self, name: str, version: str, score: Score) -> VersionInfo:
        """Record another score on a stored version (its state and id do not change)."""
        with self._locked(name):
            info, state = self._load(name, version)
            meta = info.metadata()
            if not any(_same_score(score, old) for old in info.scores):
                meta["scores"] = [*meta["scores"], score.to_json()]
                self._write_version(info.path, info.version, meta, state)
        return _info(info.version, meta, info.path)

    def scan(self, name: str) -> tuple[list[VersionInfo], list[tuple[Path, str]]]:
        """Every version of a program, oldest first, and the files that failed validation (with why)."""
        self._materialise(name)
        folder = self._versions_dir(name)
        if not folder.is_dir():
            return [], []
        good: list[VersionInfo] = []
        bad: list[tuple[Path, str]] = []
        for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            if path.suffix != ".json" or not _VERSION_RE.match(path.stem):
                reason = "pickle file refused" if is_pickle(path) else "not a version file"
                bad.append((path, reason))
                continue
            try:
                good.append(self._load_path(path)[0])
            except ProgramLoadError as err:
                bad.append((path, str(err)))
        good.sort(key=lambda v: (v.created_at, v.version))
        return good, bad

    def versions(self, name: str) -> list[VersionInfo]:
        """The program's valid versions, oldest first."""
        return self.scan(name)[0]

    def resolve_version(self, name: str, version: str) -> str:
        """Expand a unique version prefix (at least 4 characters) to the full id.

        Raises:
            VersionError: No such version, or the prefix is ambiguous; the message lists what exists.
        """
        version = version.strip().lower()
        folder = self._versions_dir(name)
        if not (folder / f"{version}.json").exists():
            self._materialise(name)
        known = (
            sorted(p.stem for p in folder.glob("*.json") if _VERSION_RE.match(p.stem))
            if folder.is_dir()
            else []
        )
        if version in known:
            return version
        matches = [v for v in known if len(version) >= 4 and v.startswith(version)]
        if len(matches) == 1:
            return matches[0]
        listing = ", ".join(known[-10:]) or "none"
        if len(matches) > 1:
            raise VersionError(f"version prefix {version!r} of {name!r} is ambiguous: {', '.join(matches)}")
        raise VersionError(
            f"program {name!r} has no version {version!r} (versions: {listing})",
            hint=f"list them with: geode versions {name}",
        )

    def info(self, name: str, version: str) -> VersionInfo:
        """A version's metadata, validated.

        Raises:
            VersionError: No such version.
            ProgramLoadError: The version file is corrupt, tampered with or not JSON.
        """
        return self._load(name, version)[0]

    def _load(self, name: str, version: str) -> tuple[VersionInfo, dict[str, Any]]:
        full = self.resolve_version(name, version)
        info, state = self._load_path(self._versions_dir(name) / f"{full}.json")
        if info.program != name:
            raise ProgramLoadError(f"{info.path}: the file belongs to program {info.program!r}, not {name!r}")
        return info, state

    def _load_path(self, path: Path, *, keyed: bool = True) -> tuple[VersionInfo, dict[str, Any]]:
        # keyed=False checks everything but the MAC: for a file the operator imports, or re-signs.
        where = str(path)
        doc = _read_json_file(path)
        if not isinstance(doc, dict):
            raise ProgramLoadError(f"{where}: a program version must be a JSON object")
        unknown = sorted(set(doc) - _VERSION_KEYS - _OPTIONAL_VERSION_KEYS)
        missing = sorted(_VERSION_KEYS - set(doc))
        if unknown:
            raise ProgramLoadError(
                f"{where}: unknown field(s) {', '.join(map(repr, unknown))}",
                hint="the file was edited or written by something else; roll back or re-save it",
            )
        if missing:
            raise ProgramLoadError(
                f"{where}: missing field(s) {', '.join(map(repr, missing))}; the file is incomplete"
            )
        if doc["format"] != FORMAT:
            raise ProgramLoadError(f"{where}: not a Geode program version (format {doc['format']!r})")
        if doc["format_version"] != FORMAT_VERSION:
            raise ProgramLoadError(
                f"{where}: program version format {doc['format_version']!r} is not supported (this Geode reads "
                f"{FORMAT_VERSION})",
                hint="upgrade Geode or recompile the program",
            )
        version, meta, state = doc["version"], doc["metadata"], doc["state"]
        if not isinstance(version, str) or not _VERSION_RE.match(version):
            raise ProgramLoadError(f"{where}: malformed version id {version!r}")
        meta = _metadata_from_json(meta, where)
        state = _check_state_shape(state, where)
        try:
            checksum = _checksum(version, meta, state)
        except ValueError as err:
            raise ProgramLoadError(f"{where}: the file holds values JSON cannot represent ({err})") from err
        if doc["checksum"] != checksum:
            raise ProgramLoadError(
                f"{where}: checksum mismatch: the file was modified after it was written (tampered or corrupted)",
                hint="roll back to another version (geode rollback) or recompile",
            )
        lm_artifact = meta.get("lm_artifact")
        if lm_artifact is not None and not isinstance(lm_artifact, str):
            raise ProgramLoadError(f"{where}: metadata.lm_artifact must be an artifact id")
        if _version_id(state, lm_artifact) != version:
            raise ProgramLoadError(
                f"{where}: the state does not hash to its version id {version}; the file was altered"
            )
        if path.stem != version:
            raise ProgramLoadError(f"{where}: the file name does not match its version id {version}")
        if keyed:
            self._check_mac(doc.get("mac"), _signed_content(version, meta, state), where)
        return _info(version, meta, path), state

    def _check_mac(self, mac: Any, content: str, where: str) -> None:
        if mac is None:
            raise ProgramLoadError(
                f"{where}: the version file is not signed (written before registry keys, or its 'mac' "
                "was removed); unsigned files are not trusted",
                hint="if you trust this folder's files, re-sign them once: geode versions <program> "
                "--sign-unsigned",
            )
        if not isinstance(mac, str) or not verifies(self._key, content, mac):
            raise ProgramLoadError(
                f"{where}: MAC mismatch: the file was rewritten without the registry key, or signed "
                "with another key (tampered, or saved by a replica with another GEODE_STATE_SIGNING_KEY)",
                hint="replicas sharing a state database must share GEODE_STATE_SIGNING_KEY; otherwise "
                "roll back (geode rollback) or recompile",
            )

    def sign_unsigned(self, name: str) -> list[str]:
        """Sign, under this registry's key, the program's version files that carry no MAC.

        Only files that pass every other check (plain checksum, version id, schema) are signed; a file
        whose MAC is present but wrong is left alone (re-signing it would launder a rewrite).

        Returns:
            The versions signed.
        """
        signed: list[str] = []
        with self._locked(name):
            self._materialise(name)
            folder = self._versions_dir(name)
            paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
            for path in paths:
                if not _VERSION_RE.match(path.stem):
                    continue
                try:
                    doc = _read_json_file(path)
                    if not isinstance(doc, dict) or "mac" in doc:
                        continue
                    info, state = self._load_path(path, keyed=False)
                except ProgramLoadError as err:
                    logger.warning("program %r: not signing %s: %s", name, path, err)
                    continue
                if info.program != name:
                    continue
                self._write_version(path, info.version, info.metadata(), state)
                signed.append(info.version)
        return signed

    def load_state(self, name: str, version: str) -> tuple[VersionInfo, dict[str, Any]]:
        """A version's metadata and its validated DSPy state."""
        return self._load(name, version)

    def load_into(self, name: str, version: str, module: dspy.Module) -> dspy.Module:
        """A fresh copy of ``module`` with the version's state loaded (``module`` itself is untouched).

        Raises:
            VersionError: No such version.
            ProgramLoadError: The file is invalid or its state does not fit ``module``.
        """
        info, state = self._load(name, version)
        return _apply_state(module, state, str(info.path))

    # -- active pointer ------------------------------------------------------------------------
    #
    # The pointer (active version, rollback history, events) lives in the state database, so every
    # process and replica on it agrees on what serves; version files stay under the folder.

    def _migrate_legacy(self) -> None:
        # Pointers of the old layout (<program>/active.json) move into the database once; the file is
        # renamed, not deleted, so a downgrade can still find it by hand. Version files only this
        # folder has (saved before the state database) are shared too.
        if not self.root.is_dir():
            return
        for folder in sorted(p for p in self.root.glob("*/versions") if p.is_dir()):
            name = self._name_in(folder.parent)
            local = {p.stem: p for p in folder.glob("*.json") if _VERSION_RE.match(p.stem)}
            if name is None or not local:
                continue
            for version in sorted(set(local) - self._files.known(name)):
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    self._files.store(name, version, local[version].read_text(encoding="utf-8"))
        for path in sorted(self.root.glob("*/active.json")):
            try:
                doc = _read_legacy_pointer(path)
            except ProgramLoadError as err:
                logger.error("registry: not migrating %s: %s", path, err)
                continue
            if self._pointers.import_pointer(doc["program"], doc["active"], doc["history"], doc["events"]):
                logger.info("registry: moved %s into the state database", path)
            with contextlib.suppress(OSError):
                path.replace(path.with_name("active.json.migrated"))

    def pointer_stamp(self, name: str) -> tuple[int] | None:
        """A cheap change marker of the program's active pointer (``None`` when it never had one).

        Read from the database at most once per ``poll_s`` per program: the bound on how long this
        process serves the previous version after a promotion made by another process.
        """
        now = time.monotonic()
        cached = self._stamps.get(name)
        if cached is not None and now - cached[0] < self.poll_s:
            revision = cached[1]
        else:
            revision = self._pointers.revision(name)
            self._stamps[name] = (now, revision)
        return (revision,) if revision else None

    def pointer(self, name: str) -> Pointer:
        """The program's active version, history and route, read together."""
        return self._pointers.get(name)

    def active(self, name: str) -> str | None:
        """The active version id, or ``None`` when the base program serves."""
        return self._pointers.get(name).active

    def history(self, name: str) -> list[str | None]:
        """Versions that were active before the current one, oldest first (``None``: the base program)."""
        return list(self._pointers.get(name).history)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The pointer's event log (promotions and rollbacks), oldest first."""
        return self._pointers.events(name)

    def promote(
        self,
        name: str,
        version: str,
        *,
        candidate_score: float | None = None,
        active_score: float | None = None,
        margin: float = 0.05,
        force: bool = False,
        module: dspy.Module | None = None,
        reason: str | None = None,
        expect_active: str | _Unset | None = _UNSET,
    ) -> PromotionEvent:
        """Make ``version`` the active version, if it beats the active one by ``margin``.

        The check and the change are one database transaction: two promotions at once (from any
        processes or replicas) run one after the other, and the second sees the first's result.

        Args:
            name: The program.
            version: The candidate (a full id or a unique prefix).
            candidate_score: The candidate's score on the held-out data, in ``[0, 1]``.
            active_score: The active version's score on the same data with the same metric.
            margin: How much better the candidate must be (0.05 = 5 points).
            force: Promote without the gate (the event records that it was forced).
            module: The program; when given, the version's state is test-loaded into a copy first.
            reason: Recorded on the event.
            expect_active: The version the caller compared against (``None``: the base program). When
                another promotion or rollback changed the active version since, nothing changes and
                :class:`VersionError` says what is active now.

        Raises:
            VersionError: Unknown version, already active, the active version is not ``expect_active``,
                scores missing, or the gate refused (the message gives both scores and the margin).
            ProgramLoadError: The candidate's file is invalid or does not fit ``module``. The active
                pointer is unchanged in every error case.
        """
        if margin < 0:
            raise VersionError(f"the promotion margin must be >= 0, got {margin}")
        info, state = self._load(name, version)
        if module is not None:
            _apply_state(module, state, str(info.path))
        with self._pointers.change(name) as change:
            current = change.current.active
            if not isinstance(expect_active, _Unset) and current != expect_active:
                raise VersionError(
                    f"not promoting {info.version} of {name!r}: the active version changed to "
                    f"{current or 'the base program'} (expected {expect_active or 'the base program'}); "
                    "another promotion or rollback won",
                    hint=f"check with geode versions {name}, then compare against the new active version",
                )
            if current == info.version:
                raise VersionError(f"{info.version} is already the active version of {name!r}")
            if not force:
                _gate(name, info.version, current, candidate_score, active_score, margin)
            event = PromotionEvent(
                action="promote",
                version=info.version,
                previous=current,
                at=_now(),
                forced=force,
                candidate_score=candidate_score,
                active_score=active_score,
                margin=margin,
                reason=reason,
            )
            event = _activate(change, info.version, [*change.current.history, current], event)
        self._stamps.pop(name, None)
        return event

    def rollback(self, name: str, *, module: dspy.Module | None = None) -> PromotionEvent:
        """Make the previously active version active again (one transaction, like :meth:`promote`).

        Raises:
            VersionError: There is nothing to roll back to.
            ProgramLoadError: The previous version's file is invalid (the active pointer is unchanged).
        """
        with self._pointers.change(name) as change:
            history = list(change.current.history)
            current = change.current.active
            if not history:
                raise VersionError(
                    f"program {name!r} has nothing to roll back to"
                    + (
                        f" (active: {current}, no earlier version)"
                        if current
                        else " (the base program is serving)"
                    )
                )
            target = history.pop()
            if target is not None:
                info, state = self._load(name, target)
                if module is not None:
                    _apply_state(module, state, str(info.path))
            event = PromotionEvent(action="rollback", version=target, previous=current, at=_now())
            event = _activate(change, target, history, event)
        self._stamps.pop(name, None)
        return event

    # -- canary and shadow routing -------------------------------------------------------------

    def route(self, name: str) -> Route:
        """The program's canary and shadow candidates (shared by every replica on the database)."""
        return self._pointers.get(name).route

    def set_route(
        self,
        name: str,
        *,
        canary: str | None = None,
        canary_share: float = 0.1,
        shadow: str | None = None,
        shadow_share: float = 1.0,
        module: dspy.Module | None = None,
        reason: str | None = None,
        expect_route: Route | None = None,
    ) -> PromotionEvent:
        """Replace the program's canary and shadow candidates (none of either: clear them).

        Like a promotion, one transaction on the program's pointer: every replica on the state
        database serves the new split within ``poll_s``, and the event log records it.

        Args:
            name: The program.
            canary: A version (id or unique prefix) answering ``canary_share`` of requests.
            canary_share: 0..1.
            shadow: A version run on a copy of ``shadow_share`` of requests, its answer only traced.
            shadow_share: 0..1.
            module: The program; when given, each candidate's state is test-loaded into a copy first.
            reason: Recorded on the event.
            expect_route: The route the caller read and changed; when another change landed since,
                nothing changes and :class:`VersionError` says so.

        Raises:
            VersionError: Unknown version, a candidate that is the active version, one version as both
                canary and shadow, a share outside 0..1, or the route is not ``expect_route``. The route
                is unchanged in every error case.
            ProgramLoadError: A candidate's file is invalid or does not fit ``module``.
        """
        for label, share in (("canary", canary_share), ("shadow", shadow_share)):
            if not 0.0 <= share <= 1.0:
                raise VersionError(f"the {label} share must be between 0 and 1, got {share}")
        chosen: dict[str, str | None] = {"canary": None, "shadow": None}
        for label, version in (("canary", canary), ("shadow", shadow)):
            if version is None:
                continue
            info, state = self._load(name, self.resolve_version(name, version))
            if module is not None:
                _apply_state(module, state, str(info.path))
            chosen[label] = info.version
        if chosen["canary"] is not None and chosen["canary"] == chosen["shadow"]:
            raise VersionError(f"{chosen['canary']} cannot be both the canary and the shadow of {name!r}")
        route = Route(
            chosen["canary"],
            canary_share if chosen["canary"] else 0.0,
            chosen["shadow"],
            shadow_share if chosen["shadow"] else 0.0,
        )
        with self._pointers.change(name) as change:
            current = change.current.active
            if expect_route is not None and change.current.route != expect_route:
                raise VersionError(
                    f"the route of {name!r} changed meanwhile; nothing was changed",
                    hint=f"check it with geode route {name}, then set it again",
                )
            for label, version in chosen.items():
                if version is not None and version == current:
                    raise VersionError(
                        f"{version} is the active version of {name!r}; it cannot also be the {label}",
                        hint=f"pick another version (geode versions {name})",
                    )
            event = PromotionEvent(
                action="route",
                version=current,
                previous=current,
                at=_now(),
                reason=reason,
                route=route.to_json(),
            )
            change.set(current, change.current.history, event.to_json(), route=route)
        self._stamps.pop(name, None)
        return event

    def gate_scores(self, name: str, candidate: str, active: str) -> tuple[Score, Score] | None:
        """The latest pair of scores of two versions on the same examples with the same metric."""
        cand = self.info(name, candidate)
        act = self.info(name, active)
        for score in reversed(cand.scores):
            other = act.score_on(score.dataset_id, score.metric)
            if other is not None:
                return score, other
        return None

    # -- import ---------------------------------------------------------------------------------

    def import_file(
        self, name: str, path: str | os.PathLike[str], module: dspy.Module, *, note: str | None = None
    ) -> VersionInfo:
        """Store a program state saved elsewhere as a version.

        Accepts DSPy's ``module.save("program.json")`` output and Geode version files; refuses pickle.

        Raises:
            ProgramLoadError: The file is pickle, not JSON, or its state does not fit ``module``.
        """
        source = Path(path)
        if source.is_dir():
            if any(is_pickle(p) for p in source.iterdir() if p.is_file()):
                raise _pickle_error(source / "program.pkl")
            raise ProgramLoadError(f"{str(source)!r} is a directory; pass the program's .json state file")
        doc = _read_json_file(source)
        if isinstance(doc, dict) and doc.get("format") == FORMAT:
            # The operator chose this file: its checksum and id are checked, not another machine's MAC.
            _, state = self._load_path(source, keyed=False)
        elif isinstance(doc, dict):
            state = {k: v for k, v in doc.items() if k != "metadata"}
            state = _check_state_shape(state, str(source))
        else:
            raise ProgramLoadError(f"{str(source)!r} is not a DSPy program state (expected a JSON object)")
        loaded = _apply_state(module, state, str(source))
        return self.save(name, loaded, note=note or f"imported from {source.name}")


def _activate(
    change: PointerChange, version: str | None, history: Sequence[str | None], event: PromotionEvent
) -> PromotionEvent:
    """Make ``version`` active in ``change``, recording ``event``; returns the event as recorded.

    A candidate that becomes the active version stops being a candidate in the same transaction,
    and the event says how the route changed.
    """
    route = change.current.route.without(version)
    if route != change.current.route:
        event = dataclasses.replace(event, route=route.to_json())
    change.set(version, history, event.to_json(), route=route)
    return event


def _same_score(a: Score, b: Score) -> bool:
    return (
        a.dataset_id == b.dataset_id
        and a.metric == b.metric
        and abs(a.score - b.score) < 1e-12
        and a.n == b.n
    )


def _gate(
    name: str,
    candidate: str,
    current: str | None,
    candidate_score: float | None,
    active_score: float | None,
    margin: float,
) -> None:
    active_label = current or "the base program"
    if candidate_score is None or active_score is None:
        raise VersionError(
            f"refusing to promote {candidate} of {name!r}: no scores of it and {active_label} on the same held-out data",
            hint="run geode compile (it scores both), pass --dataset and --metric to score them now, or --force",
        )
    gain = candidate_score - active_score
    if gain + 1e-9 < margin:
        raise VersionError(
            f"refusing to promote {candidate} of {name!r}: it scored {candidate_score:.1%} vs {active_score:.1%} "
            f"for {active_label} on the held-out data ({gain * 100:+.1f} points); promotion needs at least "
            f"{margin * 100:+.1f} points",
            hint="improve the candidate, lower --margin, or pass --force to promote anyway",
        )


def _apply_state(module: dspy.Module, state: Mapping[str, Any], where: str) -> dspy.Module:
    _check_against(module, state, where)
    fresh = module.deepcopy()
    try:
        # Never trust LM endpoints or custom LM classes from a file: allow_unsafe_lm_state=False.
        fresh.load_state(dict(state), allow_unsafe_lm_state=False)
    except Exception as err:
        raise ProgramLoadError(
            f"{where}: the saved state could not be loaded into {type(module).__name__} ({type(err).__name__}: {err})",
            hint="the program changed since this version was compiled, or the file is damaged",
        ) from err
    return fresh


# -- serving --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutedVersion:
    """A candidate version the program's route serves beside the active one."""

    module: dspy.Module
    version: str
    mode: str
    """``canary`` (answers ``share`` of requests) or ``shadow`` (runs on a copy, only traced)."""
    share: float


@dataclass(frozen=True)
class ServedProgram:
    """The module that answers for a program, and the version it is."""

    name: str
    module: dspy.Module
    version: str | None
    """The registry version serving, ``None`` for the base program."""
    problem: str | None = None
    """Why the active version is not the one serving (it failed to load), if so."""
    canary: RoutedVersion | None = None
    """The route's canary, loaded (``geode route``), if any."""
    shadow: RoutedVersion | None = None
    """The route's shadow, loaded, if any."""


@dataclass
class _Slot:
    base: dspy.Module
    stamp: tuple[int] | None
    served: ServedProgram


class ActivePrograms:
    """Serves each program's active registry version, reloading when the active pointer changes.

    When the active version cannot be loaded (corrupt, tampered, pickle, does not fit the program),
    the version served before keeps serving; on a first load, the most recent loadable version of the
    rollback history serves, else the base program. The problem is logged once and kept on
    :attr:`ServedProgram.problem`.

    A version that names an LM artifact is bound to the LM ``lm_loader`` builds for it (the runtime's
    loader reads the artifact store); without a loader, or when the artifact cannot be loaded, the
    version counts as not loadable.
    """

    def __init__(
        self, registry: ProgramRegistry, *, lm_loader: Callable[[str], dspy.BaseLM] | None = None
    ) -> None:
        self.registry = registry
        self.lm_loader = lm_loader
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()

    def load_version(self, name: str, version: str, base: dspy.Module) -> dspy.Module:
        """A copy of ``base`` with the version's state, bound to its LM artifact if it names one.

        Raises:
            VersionError: No such version.
            ProgramLoadError: The file is invalid, or its LM artifact cannot be loaded.
        """
        module = self.registry.load_into(name, version, base)
        artifact = self.registry.info(name, version).lm_artifact
        if artifact:
            if self.lm_loader is None:
                raise ProgramLoadError(
                    f"version {version} runs on LM artifact {artifact}; nothing here loads one"
                )
            try:
                lm = self.lm_loader(artifact)
            except GeodeError as err:
                raise ProgramLoadError(
                    f"version {version}: its LM artifact {artifact} cannot be loaded ({err})"
                ) from err
            module.set_lm(lm)
        return module

    def get(self, resolved: ResolvedProgram) -> ServedProgram:
        """The served program for a resolved reference."""
        name = resolved.name
        stamp = self.registry.pointer_stamp(name)
        slot = self._slots.get(name)
        if slot is not None and slot.stamp == stamp and slot.base is resolved.module:
            return slot.served
        with self._lock:
            slot = self._slots.get(name)
            if slot is not None and slot.stamp == stamp and slot.base is resolved.module:
                return slot.served
            previous = slot.served if slot is not None and slot.base is resolved.module else None
            served = (
                self._load(resolved, previous)
                if stamp is not None
                else ServedProgram(name, resolved.module, None)
            )
            self._slots[name] = _Slot(resolved.module, stamp, served)
            return served

    def _load(self, resolved: ResolvedProgram, previous: ServedProgram | None) -> ServedProgram:
        served = self._load_active(resolved, previous)
        try:
            route = self.registry.route(resolved.name)
        except ProgramLoadError:
            return served
        canary = self._candidate(resolved, route.canary, "canary", route.canary_share)
        shadow = self._candidate(resolved, route.shadow, "shadow", route.shadow_share)
        return dataclasses.replace(served, canary=canary, shadow=shadow) if canary or shadow else served

    def _candidate(
        self, resolved: ResolvedProgram, version: str | None, mode: str, share: float
    ) -> RoutedVersion | None:
        if version is None:
            return None
        try:
            return RoutedVersion(
                self.load_version(resolved.name, version, resolved.module), version, mode, share
            )
        except (ProgramLoadError, VersionError) as err:
            # The active version keeps answering everything: a broken candidate is logged, not served.
            logger.error(
                "program %r: %s %s failed to load, not served: %s", resolved.name, mode, version, err
            )
            return None

    def _load_active(self, resolved: ResolvedProgram, previous: ServedProgram | None) -> ServedProgram:
        name = resolved.name
        try:
            pointer = self.registry.pointer(name)
        except ProgramLoadError as err:
            return self._fallback(resolved, previous, [], f"the active pointer is unreadable: {err}")
        active, history = pointer.active, list(pointer.history)
        if active is None:
            return ServedProgram(name, resolved.module, None)
        try:
            module = self.load_version(name, active, resolved.module)
            return ServedProgram(name, module, active)
        except (ProgramLoadError, VersionError) as err:
            return self._fallback(
                resolved, previous, history, f"active version {active} failed to load: {err}"
            )

    def _fallback(
        self,
        resolved: ResolvedProgram,
        previous: ServedProgram | None,
        history: Sequence[str | None],
        problem: str,
    ) -> ServedProgram:
        name = resolved.name
        if previous is not None:
            logger.error(
                "program %r: %s; still serving %s", name, problem, previous.version or "the base program"
            )
            return ServedProgram(name, previous.module, previous.version, problem)
        for candidate in reversed(history):
            if candidate is None:
                break
            try:
                module = self.load_version(name, candidate, resolved.module)
            except (ProgramLoadError, VersionError):
                continue
            logger.error("program %r: %s; serving the previously active version %s", name, problem, candidate)
            return ServedProgram(name, module, candidate, problem)
        logger.error("program %r: %s; serving the base program", name, problem)
        return ServedProgram(name, resolved.module, None, problem)
