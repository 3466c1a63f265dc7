"""Low-rank adapters (LoRA) on a torch model's linear layers, and merging them back into the weights.

A few dozen lines of torch instead of a dependency: the fine-tune only needs adapters on ``nn.Linear``
layers, trained, then folded into the base weights (``W + B @ A * alpha / r``) before the model is
written back as GGUF, where llama.cpp knows nothing of adapters.

Why LoRA at all: a full fine-tune of the 135M embedded model on the helpdesk's few dozen questions
memorised them (held-out accuracy fell from 52% to 30-43%). A rank-8 adapter changes far fewer degrees of
freedom, and ``B`` starts at zero, so training starts exactly at the base model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["DEFAULT_TARGETS", "LoRALinear", "add_lora", "lora_parameters", "merge_lora", "merged_weights"]

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Linear layers of a llama block that get adapters by default (attention and MLP)."""


class LoRALinear(nn.Module):
    """``base(x) + dropout(x) @ A.T @ B.T * (alpha / rank)`` with ``base`` frozen.

    Args:
        base: The linear layer to adapt (its weights are not trained).
        rank: Rank of the update.
        alpha: Scale numerator; the update is multiplied by ``alpha / rank``.
        dropout: Dropout on the adapter's input (regularisation on small data).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.base = base
        self.rank = rank
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        # As in the LoRA paper: A random, B zero, so the adapted layer starts equal to the base layer.
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base layer's output plus the low-rank update."""
        return self.base(x) + (self.dropout(x) @ self.lora_a.T @ self.lora_b.T) * self.scale

    def delta(self) -> torch.Tensor:
        """The update to the base weight, ``B @ A * scale`` (shape of ``base.weight``)."""
        return (self.lora_b @ self.lora_a) * self.scale


def add_lora(
    model: nn.Module,
    *,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.05,
    targets: Iterable[str] = DEFAULT_TARGETS,
) -> list[str]:
    """Freeze ``model`` and wrap its linear layers named in ``targets`` (last name part) with adapters.

    Returns:
        The qualified names of the wrapped layers.

    Raises:
        ValueError: No layer matched ``targets``.
    """
    wanted = set(targets)
    for param in model.parameters():
        param.requires_grad_(False)
    wrapped: list[str] = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in wanted and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, rank, alpha, dropout))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    if not wrapped:
        raise ValueError(f"no linear layer named {sorted(wanted)} in {type(model).__name__}")
    return wrapped


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter parameters of a model prepared by :func:`add_lora`."""
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_a, m.lora_b)]


@torch.no_grad()
def merge_lora(model: nn.Module) -> dict[str, torch.Tensor]:
    """Fold every adapter into its base weight, unwrap the layers, and return the changed weights.

    Returns:
        The merged weights by parameter name (``model.layers.0.self_attn.q_proj.weight``), i.e. the
        tensors that differ from the base model; the model is a plain model again.
    """
    changed: dict[str, torch.Tensor] = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                child.base.weight += child.delta()
                setattr(module, child_name, child.base)
                qualified = f"{name}.{child_name}" if name else child_name
                changed[f"{qualified}.weight"] = child.base.weight.detach().clone()
    return changed


@torch.no_grad()
def merged_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights :func:`merge_lora` would produce, without changing ``model`` (training goes on).

    Returns:
        Each adapted layer's ``base.weight + B @ A * scale`` by parameter name, as :func:`merge_lora`.
    """
    weights: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            weights[f"{name}.weight"] = module.base.weight + module.delta()
    return weights
