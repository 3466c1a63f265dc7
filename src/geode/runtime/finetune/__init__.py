"""Weight-level recompilation of the embedded model: fine-tune a GGUF on a program's correct runs, on CPU.

:class:`LocalFinetune` is the optimizer (``geode compile --optimizer finetune``); :class:`LMArtifactStore`
keeps its output, content-hashed GGUF weights with their lineage, which a program version names and the
runtime loads. The artifact store needs only the standard library; training needs the ``finetune`` extra
(torch, transformers, gguf), imported when first used. See docs/finetune.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geode.runtime.finetune.artifacts import LMArtifact, LMArtifactStore, lm_artifact_of

if TYPE_CHECKING:
    from geode.runtime.finetune.data import ChatExample, collect_examples
    from geode.runtime.finetune.optimizer import FinetuneReport, LocalFinetune
    from geode.runtime.finetune.train import FinetuneOptions, Progress

__all__ = [
    "ChatExample",
    "FinetuneOptions",
    "FinetuneReport",
    "LMArtifact",
    "LMArtifactStore",
    "LocalFinetune",
    "Progress",
    "collect_examples",
    "lm_artifact_of",
]

_LAZY = {
    "ChatExample": "geode.runtime.finetune.data",
    "collect_examples": "geode.runtime.finetune.data",
    "FinetuneReport": "geode.runtime.finetune.optimizer",
    "LocalFinetune": "geode.runtime.finetune.optimizer",
    "FinetuneOptions": "geode.runtime.finetune.train",
    "Progress": "geode.runtime.finetune.train",
}


def __getattr__(name: str) -> Any:
    # torch and transformers load only when training is asked for: `geode serve` never pays for them.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geode.runtime.finetune' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
