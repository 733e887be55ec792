"""``fastv``: FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024,
arXiv 2403.06764).

In-LLM: after decoder layer ``K - 1`` (default ``layer=2``, the paper's K=2), keep each image's
top tokens by the attention the last prompt token pays them, averaged over heads; the others are
dropped from layer K on, with their original positions kept for the survivors.

Differences from the paper's code: the attention row is recomputed from the layer's own
projections (no eager attention, works under SDPA/FlashAttention); the budget is a token count or
ratio per image (the paper's R is a fraction of all image tokens); ties go to the lowest index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmprune.core.method import Method
from vlmprune.core.ops import top_sorted
from vlmprune.core.options import check_count, integer, option
from vlmprune.core.registry import register
from vlmprune.core.types import LayerTokens


def select(attention: torch.Tensor, budget: int) -> torch.Tensor:
    """Sorted indices of the ``min(budget, N)`` largest entries of ``attention`` (N,), the last
    prompt token's attention to an image's tokens (ties to the lowest index)."""
    return top_sorted(attention, check_count(budget))


@register
@dataclass
class FastV(Method):
    """FastV (arXiv 2403.06764): keep the image tokens the last prompt token attends to most, from decoder layer 2 on.

    ``layer`` (default 2) is the decoder layer at whose input the tokens are dropped (see the
    module docstring)."""

    layer: int = option(2, integer(1))

    name = "fastv"
    pre_llm = False
    in_llm_option = "layer"

    @property
    def llm_layer(self) -> int:
        return self.layer

    def select_layer(self, images: list[LayerTokens]) -> list[torch.Tensor]:
        return [select(t.attention, t.budget) for t in images]  # attention (N,): mean over heads
