"""The old home of model selection; it lives in :mod:`geode.evals.model_selection` (this name is kept)."""

from geode.evals.model_selection import ModelRunner, compare_models

__all__ = ["ModelRunner", "compare_models"]
