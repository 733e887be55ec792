"""``pool``: spatial average pooling of the token grid to about K tokens.

Each region's (h, w) grid (every crop or frame is a region) is cut into ``gh x gw`` near-equal cells, ``gh * gw`` = the region's
share of the budget chosen to keep cells as square as possible; each cell becomes one token: the
mean of its members' features, placed at the member nearest the cell centre. A strong baseline on
some benchmarks (coverage without any signal). Not from a single paper: the plain pooling baseline
used across the token-pruning literature (e.g. as reported in VisionZip and PromPrune tables).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from vlmprune.core.method import Method
from vlmprune.core.options import check_count
from vlmprune.core.registry import register
from vlmprune.core.types import ImageTokens, Kept


def cell_grid(h: int, w: int, k: int) -> tuple[int, int]:
    """(gh, gw) with gh <= h, gw <= w, gh * gw <= k, maximising gh * gw, then squareness."""
    best = (1, 1)
    best_key = (1, 0.0)
    for gh in range(1, min(h, k) + 1):
        gw = min(w, k // gh)
        if gw < 1:
            continue
        key = (gh * gw, -abs(math.log((h / gh) / (w / gw))))
        if key > best_key:
            best, best_key = (gh, gw), key
    return best


def _cells(h: int, w: int, budget: int) -> torch.Tensor:
    """(N,) cell id of each raster token: a gh x gw cut of the grid, then, while there are fewer
    cells than ``budget``, the member farthest from its cell's centre (ties: lowest index) of the
    largest cell (ties: lowest id) is split off as a cell of its own."""
    gh, gw = cell_grid(h, w, budget)
    rows = torch.arange(h) * gh // h  # (h,) cell row of each grid row
    cols = torch.arange(w) * gw // w  # (w,)
    cell = (rows[:, None] * gw + cols[None, :]).flatten()  # (h, w) -> (N,)
    yy = torch.arange(h).repeat_interleave(w).float()
    xx = torch.arange(w).repeat(h).float()
    for new_id in range(gh * gw, budget):
        sizes = torch.bincount(cell, minlength=new_id)
        big = int(torch.argmax(sizes))
        members = torch.nonzero(cell == big).flatten()
        d = (yy[members] - yy[members].mean()) ** 2 + (xx[members] - xx[members].mean()) ** 2
        far = members[int(torch.argmax(d))]  # argmax returns the first (lowest index) maximum
        cell[far] = new_id
    return cell


@functools.lru_cache(maxsize=64)
def plan(h: int, w: int, budget: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The geometry of pooling an (h, w) grid to ``budget < h * w`` cells, on the host (it depends
    on the grid alone, so a call on any device reads nothing back): ``(kept (K,) sorted
    representatives, assignment (N,) the slot of ``kept`` each token is pooled into, counts (K,)
    members per slot)``. The representative of a cell is its member nearest the centroid (ties:
    lowest index)."""
    n, k = h * w, budget
    cell = _cells(h, w, budget)  # (N,)
    counts = torch.bincount(cell, minlength=k).float()  # (K,)
    yy = torch.arange(h).repeat_interleave(w).float()
    xx = torch.arange(w).repeat(h).float()
    cy = torch.zeros(k).index_add_(0, cell, yy) / counts
    cx = torch.zeros(k).index_add_(0, cell, xx) / counts
    dist = (yy - cy[cell]) ** 2 + (xx - cx[cell]) ** 2  # (N,)
    best = torch.full((k,), float("inf")).scatter_reduce(0, cell, dist, reduce="amin")
    is_best = dist == best[cell]
    rep = torch.full((k,), n, dtype=torch.long)
    rep = rep.scatter_reduce(0, cell[is_best], torch.nonzero(is_best).flatten(), reduce="amin")
    order = torch.argsort(rep)  # slots in raster order of their representatives
    slot_of_cell = torch.empty_like(order)
    slot_of_cell[order] = torch.arange(k)
    slot = slot_of_cell[cell]  # (N,)
    return rep[order], slot, counts[order]


def select(features: torch.Tensor, grid: tuple[int, int], budget: int):
    """Pool an (h*w, D) raster grid to exactly ``min(budget, N)`` tokens.

    Returns ``(kept, merged, assignment)``: kept (K,) sorted indices of each cell's representative
    (the member nearest the cell's centroid, ties lowest index), merged (K, D) the cell means
    aligned with ``kept``, assignment (N,) the slot of ``kept`` each token was pooled into.
    """
    h, w = grid
    n = h * w
    if features.shape[0] != n:
        raise ValueError(f"`features` has {features.shape[0]} rows, grid {grid} needs {n}")
    budget = check_count(budget)
    dev = features.device
    if budget == 0:
        empty = torch.empty(0, dtype=torch.long, device=dev)
        return empty, features[:0], torch.full((n,), -1, dtype=torch.long, device=dev)
    if budget >= n:
        idx = torch.arange(n, device=dev)
        return idx, features, idx.clone()
    kept, slot, counts = (t.to(dev) for t in plan(h, w, budget))
    x = features.float()
    means = torch.zeros(budget, x.shape[1], device=dev).index_add_(0, slot, x) / counts[:, None]  # (K, D)
    return kept, means.to(features.dtype), slot


@register
@dataclass
class Pool(Method):
    """Average-pool each region's grid to its share of the budget: a baseline without any signal.

    Exactly ``min(K, N)`` tokens, each the mean of its cell, at the cell's central member (see
    the module docstring)."""

    name = "pool"
    merges = True
    per_region = True

    def select_unit(self, unit: ImageTokens) -> Kept:
        kept, merged, assignment = select(unit.features, unit.grid, unit.budget)
        return Kept(kept, merged, assignment)
