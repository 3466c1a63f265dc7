"""LM backends: the embedded llama.cpp model and any litellm model, chosen by settings."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import dspy

from geode.runtime.settings import LMSettings

__all__ = ["build_adapter", "build_lm", "is_local", "use_response_cache"]

_cache_lock = threading.Lock()


def use_response_cache(folder: Path) -> Path:
    """Point DSPy's response cache (memory and disk) at ``folder``; a no-op when it already is.

    DSPy's default disk cache is ``~/.dspy_cache``, shared by every project and every Geode home
    on the machine; a response cached by one home's runs would then answer
    another's. The runtime calls this when it builds an LM from settings, so the cache lives under
    the Geode home (``<home>/dspy-cache``). It replaces DSPy's process-wide ``dspy.cache``: a
    process that builds runtimes for two homes caches under the last one's.

    Returns:
        The cache folder, resolved.
    """
    target = folder.expanduser().resolve()
    with _cache_lock:
        # Read without triggering DSPy's lazy default (it would open ~/.dspy_cache just to be replaced).
        disk = getattr(dspy.__dict__.get("cache"), "disk_cache", None)
        current = getattr(disk, "directory", None)
        if current is not None and Path(str(current)).resolve() == target:
            return target
        target.mkdir(parents=True, exist_ok=True)
        dspy.configure_cache(disk_cache_dir=str(target))
    return target


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
