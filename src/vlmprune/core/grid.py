"""Token grids: scan orders, 4-neighbours, local maxima and per-run minima (raster order throughout)."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

SCANS = ("serpentine", "window")


@lru_cache(maxsize=64)
def _scan_order_cached(h: int, w: int, scan: str, window: int) -> tuple[int, ...]:
    def serpentine(rows: range, cols: range) -> list[tuple[int, int]]:
        out = []
        for t, r in enumerate(rows):
            out.extend((r, c) for c in (cols if t % 2 == 0 else reversed(cols)))
        return out

    if scan == "serpentine":
        cells = serpentine(range(h), range(w))
    else:
        cells = []
        wins = serpentine(range(math.ceil(h / window)), range(math.ceil(w / window)))
        for wr, wc in wins:
            rows = range(wr * window, min((wr + 1) * window, h))
            cols = range(wc * window, min((wc + 1) * window, w))
            cells.extend(serpentine(rows, cols))
    return tuple(r * w + c for r, c in cells)


def scan_order(grid: tuple[int, int], scan: str = "serpentine", window: int = 4) -> torch.Tensor:
    """(h*w,) raster indices of an ``(h, w)`` grid in scan order.

    ``"serpentine"``: rows top to bottom, alternately left-to-right and right-to-left.
    ``"window"``: ``window x window`` tiles (smaller at the edges) visited in serpentine order,
    each tile's cells in serpentine order. Consecutive cells are 4-neighbours within a tile.
    """
    if scan not in SCANS:
        raise ValueError(f"`scan` must be one of {SCANS}, got {scan!r}")
    h, w = int(grid[0]), int(grid[1])
    return torch.tensor(_scan_order_cached(h, w, scan, int(window)), dtype=torch.long)


def neighbours(h: int, w: int, device) -> torch.Tensor:
    """(h*w, 4) raster indices of the up, left, right, down neighbours (ascending), -1 outside."""
    idx = torch.arange(h * w, device=device).view(h, w)
    out = torch.full((h, w, 4), -1, dtype=torch.long, device=device)
    out[1:, :, 0] = idx[:-1, :]
    out[:, 1:, 1] = idx[:, :-1]
    out[:, :-1, 2] = idx[:, 1:]
    out[:-1, :, 3] = idx[1:, :]
    return out.view(h * w, 4)  # (h, w, 4) -> (N, 4)


def local_peaks(score: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N,) bool: tokens whose ``score`` is the maximum of their 3 x 3 neighbourhood on the
    ``(h, w)`` grid (ties: every tied token) and above the grid's mean score."""
    h, w = int(grid[0]), int(grid[1])
    s = score.float()
    pooled = F.max_pool2d(s.view(1, 1, h, w), 3, stride=1, padding=1).view(h * w)  # (1, 1, h, w) -> (N,)
    return (s >= pooled) & (s > s.mean())


def argmin_per_run(cost: torch.Tensor, members: torch.Tensor, run: torch.Tensor, runs: int) -> torch.Tensor:
    """(runs,) the member of each run with the smallest ``cost`` (ties: lowest index).

    ``cost``, ``members`` (raster indices) and ``run`` (run of each member) are (m,); every run
    ``0..runs-1`` has at least one member.
    """
    best = torch.full((runs,), float("inf"), device=cost.device).scatter_reduce(0, run, cost, "amin")
    big = torch.iinfo(torch.long).max
    cand = torch.where(cost == best[run], members, big)  # (m,) the members at the minimum
    return torch.full((runs,), big, dtype=torch.long, device=cost.device).scatter_reduce(0, run, cand, "amin")
