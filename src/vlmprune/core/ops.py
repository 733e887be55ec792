"""Deterministic tensor operations shared by the methods.

Every ranking in the library goes through :func:`ranked`: a stable sort, so equal scores keep
their index order (ties go to the lowest index), and NaN scores rank last whichever way.
"""

from __future__ import annotations

import torch

from vlmprune.core.options import check_count

#: a greedy DPP's pivot (squared distance) at or below this, relative to the kernel's largest
#: diagonal entry, counts as 0: float32 rounding noise once the kernel's rank is spent
RANK_EPS = 1e-5


def ranked(scores: torch.Tensor, descending: bool = True) -> torch.Tensor:
    """(N,) -> (N,) indices ordering ``scores`` (largest first by default), ties to the lowest
    index, NaN last. Computed in float32 whatever the input dtype."""
    fill = float("-inf") if descending else float("inf")
    s = torch.nan_to_num(scores.float(), nan=fill)
    return torch.sort(s, descending=descending, stable=True).indices


def top(scores: torch.Tensor, k: int, largest: bool = True) -> torch.Tensor:
    """Indices of the ``k`` largest (or smallest) ``scores`` (N,), in rank order (ties: lowest index)."""
    return ranked(scores, descending=largest)[:k]


def top_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``min(k, N)`` largest ``scores`` (N,) as sorted indices: the kept set of a scorer."""
    k = check_count(k)
    return top(scores, k).sort().values


def minmax(v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(N,) -> (N,) float32 ``(v - min) / (max - min + eps)``."""
    v = v.float()
    return (v - v.min()) / (v.max() - v.min() + eps)
