"""LM backends: the embedded llama.cpp model and any litellm model, chosen by settings."""

from __future__ import annotations

from typing import Any

import dspy

from geode.runtime.settings import LMSettings

__all__ = ["build_adapter", "build_lm", "is_local"]


def is_local(lm: dspy.BaseLM) -> bool:
    """Whether the LM is a small local model, prompted through ``SmallModelAdapter`` by default.

    Such LMs declare ``small_local_model = True`` (``LocalLM`` does): they decode under a grammar, so
    the adapter and ``geode.Agent`` may send them tightened schemas (length caps, unions of whole steps).
    """
    return bool(getattr(lm, "small_local_model", False))


def build_adapter(choice: str, lm: dspy.BaseLM) -> dspy.Adapter | None:
    """The adapter an :class:`~geode.runtime.settings.LMSettings` ``adapter`` value names for ``lm``.

    Returns:
        ``None`` for DSPy's default (``auto`` on an LM that is not local).

    Raises:
        ValueError: An unknown choice.
    """
    if choice == "auto":
        choice = "small" if is_local(lm) else "default"
    if choice == "small":
        from geode.adapters import SmallModelAdapter

        return SmallModelAdapter()
    if choice == "json":
        return dspy.JSONAdapter()
    if choice == "chat":
        return dspy.ChatAdapter()
    if choice == "default":
        return None
    raise ValueError(f"unknown adapter {choice!r}; choose auto, small, json or chat")


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
