"""``random``: a uniform random subset of each image's visual tokens (seeded, reproducible).

The weakest sensible baseline: any method worth using must beat it at the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmprune.core.method import Method
from vlmprune.core.options import SEED, check_count, option
from vlmprune.core.registry import register
from vlmprune.core.types import ImageTokens, Kept


def select(num_tokens: int, budget: int, seed: int = 0) -> torch.Tensor:
    """Sorted ``min(budget, num_tokens)`` indices drawn uniformly without replacement.

    The draw depends only on ``(num_tokens, budget, seed)``, never on the global RNG state.
    """
    budget = check_count(budget)
    k = min(budget, num_tokens)
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(num_tokens, generator=gen)[:k].sort().values


@register
@dataclass
class RandomPrune(Method):
    """Keep a uniform random subset (seeded): the floor every method must beat.

    ``seed`` fixes the draw; image ``i`` of a call uses ``seed + i`` so the images of a batch do
    not share one pattern."""

    seed: int = option(0, SEED)

    name = "random"

    def select_unit(self, image: ImageTokens) -> Kept:
        kept = select(image.num_tokens, image.budget, self.seed + image.seed)
        return Kept(kept.to(image.features.device))
