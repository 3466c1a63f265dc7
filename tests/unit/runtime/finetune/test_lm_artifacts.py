"""LM artifacts (content-hashed weights with lineage) and program versions that name one."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest

from geode.errors import ModelFileError, ProgramLoadError
from geode.runtime.finetune.artifacts import LMArtifactStore, file_sha256, lm_artifact_of
from geode.runtime.programs import ResolvedProgram
from geode.runtime.registry import ActivePrograms, ProgramRegistry, program_version
from geode.testing import ScriptedLM

LINEAGE = {"dataset_id": "d" * 16, "method": "lora", "hyperparameters": {"rank": 8, "learning_rate": 2e-4}}


@pytest.fixture
def weights(tmp_path: Path) -> tuple[Path, Path]:
    base = tmp_path / "base.gguf"
    base.write_bytes(b"GGUF" + b"\x00" * 64)
    tuned = tmp_path / "tuned.gguf"
    tuned.write_bytes(b"GGUF" + b"\x01" * 64)
    return base, tuned


def test_put_stores_the_weights_by_content_hash_with_lineage(
    tmp_path: Path, weights: tuple[Path, Path]
) -> None:
    base, tuned = weights
    store = LMArtifactStore(tmp_path / "lms")
    artifact = store.put(tuned, base_model=base, training={"best_epoch": 2}, **LINEAGE)
    assert artifact.id == file_sha256(tuned)[:16]
    assert artifact.path == tmp_path / "lms" / artifact.id / "model.gguf"
    assert artifact.path is not None
    assert artifact.path.read_bytes() == tuned.read_bytes()
    doc = json.loads((tmp_path / "lms" / artifact.id / "lm.json").read_text())
    assert doc["base_sha256"] == file_sha256(base) and doc["base_model"] == "base.gguf"
    assert doc["dataset_id"] == "d" * 16 and doc["hyperparameters"]["rank"] == 8
    assert doc["training"] == {"best_epoch": 2}
    # Same bytes, same artifact; the first lineage is kept.
    again = store.put(tuned, base_model=base, dataset_id="other", method="full", hyperparameters={})
    assert again.id == artifact.id and again.dataset_id == "d" * 16
    assert [a.id for a in store.list()] == [artifact.id]


def test_changed_weights_and_bad_ids_are_refused(tmp_path: Path, weights: tuple[Path, Path]) -> None:
    base, tuned = weights
    store = LMArtifactStore(tmp_path / "lms")
    artifact = store.put(tuned, base_model=base, **LINEAGE)
    assert artifact.path is not None
    with artifact.path.open("ab") as fh:
        fh.write(b"\x02")
    with pytest.raises(ModelFileError, match="does not match its recorded SHA-256"):
        store.get(artifact.id)
    with pytest.raises(ModelFileError, match="16 hex digits"):
        store.get("../../etc")
    with pytest.raises(ModelFileError, match="is not in"):
        store.get("0" * 16)


def test_a_description_with_unknown_fields_is_refused(tmp_path: Path, weights: tuple[Path, Path]) -> None:
    base, tuned = weights
    store = LMArtifactStore(tmp_path / "lms")
    artifact = store.put(tuned, base_model=base, **LINEAGE)
    meta = tmp_path / "lms" / artifact.id / "lm.json"
    doc = json.loads(meta.read_text())
    doc["loader"] = "pickle"
    meta.write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="unknown field"):
        store.get(artifact.id)


class QA(dspy.Signature):
    """Answer."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def test_a_version_that_names_an_lm_artifact_is_another_version(tmp_path: Path) -> None:
    registry = ProgramRegistry(tmp_path / "programs")
    program = dspy.Predict(QA)
    plain = registry.save("qa", program)
    tuned = program.deepcopy()
    tuned.set_lm(ScriptedLM([]))  # what LocalFinetune returns: predictors bound to the new LM
    named = registry.save("qa", tuned, lm_artifact="a" * 16, parent=plain.version)
    assert named.version != plain.version
    assert named.version == program_version(tuned, lm_artifact="a" * 16)
    info = registry.info("qa", named.version)
    assert info.lm_artifact == "a" * 16 and registry.info("qa", plain.version).lm_artifact is None
    # The predictor's LM state is not stored: the artifact id names the LM.
    _, state = registry.load_state("qa", named.version)
    assert state.get("lm") is None


def test_editing_the_artifact_id_in_a_version_file_is_detected(tmp_path: Path) -> None:
    registry = ProgramRegistry(tmp_path / "programs")
    named = registry.save("qa", dspy.Predict(QA), lm_artifact="a" * 16)
    doc = json.loads(named.path.read_text())
    doc["metadata"]["lm_artifact"] = "b" * 16
    named.path.write_text(json.dumps(doc))
    with pytest.raises(ProgramLoadError, match="checksum"):
        registry.info("qa", named.version)


def test_the_served_version_runs_on_its_artifacts_lm(tmp_path: Path) -> None:
    registry = ProgramRegistry(tmp_path / "programs")
    base = dspy.Predict(QA)
    named = registry.save("qa", base, lm_artifact="a" * 16)
    registry.promote("qa", named.version, force=True)
    tuned_lm = ScriptedLM([{"answer": "from the fine-tuned weights"}])
    asked: list[str] = []

    def loader(artifact_id: str) -> dspy.BaseLM:
        asked.append(artifact_id)
        return tuned_lm

    resolved = ResolvedProgram("qa", base)
    served = ActivePrograms(registry, lm_loader=loader).get(resolved)
    assert served.version == named.version and served.problem is None
    assert asked == ["a" * 16]
    with dspy.context(lm=ScriptedLM([{"answer": "from the runtime's LM"}])):
        assert served.module(question="q").answer == "from the fine-tuned weights"


def test_a_version_whose_artifact_cannot_load_does_not_serve(tmp_path: Path) -> None:
    registry = ProgramRegistry(tmp_path / "programs")
    base = dspy.Predict(QA)
    named = registry.save("qa", base, lm_artifact="a" * 16)
    registry.promote("qa", named.version, force=True)

    def missing(artifact_id: str) -> dspy.BaseLM:
        raise ModelFileError(f"LM artifact {artifact_id} is not here")

    for active in (ActivePrograms(registry, lm_loader=missing), ActivePrograms(registry)):
        served = active.get(ResolvedProgram("qa", base))
        assert served.version is None and served.module is base
        assert served.problem is not None and "a" * 16 in served.problem


class _FileLM(ScriptedLM):
    """A scripted LM that says which weights it loaded, as ``geode.LocalLM`` does."""

    def __init__(self, model_path: Path) -> None:
        super().__init__([])
        self.model_path = model_path


def test_the_artifact_a_program_runs_on_is_read_from_its_predictors_weights(
    tmp_path: Path, weights: tuple[Path, Path]
) -> None:
    base, tuned = weights
    artifact = LMArtifactStore(tmp_path / "lms").put(tuned, base_model=base, **LINEAGE)
    assert artifact.path is not None
    program = dspy.Predict(QA)
    assert lm_artifact_of(program) is None
    program.set_lm(_FileLM(base))  # a plain GGUF, not an artifact
    assert lm_artifact_of(program) is None
    program.set_lm(_FileLM(artifact.path))
    assert lm_artifact_of(program.deepcopy()) == artifact.id
