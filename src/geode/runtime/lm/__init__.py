"""LM backends: the embedded llama.cpp model and any litellm model, chosen by settings."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dspy
from dspy.clients.cache import Cache

from geode.runtime.settings import LMSettings

__all__ = [
    "CACHE_NAMESPACE_SETTING",
    "NamespacedCache",
    "build_adapter",
    "build_lm",
    "cache_namespace_values",
    "is_local",
    "namespace_response_cache",
    "response_cache_namespace",
    "use_response_cache",
]

_cache_lock = threading.Lock()

CACHE_NAMESPACE_SETTING = "geode_cache_namespace"
"""The DSPy setting (``dspy.context(geode_cache_namespace=...)``) naming whose response cache a call uses."""


class NamespacedCache(Cache):
    """DSPy's response cache, with the entries of each namespace apart from every other's.

    DSPy keys a cached response by the request (model, messages, settings) and deliberately leaves
    out the credentials, so two callers sending the same request share one answer. This cache mixes
    the DSPy setting :data:`CACHE_NAMESPACE_SETTING`, read where the LM call runs, into the key:
    calls under one namespace hit each other's entries, calls under another never do. The namespace
    only changes the key; nothing is added to the request the provider receives. Without a namespace
    the key is DSPy's own, so entries written by the CLI, evaluations and compiles are unchanged.
    The setting travels with ``dspy.context`` wherever the LM setting does (DSPy's threads,
    ``asyncify``, streaming).
    """

    def cache_key(self, request: dict[str, Any], ignored_args_for_cache_key: list[str] | None = None) -> str:
        """DSPy's key for ``request``, with the current namespace (if any) mixed in."""
        namespace = dspy.settings.get(CACHE_NAMESPACE_SETTING)
        if namespace:
            request = {**request, "_geode_cache_namespace": str(namespace)}
        return super().cache_key(request, ignored_args_for_cache_key)

    @classmethod
    def adopt(cls, cache: Cache) -> NamespacedCache:
        """A namespaced view of ``cache``: the same memory and disk storage, keyed per namespace."""
        adopted = cls.__new__(cls)
        adopted.__dict__.update(cache.__dict__)
        return adopted


def namespace_response_cache() -> NamespacedCache:
    """Make DSPy's process-wide response cache (``dspy.cache``) keep namespaces apart.

    Idempotent. A plain DSPy cache (one set by ``dspy.configure_cache``, or DSPy's default, built here
    if it was not yet) is replaced by a :class:`NamespacedCache` over the same storage.
    """
    with _cache_lock:
        current = getattr(dspy, "cache")  # noqa: B009 - DSPy resolves it lazily; pyright does not know it
        if isinstance(current, NamespacedCache):
            return current
        adopted = NamespacedCache.adopt(current)
        setattr(dspy, "cache", adopted)  # noqa: B010
        return adopted


@contextmanager
def response_cache_namespace(namespace: str | None, *, ensure: bool = True) -> Iterator[None]:
    """Run the block's LM calls under their own response-cache namespace.

    ``geode serve`` runs each request under its caller's (the short hash of its API key), so one key's
    cached answers never answer another key. Embedding applications that serve several tenants from
    one process can do the same around :meth:`geode.Runtime.run`.

    Args:
        namespace: The namespace; ``None`` runs the block in the shared (un-namespaced) cache.
        ensure: Make ``dspy.cache`` a :class:`NamespacedCache` first (see
            :func:`namespace_response_cache`); pass ``False`` when no LM in the block caches, so DSPy's
            default cache folder is not opened for nothing.
    """
    if namespace is None:
        yield
        return
    with dspy.context(**cache_namespace_values(namespace, ensure=ensure)):
        yield


def cache_namespace_values(namespace: str, *, ensure: bool = True) -> dict[str, str]:
    """The DSPy settings :func:`response_cache_namespace` enters, for a caller entering them with others.

    Args:
        namespace: The namespace.
        ensure: Make ``dspy.cache`` a :class:`NamespacedCache` first, as :func:`response_cache_namespace` does.
    """
    if ensure and not isinstance(dspy.__dict__.get("cache"), NamespacedCache):
        namespace_response_cache()
    return {CACHE_NAMESPACE_SETTING: namespace}


def use_response_cache(folder: Path) -> Path:
    """Point DSPy's response cache (memory and disk) at ``folder``; a no-op when it already is.

    DSPy's default disk cache is ``~/.dspy_cache``, shared by every project and every Geode home
    on the machine; a response cached by one home's runs would then answer
    another's. The runtime calls this when it builds an LM from settings, so the cache lives under
    the Geode home (``<home>/dspy-cache``). It replaces DSPy's process-wide ``dspy.cache``: a
    process that builds runtimes for two homes caches under the last one's. The cache it installs is
    a :class:`NamespacedCache` (see :func:`response_cache_namespace`).

    Returns:
        The cache folder, resolved.
    """
    target = folder.expanduser().resolve()
    with _cache_lock:
        # Read without triggering DSPy's lazy default (it would open ~/.dspy_cache just to be replaced).
        cache = dspy.__dict__.get("cache")
        current = getattr(getattr(cache, "disk_cache", None), "directory", None)
        if isinstance(cache, Cache) and current is not None and Path(str(current)).resolve() == target:
            if not isinstance(cache, NamespacedCache):
                setattr(dspy, "cache", NamespacedCache.adopt(cache))  # noqa: B010
            return target
        target.mkdir(parents=True, exist_ok=True)
        dspy.configure_cache(disk_cache_dir=str(target))
        setattr(dspy, "cache", NamespacedCache.adopt(getattr(dspy, "cache")))  # noqa: B009, B010
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
