"""DART: inside the LLM, keep the image tokens least duplicated by a few pivot tokens.

Re-implemented from the paper (Wen et al., "Stop Looking for Important Tokens in Multimodal Language
Models: Duplication Matters More", arXiv 2502.11494) and ``methods.md``; no code was copied.

At the input of decoder layer ``layer`` (default 2), per image with ``N`` image tokens still present
and ``K`` to keep:

1. **Pivots**: the ``pivots_image`` image tokens and the ``pivots_text`` text tokens (the row's
   non-image tokens) with the largest L1 norm of their keys at layer ``layer - 1``
   (ties: lowest index). Image pivots are kept. At most ``K`` image pivots are used.
2. **Per pivot**, in order (image pivots by rank, then text pivots by rank), keep the not yet kept
   image tokens least similar to it, by the cosine of the hidden states entering the layer (the
   text pivots' own hidden states for text pivots): ``K // P`` per pivot with ``P`` pivots in all,
   an image pivot counting as one of its own ``K // P``. Ties: lowest index.
3. **Shortfall** (``K - P * (K // P)`` tokens, or more if ``K < P``): the remaining tokens with the
   lowest similarity to their most similar pivot, ``max_p cos(x, p)``; ties lowest index.

The result is always exactly ``K`` unique sorted indices.

Choices the paper leaves open, made here: the per-pivot selections are made one after another
without duplicates (the paper's union of per-pivot picks can hold fewer than ``K`` tokens), and the
shortfall rule above. Without any pivot (``pivots_image = 0`` and no text) the ``K`` image tokens
with the largest key norm are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from vlmprune.core.method import Method
from vlmprune.core.ops import ranked
from vlmprune.core.options import check_count, integer, option
from vlmprune.core.registry import register
from vlmprune.core.types import LayerTokens


def select(
    hidden: torch.Tensor,
    keys: torch.Tensor,
    text_hidden: torch.Tensor | None,
    text_keys: torch.Tensor | None,
    budget: int,
    pivots_image: int = 4,
    pivots_text: int = 4,
) -> torch.Tensor:
    """DART on one image's tokens inside the LLM.

    Args:
        hidden: (N, D) hidden states of the image tokens entering the layer.
        keys: (N, Dk) keys of the previous layer for the image tokens.
        text_hidden: (M, D) hidden states of the text tokens, or None.
        text_keys: (M, Dk) keys of the text tokens, or None.
        budget: image tokens to keep, ``>= 0``; ``>= N`` keeps all.
        pivots_image, pivots_text: pivot counts, ``>= 0``.

    Returns:
        (min(budget, N),) sorted unique LongTensor.
    """
    if hidden.dim() != 2:
        raise ValueError(f"`hidden` must be (N, D), got shape {tuple(hidden.shape)}")
    n = hidden.shape[0]
    if keys.dim() != 2 or keys.shape[0] != n:
        raise ValueError(f"`keys` must be ({n}, Dk), got shape {tuple(keys.shape)}")
    budget = check_count(budget)
    if pivots_image < 0 or pivots_text < 0:
        raise ValueError(f"pivot counts must be >= 0, got {pivots_image}, {pivots_text}")
    device = hidden.device
    k = min(int(budget), n)
    if k >= n:
        return torch.arange(n, device=device)

    key_norm = keys.float().abs().sum(dim=1)  # (N, Dk) -> (N,) L1 norm
    n_img = min(pivots_image, k)
    img_piv = ranked(key_norm, descending=True)[:n_img]
    h = F.normalize(hidden.float(), dim=-1, eps=1e-6)  # (N, D)
    pivots = [h[img_piv]]  # (n_img, D)
    if text_hidden is not None and text_keys is not None and text_hidden.shape[0] > 0 and pivots_text > 0:
        if text_hidden.shape[0] != text_keys.shape[0]:
            raise ValueError(
                f"`text_hidden` {tuple(text_hidden.shape)} and `text_keys` {tuple(text_keys.shape)} disagree"
            )
        text_norm = text_keys.float().abs().sum(dim=1)  # (M, Dk) -> (M,)
        txt_piv = ranked(text_norm, descending=True)[:pivots_text]
        pivots.append(F.normalize(text_hidden.float().to(device)[txt_piv], dim=-1, eps=1e-6))
    p = torch.cat(pivots)  # (P, D)
    n_piv = p.shape[0]
    if n_piv == 0:
        return torch.sort(ranked(key_norm, descending=True)[:k]).values

    sim = h @ p.T  # (N, D) @ (D, P) -> (N, P) cosine
    kept = torch.zeros(n, dtype=torch.bool, device=device)
    kept[img_piv] = True
    count = n_img
    quota = k // n_piv
    for j in range(n_piv):
        take = min(quota - 1 if j < n_img else quota, k - count)
        if take <= 0:
            continue
        free = sim[:, j].masked_fill(kept, float("inf"))  # (N,)
        pick = ranked(free, descending=False)[:take]
        kept[pick] = True
        count += take
    if count < k:
        closest = sim.max(dim=1).values.masked_fill(kept, float("inf"))  # (N, P) -> (N,)
        kept[ranked(closest, descending=False)[: k - count]] = True
    return torch.nonzero(kept).squeeze(1)  # (K,) ascending


@register
@dataclass
class DART(Method):
    """DART (arXiv 2502.11494): in-LLM duplicate-aware pruning around key-norm pivots.

    ``layer`` (default 2): decoder layer at whose input the image tokens are pruned (keys come from
    ``layer - 1``). ``pivots_image`` / ``pivots_text`` (default 4 / 4): pivot counts.
    """

    layer: int = option(2, integer(1))
    pivots_image: int = option(4, integer(0))
    pivots_text: int = option(4, integer(0))

    name: ClassVar[str] = "dart"
    pre_llm: ClassVar[bool] = False
    in_llm_option: ClassVar[str | None] = "layer"

    def check(self) -> None:
        super().check()
        if self.pivots_image + self.pivots_text < 1:
            raise ValueError("`pivots_image` + `pivots_text` must be >= 1, got 0 pivots")

    @property
    def llm_layer(self) -> int:
        return self.layer

    def select_layer(self, images: list[LayerTokens]) -> list[torch.Tensor]:
        return [
            select(
                image.hidden,
                image.keys,
                image.text_hidden,
                image.text_keys,
                image.budget,
                pivots_image=self.pivots_image,
                pivots_text=self.pivots_text,
            )
            for image in images
        ]
