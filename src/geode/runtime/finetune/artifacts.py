"""LM artifacts: fine-tuned GGUF weights stored by content hash, with their lineage as JSON.

Layout under ``settings.lm_artifacts_dir`` (``<home>/lms``)::

    <id>/model.gguf   the weights (llama.cpp loads them as they are)
    <id>/lm.json      what they are: the SHA-256 of model.gguf, the base model's name and SHA-256, the
                      training data's id, the hyper-parameters and the training figures

The id is the first 16 hex digits of the SHA-256 of ``model.gguf``: the same weights are the same
artifact, and a file changed after it was stored no longer matches its id, so :meth:`LMArtifactStore.get`
refuses it. Metadata is JSON; nothing here is ever unpickled. This module needs only the standard
library, so the runtime can load an artifact without the fine-tuning dependencies.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geode.errors import ModelFileError

__all__ = ["ARTIFACT_FORMAT", "LMArtifact", "LMArtifactStore", "file_sha256", "lm_artifact_of"]

ARTIFACT_FORMAT = "geode.lm-artifact"
FORMAT_VERSION = 1
_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_KEYS = frozenset(
    {
        "format",
        "format_version",
        "id",
        "sha256",
        "bytes",
        "created_at",
        "base_model",
        "base_sha256",
        "dataset_id",
        "method",
        "hyperparameters",
        "training",
        "note",
    }
)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 hex digest of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class LMArtifact:
    """A stored model file and its lineage."""

    id: str
    sha256: str
    bytes: int
    base_model: str
    """The base model's file name (its content is pinned by ``base_sha256``)."""
    base_sha256: str
    dataset_id: str | None
    """The content id of the training examples."""
    method: str
    """``lora`` or ``full``."""
    hyperparameters: Mapping[str, Any]
    training: Mapping[str, Any] = field(default_factory=dict)
    """Training figures: epochs, losses, validation scores, seconds, peak memory."""
    note: str | None = None
    created_at: str = ""
    path: Path | None = None
    """The GGUF file (set once stored)."""

    def to_json(self) -> dict[str, Any]:
        """The ``lm.json`` document."""
        return {
            "format": ARTIFACT_FORMAT,
            "format_version": FORMAT_VERSION,
            "id": self.id,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "created_at": self.created_at,
            "base_model": self.base_model,
            "base_sha256": self.base_sha256,
            "dataset_id": self.dataset_id,
            "method": self.method,
            "hyperparameters": dict(self.hyperparameters),
            "training": dict(self.training),
            "note": self.note,
        }

    @classmethod
    def from_json(cls, doc: Any, path: Path, where: str) -> LMArtifact:
        """Validate an ``lm.json`` document."""
        if not isinstance(doc, dict) or doc.get("format") != ARTIFACT_FORMAT:
            raise ModelFileError(f"{where}: not a Geode LM artifact description")
        unknown = sorted(set(doc) - _KEYS)
        if unknown:
            raise ModelFileError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
        try:
            return cls(
                id=str(doc["id"]),
                sha256=str(doc["sha256"]),
                bytes=int(doc["bytes"]),
                base_model=str(doc["base_model"]),
                base_sha256=str(doc["base_sha256"]),
                dataset_id=doc.get("dataset_id"),
                method=str(doc["method"]),
                hyperparameters=dict(doc.get("hyperparameters") or {}),
                training=dict(doc.get("training") or {}),
                note=doc.get("note"),
                created_at=str(doc.get("created_at", "")),
                path=path,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ModelFileError(f"{where}: malformed LM artifact description ({err})") from err


class LMArtifactStore:
    """Content-addressed LM artifacts under ``root``.

    Args:
        root: The store folder (``settings.lm_artifacts_dir``).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def put(
        self,
        gguf_path: str | os.PathLike[str],
        *,
        base_model: str | os.PathLike[str],
        dataset_id: str | None,
        method: str,
        hyperparameters: Mapping[str, Any],
        training: Mapping[str, Any] | None = None,
        note: str | None = None,
        base_sha256: str | None = None,
    ) -> LMArtifact:
        """Store a GGUF file (copied) with its lineage; storing the same bytes again returns the same id.

        Args:
            gguf_path: The weights to store.
            base_model: The model they were trained from (hashed unless ``base_sha256`` is given).
            dataset_id: The training data's content id.
            method: ``lora`` or ``full``.
            hyperparameters: The training options.
            training: Training figures.
            note: Free text.
            base_sha256: The base file's SHA-256, when already known.
        """
        source = Path(gguf_path)
        digest = file_sha256(source)
        artifact_id = digest[:16]
        folder = self.root / artifact_id
        if (folder / "lm.json").is_file():
            return self.get(artifact_id)
        base = Path(base_model)
        artifact = LMArtifact(
            id=artifact_id,
            sha256=digest,
            bytes=source.stat().st_size,
            base_model=base.name,
            base_sha256=base_sha256 or file_sha256(base),
            dataset_id=dataset_id,
            method=method,
            hyperparameters=dict(hyperparameters),
            training=dict(training or {}),
            note=note,
            created_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        )
        self.root.mkdir(parents=True, exist_ok=True)
        # Build the folder aside and rename it into place: a reader never sees half an artifact.
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{artifact_id}."))
        try:
            shutil.copyfile(source, staging / "model.gguf")
            text = json.dumps(artifact.to_json(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
            (staging / "lm.json").write_text(text, encoding="utf-8")
            try:
                os.replace(staging, folder)
            except OSError:
                if not (folder / "lm.json").is_file():  # not a concurrent put of the same bytes
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return self.get(artifact_id, verify=False)

    def get(self, artifact_id: str, *, verify: bool = True) -> LMArtifact:
        """The stored artifact with this id.

        Args:
            artifact_id: 16 hex digits.
            verify: Re-hash ``model.gguf`` and refuse it if it changed since it was stored.

        Raises:
            ModelFileError: No such artifact, a malformed description, or weights that do not match.
        """
        if not _ID_RE.match(artifact_id or ""):
            raise ModelFileError(f"{artifact_id!r} is not an LM artifact id (16 hex digits)")
        folder = self.root / artifact_id
        meta = folder / "lm.json"
        model = folder / "model.gguf"
        if not meta.is_file() or not model.is_file():
            raise ModelFileError(
                f"LM artifact {artifact_id} is not in {str(self.root)!r}",
                hint="copy the artifact folder from where it was trained, or recompile with --optimizer finetune",
            )
        try:
            doc = json.loads(meta.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelFileError(f"{meta}: not valid JSON ({err})") from err
        artifact = LMArtifact.from_json(doc, model, str(meta))
        if artifact.id != artifact_id:
            raise ModelFileError(f"{meta}: describes artifact {artifact.id}, not {artifact_id}")
        if verify and file_sha256(model) != artifact.sha256:
            raise ModelFileError(
                f"LM artifact {artifact_id}: model.gguf does not match its recorded SHA-256 (changed or damaged)",
                hint="restore the file or recompile; Geode does not load weights that changed after they were stored",
            )
        return artifact

    def list(self) -> list[LMArtifact]:
        """Every readable artifact, oldest first (unreadable ones are skipped)."""
        if not self.root.is_dir():
            return []
        found: list[LMArtifact] = []
        for folder in self.root.iterdir():
            if folder.is_dir() and _ID_RE.match(folder.name):
                try:
                    found.append(self.get(folder.name, verify=False))
                except ModelFileError:
                    continue
        return sorted(found, key=lambda a: a.created_at)


def lm_artifact_of(program: Any) -> str | None:
    """The LM artifact a program's predictors run on (``None``: they run on the context's LM).

    Read from the weights the predictors' LMs actually load (``<store>/<id>/model.gguf`` beside its
    ``lm.json``), not from a marker that a copy could lose.

    Raises:
        ModelFileError: The predictors run on different artifacts.
    """
    found: set[str] = set()
    for _, predictor in program.named_predictors():
        path = getattr(getattr(predictor, "lm", None), "model_path", None)
        if path is None:
            continue
        folder = Path(path).parent
        if Path(path).name == "model.gguf" and _ID_RE.match(folder.name) and (folder / "lm.json").is_file():
            found.add(folder.name)
    if len(found) > 1:
        raise ModelFileError(
            f"the program's predictors run on different LM artifacts: {', '.join(sorted(found))}"
        )
    return next(iter(found), None)
