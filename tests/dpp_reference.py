"""The greedy DPP one Cholesky row per step: the reference ``cdpruner.greedy_dpp`` is compared with."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlmprune.core.ops import RANK_EPS, ranked


def greedy_dpp_exact(features: torch.Tensor, quality: torch.Tensor, budget: int) -> torch.Tensor:
    """The greedy DPP one Cholesky row per step, with the rank-exhaustion rule of the module
    docstring (used when the kernel's rank runs out before ``budget`` picks)."""
    n = features.shape[0]
    device = features.device
    k = min(int(budget), n)
    f = F.normalize(features.float(), dim=-1, eps=1e-6)  # (N, D)
    q = quality.float().to(device)  # (N,)
    d2 = q * q * (f * f).sum(dim=1)  # (N,) diag(L): q² (0 for an all-zero token)
    floor = RANK_EPS * float(d2.max()) if n else 0.0
    chosen = torch.zeros(n, dtype=torch.bool, device=device)
    picks = torch.empty(k, dtype=torch.long, device=device)
    c = torch.zeros(k, n, dtype=torch.float32, device=device)  # Cholesky rows c_t
    for i in range(k):
        score = d2.masked_fill(chosen, float("-inf"))
        j = int(score.argmax())  # first maximum: lowest index on ties
        if float(score[j]) <= floor:  # rank exhausted: fill by quality
            rest = q.masked_fill(chosen, float("-inf"))
            fill = ranked(rest)[: k - i]
            picks[i:] = fill
            break
        picks[i] = j
        chosen[j] = True
        row = q[j] * q * (f @ f[j])  # (N, D) @ (D,) -> (N,) L[j]
        e = (row - c[:i, j] @ c[:i]) / torch.sqrt(torch.clamp(d2[j], min=1e-8))  # (i,) @ (i, N) -> (N,)
        c[i] = e
        d2 = torch.clamp(d2 - e * e, min=0.0)
    return picks
