"""CDPruner: instruction-conditioned DPP over the visual tokens.

Re-implemented from the paper (Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional
Diversity for Token Pruning in MLLMs", arXiv 2506.10967) and ``methods.md``; no code was copied.

Per image:

1. **Similarity** ``S = F Fᵀ`` with ``F`` the unit-normalised projector outputs (N, D).
2. **Relevance** of each token to the instruction: the mean over the ``M`` text tokens of
   ``cos(x_i, q_j)``, min-max normalised to ``[0, 1]`` (constant relevance, no text, or an empty
   text: ``r = 1`` for every token, which is a plain, unconditional DPP).
3. **Quality** ``q``: ``theta=None`` (default) uses ``q = r``, the kernel of ``methods.md``;
   ``theta`` in ``[0, 1)`` uses the relevance/diversity trade-off of Chen et al. 2018 (the paper
   whose fast greedy MAP CDPruner uses), ``q = exp(alpha * r)``, ``alpha = theta / (2 (1 - theta))``:
   ``theta = 0`` ignores the text, larger ``theta`` weighs relevance more.
4. **Conditional DPP**: kernel ``L = diag(q) S diag(q)``; greedy MAP by incremental Cholesky
   (Chen et al. 2018): ``d² = diag(L)``; pick ``j = argmax d²`` (ties: lowest index);
   ``e = (L[j] - Σ_t c_t[j] c_t) / sqrt(max(d²[j], 1e-8))``; ``d² = max(d² - e², 0)``; repeat.
   Each step adds the token that most increases ``log det L_S``.

Differences and choices:

- The paper scores relevance with CLIP's text tower against CLIP image embeddings. VLM
  checkpoints do not ship that text tower, so here ``q_j`` are the **LLM input embeddings** of
  the instruction's tokens (``ImageTokens.text``) and the visual side is the projector output, both
  in the LLM's input space (``methods.md``).
- When the kernel's rank is exhausted (every remaining ``d²`` below ``1e-5`` times the largest
  initial ``d²``: the rest are, numerically, combinations of the kept tokens), the greedy steps
  stop and the remaining picks go to the highest quality, ties to the lowest index. Without this
  the Cholesky update divides rounding noise by ``1e-4``. It never triggers while ``K`` is at
  most the rank of ``L`` (``K <= D`` for distinct, non-degenerate tokens).
- Naturally global: on a multi-crop image the DPP runs once over all ``N`` tokens of the image
  (every crop together), not per region.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from vlmprune.core.greedy import dpp_factor_steps, dpp_steps
from vlmprune.core.method import Method
from vlmprune.core.ops import RANK_EPS, ranked
from vlmprune.core.options import check_count, number, option
from vlmprune.core.registry import register
from vlmprune.core.types import ImageTokens, Kept


def relevance(features: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
    """(N, D) tokens, (M, D) text embeddings -> (N,) min-max normalised mean cosine (ones if undefined)."""
    n = features.shape[0]
    ones = torch.ones(n, dtype=torch.float32, device=features.device)
    if text is None or text.shape[0] == 0 or n == 0:
        return ones
    if text.dim() != 2 or text.shape[1] != features.shape[1]:
        raise ValueError(f"`text` must be (M, {features.shape[1]}), got shape {tuple(text.shape)}")
    f = F.normalize(features.float(), dim=-1, eps=1e-6)
    t = F.normalize(text.float().to(features.device), dim=-1, eps=1e-6)
    rel = (f @ t.T).mean(dim=1)  # (N, D) @ (D, M) -> (N, M) -> (N,)
    lo, hi = rel.min(), rel.max()
    flat = (hi - lo) <= 1e-6  # no host sync: the test stays on the device
    return torch.where(flat, ones, (rel - lo) / torch.where(flat, ones[0], hi - lo))


def quality(rel: torch.Tensor, theta: float | None = None) -> torch.Tensor:
    """(N,) relevance in [0, 1] -> (N,) DPP quality: ``rel`` (theta None) or ``exp(alpha * rel)``."""
    if theta is None:
        return rel
    alpha = theta / (2.0 * (1.0 - theta))
    return torch.exp(alpha * rel)


def greedy_dpp(features: torch.Tensor, quality: torch.Tensor, budget: int) -> torch.Tensor:
    """Greedy MAP of the DPP with kernel ``diag(quality) cos(features) diag(quality)``: the fast
    path (:func:`vlmprune.core.greedy.dpp_steps` on the (N, N) kernel, a constant five operations
    per step; with more tokens than dimensions, ``D < N``,
    :func:`vlmprune.core.greedy.dpp_factor_steps` on its (N, D) factor; one host sync per call to
    check the pivots; where the kernel's rank runs out before ``budget`` picks, the fill rule in
    tensor operations). The tests compare it with the same selection one Cholesky row per
    step (``tests/dpp_reference.py``).

    Args:
        features: (N, D) token features (normalised here).
        quality: (N,) non-negative per-token quality.
        budget: tokens to pick, ``>= 0``.

    Returns:
        (min(budget, N),) indices in **selection order** (not sorted).
    """
    n = features.shape[0]
    k = min(int(budget), n)
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=features.device)
    f = F.normalize(features.float(), dim=-1, eps=1e-6)  # (N, D)
    q = quality.float().to(features.device)  # (N,)
    diag = q * q * (f * f).sum(dim=1)  # (N,) the exact diag(L): q² (0 for an all-zero token)
    if f.shape[1] < n:  # more tokens than dimensions: the kernel's factor, O(N D) memory
        steps = min(k, f.shape[1])  # the kernel's rank is at most D: later pivots are rounding noise
        picks, pivots = dpp_factor_steps((f * q[:, None]).unsqueeze(0), diag.clone().unsqueeze(0), steps)
    else:
        kernel = (f @ f.T).mul_(q[:, None]).mul_(q[None, :]).unsqueeze(0)  # (N, D) @ (D, N) -> (1, N, N)
        kernel.diagonal(dim1=1, dim2=2).copy_(diag)
        picks, pivots = dpp_steps(kernel, k)  # (1, K), (1, K)
    ok = pivots[0] > RANK_EPS * diag.max()  # (steps,)
    if ok.shape[0] == k and bool(ok.all()):  # the one host sync
        return picks[0]
    return _fill_by_quality(picks[0], ok, q, k)


def _fill_by_quality(picks: torch.Tensor, ok: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """The rank ran out at the first step whose pivot is not ``ok`` (S,), or after the S steps run
    (S < k: the kernel's rank bound): the picks before it
    stand, in order, and the rest go to the highest quality ``q`` (N,), ties to the lowest index.
    Tensor operations only (no host sync): each token gets a key, its step if it was picked in
    time, else the number picked in time plus its rank by quality; the ``k`` smallest keys."""
    n = q.shape[0]
    steps = torch.arange(picks.shape[0], device=q.device, dtype=torch.float32)
    in_time = ok.int().cumprod(0).bool()  # (K,) before the first failed pivot
    keys = torch.full((n,), float("inf"), device=q.device)
    keys.scatter_reduce_(0, picks, torch.where(in_time, steps, float("inf")), "amin")  # (N,)
    chosen = keys < float("inf")
    rank = torch.empty(n, device=q.device).scatter_(0, ranked(q.masked_fill(chosen, float("-inf"))),
                                                    torch.arange(n, device=q.device, dtype=torch.float32))  # fmt: skip
    keys = torch.where(chosen, keys, in_time.sum() + rank)
    return torch.sort(keys, stable=True).indices[:k]


def select(
    features: torch.Tensor,
    text: torch.Tensor | None,
    budget: int,
    theta: float | None = None,
) -> torch.Tensor:
    """CDPruner on one image.

    Args:
        features: (N, D) projector outputs.
        text: (M, D) LLM input embeddings of the instruction, or None (plain DPP).
        budget: tokens to keep, ``>= 0``; ``>= N`` keeps every token.
        theta: None (``q = r``) or the trade-off in ``[0, 1)`` (``q = exp(theta r / (2 (1 - theta)))``).

    Returns:
        (min(budget, N),) sorted unique LongTensor.
    """
    if features.dim() != 2:
        raise ValueError(f"`features` must be (N, D), got shape {tuple(features.shape)}")
    budget = check_count(budget)
    if theta is not None and not 0.0 <= theta < 1.0:
        raise ValueError(f"`theta` must be None or in [0, 1), got {theta}")
    n = features.shape[0]
    if budget >= n:
        return torch.arange(n, device=features.device)
    q = quality(relevance(features, text), theta)
    return torch.sort(greedy_dpp(features, q, budget)).values


@register
@dataclass
class CDPruner(Method):
    """CDPruner (arXiv 2506.10967): DPP over projector outputs conditioned on the instruction.

    ``theta``: None (default, kernel ``diag(r) S diag(r)`` of ``methods.md``) or a relevance/diversity
    trade-off in ``[0, 1)`` (quality ``exp(theta r / (2 (1 - theta)))``). Relevance uses the LLM input
    embeddings of the text instead of CLIP's text tower; without text the DPP is unconditional.
    Global over all of an image's tokens (the crops of a multi-crop image together).
    """

    theta: float | None = option(None, number(0.0, 1.0, open_high=True, optional=True))

    name: ClassVar[str] = "cdpruner"
    needs_text: ClassVar[bool] = True

    def select_unit(self, image: ImageTokens) -> Kept:
        theta = None if self.theta is None else float(self.theta)
        return Kept(indices=select(image.features, image.text, image.budget, theta))
