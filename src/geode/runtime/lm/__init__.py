"""LM backends: the embedded llama.cpp model and any litellm model, chosen by settings."""

from __future__ import annotations

from typing import Any

import dspy

from geode.runtime.settings import LMSettings

__all__ = ["build_lm", "is_local"]


def is_local(lm: dspy.BaseLM) -> bool:
    """Whether the LM is a small local model that needs schema-constrained JSON output.

    Such LMs declare ``prefers_json_adapter = True`` (``LocalLM`` does); the runtime then uses
    ``dspy.JSONAdapter`` so their output is constrained to the signature's schema.
    """
    return bool(getattr(lm, "prefers_json_adapter", False))


def build_lm(settings: LMSettings) -> dspy.BaseLM:
    """Build the LM the settings name.

    Args:
        settings: ``model="local"`` builds :class:`~geode.runtime.lm.local.LocalLM`; anything else is a
            litellm model string passed to ``dspy.LM``.
    """
    if settings.model == "local":
        from geode.runtime.lm.local import LocalLM

        return LocalLM(
            model_path=settings.model_path,
            context_size=settings.context_size,
            threads=settings.threads,
            temperature=settings.temperature,
            max_tokens=settings.max_tokens,
            cache=settings.cache,
        )
    kwargs: dict[str, Any] = {}
    if settings.api_base:
        kwargs["api_base"] = settings.api_base
    if settings.api_key is not None:
        kwargs["api_key"] = settings.api_key.get_secret_value()
    return dspy.LM(
        settings.model,
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
        cache=settings.cache,
        num_retries=settings.num_retries,
        timeout=settings.timeout_s,
        **kwargs,
    )
