"""`geode compile --optimizer finetune`'s wiring: refused without a local GGUF; version ids name the weights."""
# ruff: noqa: E402

from __future__ import annotations

from pathlib import Path

import dspy
import pytest
from tests.tiers import require_tier

pytestmark = pytest.mark.finetune

require_tier("finetune", import_name="torch")

import geode
from geode.cli._finetune import FinetuneRun, make_finetuner
from geode.errors import ConfigError
from geode.runtime.finetune import LMArtifact, LocalFinetune
from geode.runtime.finetune.artifacts import LMArtifactStore
from geode.runtime.registry import program_version
from geode.runtime.settings import TracingSettings
from geode.testing import ScriptedLM


def _metric(example: dspy.Example, prediction: dspy.Prediction, trace: object = None) -> float:
    return 1.0


def test_finetune_is_refused_when_the_runtime_lm_is_not_a_local_gguf(tmp_path: Path) -> None:
    settings = geode.Settings(home=tmp_path, tracing=TracingSettings(enabled=False))
    with geode.Runtime(settings, lm=ScriptedLM([])) as rt, pytest.raises(ConfigError, match="local GGUF"):
        make_finetuner(
            rt, _metric, epochs=1, time_budget_s=60, rank=4, learning_rate=1e-4, qtype=None, say=print
        )


def test_version_ids_name_the_artifact_only_for_programs_bound_to_new_weights(tmp_path: Path) -> None:
    run = FinetuneRun(LocalFinetune(_metric, store=LMArtifactStore(tmp_path)))
    program = dspy.Predict("question -> answer")
    assert run.artifact_id is None and run.version_of(program) == program_version(program)
    run.tuner.artifact = LMArtifact(
        id="a" * 16,
        sha256="a" * 64,
        bytes=1,
        base_model="base.gguf",
        base_sha256="b" * 64,
        dataset_id=None,
        method="lora",
        hyperparameters={},
    )
    bound = program.deepcopy()
    bound.set_lm(ScriptedLM([]))
    assert run.version_of(program) == program_version(program)
    assert run.version_of(bound) == program_version(bound, "a" * 16) != program_version(program)
