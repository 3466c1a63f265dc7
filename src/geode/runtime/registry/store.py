"""Version files: storing, listing, validating, loading, signing and importing a program's versions.

Layout under the registry folder (``settings.programs_dir``)::

    <program>/versions/<version>.json   one file per version: a metadata header and the DSPy state

Each file is mirrored into the state database (``SqlVersionFiles``) and written into another
replica's folder when it lacks one; it is checksum- and MAC-verified on every load, wherever it
came from. :class:`~geode.runtime.registry.ProgramRegistry` adds the active pointer on top.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dspy

from geode.errors import ProgramLoadError, VersionError
from geode.runtime.registry.files import _atomic_write, _pickle_error, _read_json_file, _sha256, is_pickle
from geode.runtime.registry.records import Score, VersionInfo, _dependency_versions, _info, _now
from geode.runtime.registry.states import (
    _apply_state,
    _check_state_shape,
    _predictors,
    _state_of,
    _version_id,
    _without_lm,
)
from geode.runtime.registry.version_file import (
    _VERSION_RE,
    FORMAT,
    _check_mac,
    _read_version_file,
    _signed_content,
    _version_text,
)
from geode.runtime.registry_trust import registry_key_at
from geode.runtime.state import SqlState, SqlVersionFiles, open_state, sqlite_url

logger = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class VersionStore:
    """The version files of every program under ``root``, mirrored into the state database.

    Args:
        root: The registry folder (``settings.programs_dir``).
        state: The state database the files are mirrored into (default: ``<root>/../state.db``).
        key: The HMAC key version files are signed and verified with.
    """

    def __init__(
        self, root: str | os.PathLike[str], *, state: SqlState | None = None, key: bytes | None = None
    ) -> None:
        self.root = Path(root)
        self._key = key if key is not None else registry_key_at(self.root.parent)
        self._thread_lock = threading.RLock()
        # Default: the home's SQLite state file, the one a Runtime on <home> (root = <home>/programs) uses.
        self.state = state if state is not None else open_state(sqlite_url(self.root.parent / "state.db"))
        self._files = SqlVersionFiles(self.state)

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

    def _stored_programs(self) -> set[str]:
        # Programs with a version in the state database or a version file in this folder.
        names = set(self._files.programs())
        if self.root.is_dir():
            for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
                name = self._name_in(folder)
                if name:
                    names.add(name)
        return names

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
        text = _version_text(self._key, version, meta, state)
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
        mac, version, meta, state = _read_version_file(path)
        if keyed:
            _check_mac(self._key, mac, _signed_content(version, meta, state), str(path))
        return _info(version, meta, path), state

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


def _same_score(a: Score, b: Score) -> bool:
    return (
        a.dataset_id == b.dataset_id
        and a.metric == b.metric
        and abs(a.score - b.score) < 1e-12
        and a.n == b.n
    )
