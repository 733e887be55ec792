"""DivPrune: keep the most diverse visual tokens (greedy max-min diversity).

Re-implemented from the paper only (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning
for Large Multimodal Models", CVPR 2025, arXiv 2503.02175) and ``methods.md``. The authors' code
is under a non-commercial license and was not read.

The paper casts pruning as the Max-Min Diversity Problem (keep the subset whose closest pair is
as far apart as possible) and solves it greedily on the distance ``d(i, j) = 1 - cos(x_i, x_j)``
of the projector outputs:

1. the first token is the one farthest from its nearest neighbour,
   ``argmax_i min_{j != i} d(i, j)``;
2. then, repeatedly, the token farthest from the selected set,
   ``argmax_{c not in S} min_{s in S} d(c, s)``,

until ``K`` tokens are kept. Ties go to the lowest index at every step. The computation is in
float32 whatever the input dtype. Up to 4096 tokens the ``N x N`` distances are built once and each
greedy step is three tensor operations (:func:`vlmprune.core.greedy.max_min_steps`: no host sync,
a constant launch count per step on a GPU); above that, nearest neighbours in row blocks and one
distance row per step keep the memory at ``O(N * D)``.

DivPrune is naturally global: on a multi-crop image it runs once over all ``N`` content tokens
of the image (every crop together), not per region; on a merged-patch tower over the merged tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from vlmprune.core.greedy import max_min_steps
from vlmprune.core.method import Method
from vlmprune.core.options import check_count
from vlmprune.core.registry import register
from vlmprune.core.types import ImageTokens, Kept

_BLOCK = 1024  # rows per block of the nearest-neighbour pass
DENSE_MAX = 4096  # up to this many tokens the N x N distances are built once (64 MiB in float32)


def _nearest_neighbour_distance(f: torch.Tensor) -> torch.Tensor:
    """(B, N, D) unit rows -> (B, N) distance ``1 - cos`` of each row to its nearest other row."""
    b, n, _ = f.shape
    out = torch.empty(b, n, dtype=f.dtype, device=f.device)
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        dist = 1.0 - f[:, start:stop] @ f.transpose(1, 2)  # (B, n_blk, D) @ (B, D, N) -> (B, n_blk, N)
        rows = torch.arange(start, stop, device=f.device)
        dist[:, rows - start, rows] = float("inf")  # exclude the token itself
        out[:, start:stop] = dist.min(dim=2).values
    return out


def select_batched(features: torch.Tensor, budget: int) -> torch.Tensor:
    """Greedy max-min diversity for a batch of images with the same token count.

    Args:
        features: (B, N, D) projector outputs (any float dtype).
        budget: tokens kept per image, ``>= 0``; ``>= N`` keeps every token.

    Returns:
        (B, min(budget, N)) LongTensor, each row sorted ascending.
    """
    if features.dim() != 3:
        raise ValueError(f"`features` must be (B, N, D), got shape {tuple(features.shape)}")
    budget = check_count(budget)
    b, n, _ = features.shape
    device = features.device
    k = min(int(budget), n)
    if k >= n:
        return torch.arange(n, device=device).expand(b, n).clone()
    if k == 0:
        return torch.empty(b, 0, dtype=torch.long, device=device)

    f = F.normalize(features.float(), dim=-1, eps=1e-6)  # (B, N, D) unit rows (zero rows stay 0)
    if n <= DENSE_MAX:
        dist = torch.baddbmm(
            torch.ones(1, device=device), f, f.transpose(1, 2), alpha=-1.0
        )  # (B, N, N) 1 - cos
        diag = dist.diagonal(dim1=1, dim2=2)
        diag.fill_(float("inf"))
        first = dist.amin(dim=2).argmax(dim=1)  # (B,) farthest from its nearest neighbour
        diag.fill_(float("-inf"))  # a picked token's running minimum becomes -inf
        return torch.sort(max_min_steps(dist, first, k), dim=1).values
    return torch.sort(_rowwise(f, k), dim=1).values


def _rowwise(f: torch.Tensor, k: int) -> torch.Tensor:
    """The same greedy in O(N D) memory for large N: one distance row per step."""
    b, n, _ = f.shape
    device = f.device
    batch = torch.arange(b, device=device)
    picks = torch.empty(b, k, dtype=torch.long, device=device)
    chosen = torch.zeros(b, n, dtype=torch.bool, device=device)
    pick = _nearest_neighbour_distance(f).argmax(dim=1)  # (B,) first maximum: lowest index on ties
    min_dist = torch.full((b, n), float("inf"), device=device)
    for step in range(k):
        if step > 0:
            score = min_dist.masked_fill(chosen, float("-inf"))  # (B, N)
            pick = score.argmax(dim=1)  # (B,)
        picks[:, step] = pick
        chosen[batch, pick] = True
        row = 1.0 - (f @ f[batch, pick].unsqueeze(2)).squeeze(2)  # (B, N, D) @ (B, D, 1) -> (B, N)
        min_dist = torch.minimum(min_dist, row)
    return picks


def select(features: torch.Tensor, budget: int) -> torch.Tensor:
    """DivPrune on one image ``(N, D) -> (K,)`` or a batch ``(B, N, D) -> (B, K)``: sorted kept indices."""
    if features.dim() == 2:
        return select_batched(features.unsqueeze(0), budget)[0]  # (N, D) -> (1, N, D) -> (K,)
    return select_batched(features, budget)


@register
@dataclass
class DivPrune(Method):
    """DivPrune (arXiv 2503.02175): greedy max-min diversity on ``1 - cos`` of the projector outputs.

    Global over all of an image's tokens (crops are not treated separately). Images of
    the same size and budget in one call are selected as one batch. No extra parameters.
    """

    name: ClassVar[str] = "divprune"

    def select_unit(self, image: ImageTokens) -> Kept:
        return Kept(indices=select(image.features, image.budget))

    def batch_key(self, image: ImageTokens) -> tuple:
        return (*super().batch_key(image), image.budget)  # one budget per batch

    def select_units(self, images: list[ImageTokens]) -> list[Kept]:
        stacked = torch.stack([image.features for image in images])  # B x (N, D) -> (B, N, D)
        kept = select_batched(stacked, images[0].budget)  # (B, K)
        return [Kept(indices=row) for row in kept]
