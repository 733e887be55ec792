"""``temporal``: drop the video tokens that repeat the previous frame.

Written from the idea of Efficient Video Sampling (EVS), the temporal token pruning vLLM applies to
video inputs, not from its code: a token that is nearly the same as the token at the same
position in the previous frame adds little, so it can go; the first frame has no predecessor and
is kept whole.

Per video with frames ``x_0 .. x_{T-1}`` (each (h*w, D), projector outputs) and budget ``K``:

1. score ``s_t[p] = 1 - cos(x_t[p], x_{t-1}[p])`` for ``t >= 1``, ``s_0[p] = +inf``;
2. keep the ``K`` highest scores, ties to the lowest index (so the first frame goes first, in raster
   order, when ``K`` is below its size).

Where it differs: EVS keeps a fixed share of each video by a dissimilarity threshold learnt from
the retention ratio; here the session's budget (``budget`` or ``ratio``, per video) sets ``K``
directly, as for every other method. The selection is global over the video (a quiet frame
gives its tokens to a busy one). A still image has no previous frame: there the method keeps
``K`` evenly spaced tokens in raster order (a stride, not a ranking).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from vlmprune.core.method import Method
from vlmprune.core.ops import top_sorted
from vlmprune.core.options import check_count
from vlmprune.core.registry import register
from vlmprune.core.types import ImageTokens, Kept


def frame_change(features: torch.Tensor, frames: int) -> torch.Tensor:
    """(T*P, D) tokens of ``frames`` equal frames in frame-major order -> (T*P,) float32 score:
    ``1 - cos`` to the same position of the previous frame, ``+inf`` on the first frame."""
    n = features.shape[0]
    if frames < 1 or n % frames:
        raise ValueError(f"`frames` must divide the {n} tokens, got {frames}")
    x = F.normalize(features.float(), dim=-1, eps=1e-6).view(frames, n // frames, -1)  # (T, P, D)
    change = 1.0 - (x[1:] * x[:-1]).sum(-1)  # (T-1, P, D) -> (T-1, P)
    first = torch.full((1, n // frames), float("inf"), device=features.device)
    return torch.cat([first, change]).reshape(-1)  # (T, P) -> (T*P,)


def select(features: torch.Tensor, frames: int, budget: int) -> torch.Tensor:
    """``(T*P, D)`` video tokens -> sorted ``min(budget, T*P)`` kept indices (see the module)."""
    budget = check_count(budget)
    if frames == 1:  # a still image: a stride
        n = features.shape[0]
        k = min(budget, n)
        return torch.arange(k, device=features.device) * n // max(k, 1)
    return top_sorted(frame_change(features, frames), budget)


@register
@dataclass
class TemporalPrune(Method):
    """Frame-difference pruning of video tokens (the idea of EVS): keep what changed since the
    previous frame, and the first frame. Global over the video; a stride on still images."""

    name: ClassVar[str] = "temporal"

    def select_unit(self, image: ImageTokens) -> Kept:
        regions = image.region_list()
        frames = len(regions) if image.kind == "video" else 1
        if frames > 1 and len({r.indices.numel() for r in regions}) != 1:
            raise ValueError("temporal: the frames of a video must have the same number of tokens")
        return Kept(select(image.features, frames, image.budget))
