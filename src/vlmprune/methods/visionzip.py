"""VisionZip: dominant tokens by CLS attention plus a few merged contextual tokens.

Re-implemented from the paper (Yang et al., "VisionZip: Longer is Better but Not Necessary in
Vision Language Models", arXiv 2412.04467) and ``methods.md``; no code was copied.

Per image (or per region, see :class:`VisionZip`), with ``K`` kept tokens split into ``K_d``
dominant and ``K_c = K - K_d`` contextual ones:

1. **Dominant.** The ``K_d`` tokens with the highest saliency (CLS attention; the session gives
   the head *mean*, which ranks exactly like the paper's head *sum*). Ties: lowest index.
2. **Contextual.** The ``R = N - K_d`` remaining tokens, in raster order, provide ``K_c``
   evenly strided targets, at positions ``floor(i * R / K_c)`` for ``i = 0..K_c-1`` of that
   list. Every other remaining token is assigned to its most similar target by the cosine of the
   head-averaged ``keys`` of the saliency layer (ties: the lowest target). Each target becomes one
   context token, placed at the target's position.
3. **Merging** (``merge``): ``"mean"`` (default) makes the context token the plain average of its
   group, the target together with the tokens assigned to it,
   ``(x_t + sum_{i->t} x_i) / (1 + n_t)``: the paper's "merge by averaging", and it keeps the
   features at the scale the LLM expects. ``"add"`` is the literal formula of ``methods.md``,
   ``x_t + mean_{i->t} x_i`` (just ``x_t`` for a target nothing was assigned to).

Differences from the paper:

- The paper merges hidden states of the vision tower (before the projector) and projects the
  context tokens afterwards; here the merge acts on the projector outputs (``features``), because a
  pre-LLM method in this library returns tokens in the LLM's input space. The projector is an MLP,
  so the two are not identical.
- When ``keys`` is None (towers without a CLS token record no keys), the assignment uses the
  cosine of the projector outputs ``features`` instead.
- Strided targets use ``floor(i * R / K_c)`` (spread over the whole remainder), not a fixed step
  ``R // K_c`` that would leave the tail of the image without targets when ``R`` is not a multiple
  of ``K_c``; the two agree when it is.
- Default split ``K_c = round_half_up(K * 5 / 32)``: exactly the paper's 54:10 (64), 108:20 (128),
  162:30 (192), and the same ~84:16 proportion for every other budget.
- Multi-crop images (several ``regions``): the budget (and ``dominant`` if given) is shared across
  the regions in proportion to their sizes, and each region is zipped on its own, like the paper,
  which runs VisionZip per crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from vlmprune.core.method import Method
from vlmprune.core.ops import ranked
from vlmprune.core.options import check_count, choice, integer, option
from vlmprune.core.registry import register
from vlmprune.core.types import ImageTokens, Kept

CONTEXTUAL_FRACTION = 5 / 32  # 10/64 == 20/128 == 30/192
MERGE_MODES = ("mean", "add")


def default_split(budget: int) -> tuple[int, int]:
    """``(dominant, contextual)`` for ``budget`` kept tokens: 54:10 at 64, 108:20 at 128, 162:30 at 192."""
    contextual = math.floor(budget * CONTEXTUAL_FRACTION + 0.5)
    return budget - contextual, contextual


def select(
    saliency: torch.Tensor,
    keys: torch.Tensor | None,
    features: torch.Tensor,
    budget: int,
    dominant: int | None = None,
    merge: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VisionZip on one image.

    Args:
        saliency: (N,) CLS attention per token (any float dtype).
        keys: (N, Dk) head-averaged keys of the saliency layer, or None (use ``features``).
        features: (N, D) projector outputs.
        budget: tokens to keep, ``>= 0``; ``>= N`` keeps every token unchanged.
        dominant: dominant tokens (clamped to ``[0, K]``); None: :func:`default_split`.
        merge: ``"mean"`` (group average) or ``"add"`` (target + mean of the assigned).

    Returns:
        ``kept`` (K,) sorted unique indices; ``merged`` (K, D) the feature of each kept token in
        ``kept`` order, in ``features.dtype`` (dominant tokens unchanged, context tokens merged);
        ``assignment`` (N,) the slot in ``0..K-1`` each token went to (-1: dropped, which happens
        only when there are no contextual tokens).
    """
    if features.dim() != 2:
        raise ValueError(f"`features` must be (N, D), got shape {tuple(features.shape)}")
    n = features.shape[0]
    if saliency.shape != (n,):
        raise ValueError(f"`saliency` must be ({n},), got shape {tuple(saliency.shape)}")
    if keys is not None and (keys.dim() != 2 or keys.shape[0] != n):
        raise ValueError(f"`keys` must be ({n}, Dk), got shape {tuple(keys.shape)}")
    budget = check_count(budget)
    if merge not in MERGE_MODES:
        raise ValueError(f"`merge` must be one of {MERGE_MODES}, got {merge!r}")
    device = features.device
    k = min(int(budget), n)
    if k >= n:
        everything = torch.arange(n, device=device)
        return everything, features.clone(), everything.clone()

    if dominant is None:
        k_dom, k_ctx = default_split(k)
    else:
        k_dom = min(max(int(dominant), 0), k)
        k_ctx = k - k_dom

    order = ranked(saliency)  # (N,) all tokens, most salient first
    dom = order[:k_dom]
    rest = torch.sort(order[k_dom:]).values  # (R,) raster order, R = N - K_d > K_c
    feats = features.float()

    if k_ctx == 0:
        kept = torch.sort(dom).values
        assignment = torch.full((n,), -1, dtype=torch.long, device=device)
        assignment[kept] = torch.arange(k, device=device)
        return kept, features[kept].clone(), assignment

    context, targets, others, group = _contextual(rest, k_ctx, keys, features, feats, merge)
    kept = torch.sort(torch.cat([dom, targets])).values  # (K,)
    slot = torch.full((n,), -1, dtype=torch.long, device=device)
    slot[kept] = torch.arange(k, device=device)
    merged = feats[kept].clone()  # (K, D)
    merged[slot[targets]] = context
    assignment = slot.clone()
    assignment[others] = slot[targets[group]]
    return kept, merged.to(features.dtype), assignment


def _contextual(rest, k_ctx: int, keys, features, feats, merge: str):
    """The ``k_ctx`` context tokens of the ``rest`` (R,) non-dominant tokens (raster order):
    ``(context (K_c, D), targets (K_c,), others (R - K_c,), group (R - K_c,))``, the group being
    each other token's target slot."""
    device = rest.device
    r = rest.numel()
    target_pos = torch.div(torch.arange(k_ctx, device=device) * r, k_ctx, rounding_mode="floor")  # (K_c,)
    is_target = torch.zeros(r, dtype=torch.bool, device=device)
    is_target[target_pos] = True
    targets = rest[target_pos]  # (K_c,)
    others = rest[~is_target]  # (R - K_c,)
    metric = F.normalize((keys if keys is not None else features).float(), dim=-1, eps=1e-6)
    sim = metric[others] @ metric[targets].T  # (R - K_c, Dk) @ (Dk, K_c) -> (R - K_c, K_c)
    group = sim.argmax(dim=1)  # (R - K_c,) first maximum: lowest target on ties
    sums = torch.zeros(k_ctx, feats.shape[1], dtype=feats.dtype, device=device)
    sums.index_add_(0, group, feats[others])  # (K_c, D) sum of each target's assigned tokens
    counts = torch.bincount(group, minlength=k_ctx).to(feats.dtype).unsqueeze(1)  # (K_c,) -> (K_c, 1)
    if merge == "mean":
        context = (feats[targets] + sums) / (1.0 + counts)
    else:
        context = feats[targets] + sums / counts.clamp(min=1.0)
    return context, targets, others, group


@register
@dataclass
class VisionZip(Method):
    """VisionZip (arXiv 2412.04467): dominant tokens by CLS attention + merged contextual tokens.

    ``dominant``: dominant tokens per image (clamped to the image's budget; shared across the
    regions of a multi-crop image like the budget). None (default): the paper's 54:10 / 108:20 / 162:30 split, ~84:16 at
    any budget. ``merge``: ``"mean"`` (default, group average) or ``"add"`` (``x_t`` + mean of the
    assigned tokens). See the module docstring for the algorithm and the differences from the paper.
    """

    dominant: int | None = option(None, integer(0, optional=True))
    merge: str = option("mean", choice(*MERGE_MODES))

    name: ClassVar[str] = "visionzip"
    needs_saliency: ClassVar[bool] = True
    needs_keys: ClassVar[bool] = True
    merges: ClassVar[bool] = True
    per_region: ClassVar[bool] = True

    def select_unit(self, unit: ImageTokens) -> Kept:
        dominant = None
        if self.dominant is not None:  # shared across an image's regions like its budget
            dominant = min(unit.share(min(self.dominant, unit.image_budget)), unit.budget)
        n = unit.num_tokens
        if unit.budget >= n:
            everything = torch.arange(n, device=unit.features.device)
            return Kept(indices=everything, features=None, assignment=everything.clone())
        if unit.saliency is None:
            raise ValueError("VisionZip needs `saliency` (CLS attention) for every image")
        kept, merged, assignment = select(
            unit.saliency, unit.keys, unit.features, unit.budget, dominant=dominant, merge=self.merge
        )
        return Kept(indices=kept, features=merged, assignment=assignment)
