"""Request conversion: a canonical lm15 request as chat messages and llama.cpp sampling arguments.

The local model takes text only; whatever it cannot honour (tools, images, logprobs, reasoning) is
refused with ``UnsupportedFeatureError`` naming the feature, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from dspy.lm15 import Config, InvalidRequestError, Request, TextPart, ThinkingPart, UnsupportedFeatureError

PROVIDER: Final = "llama.cpp"

# llama.cpp sampling knobs with no canonical Config field; they arrive as Config.extensions.
_EXTENSION_PARAMS: Final = frozenset({"min_p", "typical_p", "repeat_penalty"})

# create_completion's own defaults differ from create_chat_completion's (16 tokens, temperature 0.8); an
# unset field must behave as llama.cpp's chat API does: no token cap but the context, temperature 0.2.
_CHAT_DEFAULTS: Final[Mapping[str, Any]] = {"temperature": 0.2, "max_tokens": None}


def _text_of(parts: Sequence[Any], where: str) -> str:
    texts: list[str] = []
    for index, part in enumerate(parts):
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, ThinkingPart):
            # Earlier reasoning in the history is not replayed to a model that has no reasoning mode.
            continue
        else:
            raise UnsupportedFeatureError(
                f"the local model takes text only, not {part.type} parts",
                feature=f"{where}.parts[{index}]",
                provider=PROVIDER,
            )
    return "\n".join(texts)


def chat_messages(request: Request) -> list[dict[str, str]]:
    """The request's system prompt and messages as OpenAI-style chat messages (text only).

    Raises:
        UnsupportedFeatureError: Non-text content, tool results, or tools.
    """
    if request.tools:
        raise UnsupportedFeatureError(
            "the local model has no native tool calling; use DSPy's text tool format (dspy.ReAct does)",
            feature="tools",
            provider=PROVIDER,
        )
    messages: list[dict[str, str]] = []
    if request.system is not None:
        system = request.system if isinstance(request.system, str) else _text_of(request.system, "system")
        messages.append({"role": "system", "content": system})
    for index, message in enumerate(request.messages):
        role = message.role
        if role == "tool":
            raise UnsupportedFeatureError(
                "the local model has no native tool calling", feature=f"messages[{index}]", provider=PROVIDER
            )
        content = _text_of(message.parts, f"messages[{index}]")
        messages.append({"role": "system" if role == "developer" else role, "content": content})
    return messages


def sampling_kwargs(config: Config) -> dict[str, Any]:
    """llama-cpp-python ``create_completion`` keyword arguments for a canonical ``Config``.

    Unset fields take the defaults of llama-cpp-python's chat API, so a bare request samples as
    ``create_chat_completion`` would.

    Raises:
        UnsupportedFeatureError: A setting the local model cannot honour (logprobs, reasoning, ...).
    """
    refused = {
        "config.logprobs": config.logprobs is not None,
        "config.reasoning": config.reasoning is not None and config.reasoning.effort != "off",
        "config.tool_choice": config.tool_choice is not None,
        "config.probabilities": config.probabilities is not None,
        "config.service_tier": config.service_tier is not None,
        "config.store": bool(config.store),
    }
    for feature, present in refused.items():
        if present:
            raise UnsupportedFeatureError(
                f"the local model does not support {feature.removeprefix('config.')}",
                feature=feature,
                provider=PROVIDER,
            )
    kwargs: dict[str, Any] = dict(_CHAT_DEFAULTS)
    for name in (
        "temperature",
        "max_tokens",
        "top_p",
        "top_k",
        "seed",
        "frequency_penalty",
        "presence_penalty",
    ):
        value = getattr(config, name)
        if value is not None:
            kwargs[name] = value
    for name, value in (config.extensions or {}).items():
        if name not in _EXTENSION_PARAMS:
            raise UnsupportedFeatureError(
                f"unknown setting {name!r} for the local model (known: {', '.join(sorted(_EXTENSION_PARAMS))})",
                feature=f"config.extensions.{name}",
                provider=PROVIDER,
            )
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequestError(f"{name} must be a number, got {value!r}", provider=PROVIDER)
        kwargs[name] = float(value)
    return kwargs
