"""``geode compile --optimizer finetune``: the runtime's fine-tuner, wired to the CLI's output."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import dspy

from geode.runtime.registry import program_version

if TYPE_CHECKING:
    from geode.runtime.finetune.optimizer import LocalFinetune
    from geode.runtime.runtime import Runtime

__all__ = ["FinetuneRun", "make_finetuner"]


class FinetuneRun:
    """A ``LocalFinetune`` for one ``geode compile``, and the version ids it implies.

    Args:
        tuner: The fine-tuner (its ``artifact`` is set once training wrote weights).
    """

    def __init__(self, tuner: LocalFinetune) -> None:
        self.tuner = tuner

    def __call__(
        self, student: dspy.Module, trainset: Sequence[dspy.Example], valset: Sequence[dspy.Example] | None
    ) -> dspy.Module:
        """Run the fine-tune (``compile_program``'s ``finetune`` hook)."""
        return self.tuner.compile(student, trainset=trainset, valset=valset)

    @property
    def artifact_id(self) -> str | None:
        """The stored LM artifact, or ``None`` when training did not beat the untrained model."""
        return self.tuner.artifact.id if self.tuner.artifact is not None else None

    def version_of(self, module: dspy.Module) -> str:
        """A program's version id, naming the new weights when it runs on them."""
        bound = any(getattr(p, "lm", None) is not None for _, p in module.named_predictors())
        return program_version(module, self.artifact_id if bound else None)


def make_finetuner(
    rt: Runtime,
    metric: Callable[..., Any],
    *,
    epochs: int,
    time_budget_s: float,
    rank: int,
    learning_rate: float,
    qtype: str | None,
    say: Callable[[str], None],
) -> FinetuneRun:
    """A fine-tuner on the runtime's embedded model that stores its weights in the runtime's LM artifacts.

    Raises:
        ConfigError: The runtime's LM is not the embedded GGUF model.
        MissingExtraError: The ``finetune`` extra is not installed.
    """
    from geode.errors import ConfigError
    from geode.runtime.finetune import FinetuneOptions, LMArtifactStore, LocalFinetune, Progress
    from geode.runtime.lm import build_lm

    base = getattr(rt.lm, "model_path", None)
    if base is None:
        raise ConfigError(
            "--optimizer finetune trains the embedded model's weights; this runtime's LM is not a local GGUF",
            hint="run with --lm local (the default), or set GEODE_LM_MODEL_PATH to a llama GGUF",
        )
    last = [0.0]

    def progress(p: Progress) -> None:
        # One line every 30 s of training, with the ETA: a fine-tune takes minutes on a CPU.
        if p.elapsed_s - last[0] >= 30 or p.step == p.steps_total:
            last[0] = p.elapsed_s
            say(
                f"  epoch {p.epoch}, step {p.step}/{p.steps_total}, loss {p.loss:.3f}, "
                f"{p.elapsed_s:.0f} s elapsed, about {p.eta_s:.0f} s left"
            )

    tuner = LocalFinetune(
        metric,
        store=LMArtifactStore(rt.settings.lm_artifacts_dir),
        options=FinetuneOptions(
            epochs=epochs,
            time_budget_s=time_budget_s,
            rank=rank,
            alpha=2.0 * rank,
            learning_rate=learning_rate,
            qtype=qtype,
        ),
        base_model=base,
        lm_factory=lambda path: build_lm(
            rt.settings.lm.model_copy(update={"model": "local", "model_path": path})
        ),
        adapter=rt.adapter,
        log=say,
        progress=progress,
    )
    return FinetuneRun(tuner)
