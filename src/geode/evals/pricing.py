"""Token prices: :class:`Price` per model, :class:`Pricing` (an explicit table first, then litellm's list)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Price", "Pricing"]


@dataclass(frozen=True)
class Price:
    """What a model charges, in US dollars per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Dollars for this many tokens."""
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1_000_000


class Pricing:
    """Turns token counts into dollars: an explicit price table first, then litellm's price list.

    Args:
        prices: Model name → price; wins over litellm.
        free: Model names that cost nothing (the embedded local model).
        use_litellm: Look up ``provider/model`` names in litellm's bundled price list.
    """

    def __init__(
        self,
        prices: Mapping[str, Price] | None = None,
        *,
        free: Iterable[str] = (),
        use_litellm: bool = True,
    ) -> None:
        self.prices = dict(prices or {})
        self.free = frozenset(free)
        self.use_litellm = use_litellm

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Dollars for a model's tokens; ``None`` when its price is unknown."""
        if model in self.free:
            return 0.0
        price = self.prices.get(model)
        if price is not None:
            return price.cost(prompt_tokens, completion_tokens)
        # Only provider-qualified names are litellm models; anything else (a fake, a local engine)
        # has no list price, and importing litellm for it would cost seconds.
        if not self.use_litellm or "/" not in model:
            return None
        try:
            import litellm

            prompt_cost, completion_cost = litellm.cost_per_token(
                model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
        except Exception:  # unknown model or provider: no price, not an error
            return None
        return float(prompt_cost) + float(completion_cost)
