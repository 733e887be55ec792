"""VisPruner: important tokens by CLS attention, diverse tokens by removing duplicates.

Re-implemented from the paper (Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues
for Effective Token Pruning in VLMs", arXiv 2412.01818) and ``methods.md``; no code was copied.

Per image (or per region), with ``K`` kept tokens:

1. **Important tokens**: the ``K_i = round_half_up(important_ratio * K)`` tokens with the highest
   saliency (CLS attention of the vision tower). Ties: lowest index.
2. **Diverse tokens** among the other ``R = N - K_i`` tokens, ``K_v = K - K_i`` of them, by
   iterative duplicate removal on the pre-projector features (cosine similarity): while more than
   ``K_v`` remain, split the remaining tokens (kept in raster order) alternately into ``A``
   (positions 0, 2, 4, ...) and ``B`` (1, 3, 5, ...), score each ``a`` in ``A`` by its highest
   similarity to ``B``, and drop the ``min(drop_per_round, remaining - K_v)`` highest-scoring
   ``a`` (ties: the lowest index first). What is left is the diverse set.

Choices the paper leaves open, made here:

- ``round_half_up`` (not Python's banker's rounding), so ``K = 1`` keeps one important token;
- after each round the survivors are put back in raster order before the next alternate split,
  so the split always pairs spatial neighbours (a token's closest duplicate is usually next to it);
- if ``pre_features`` is missing the projector outputs ``features`` are used.

On a multi-crop image the budget is shared across the crops (``regions``) in proportion to their
sizes and each crop is pruned on its own, as the paper runs the method per crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from vlmprune.core.greedy import maybe_compiled, reads_on_host
from vlmprune.core.method import Method
from vlmprune.core.ops import ranked
from vlmprune.core.options import check_count, integer, number, option
from vlmprune.core.registry import register
from vlmprune.core.types import ImageTokens, Kept


def important_count(budget: int, important_ratio: float) -> int:
    """``round_half_up(important_ratio * budget)``, within ``[0, budget]``."""
    return min(budget, max(0, math.floor(important_ratio * budget + 0.5)))


NO_MATCH = -math.inf  # the similarity of a NaN pair and of the padding slot R
NEIGHBOURS = 32  # nearest-neighbour list length of the CPU form
NEIGHBOUR_FORM_MIN = 1024  # rows from which the CPU form reads neighbour lists (below: compacting rounds)
BLOCK_ELEMENTS = 1 << 22  # similarities per row block of the CPU form's neighbour search
SHRINK = 0.5  # the accelerator form rebuilds its views once the survivors fill this share of them


def remove_duplicates(pre_features: torch.Tensor, keep: int, drop_per_round: int = 8) -> torch.Tensor:
    """Iterative bipartite duplicate removal on (R, Dv) features; returns (keep,) sorted row indices.

    A NaN similarity counts as ``-inf`` (it never makes a token a duplicate). Two forms pick the
    same rows: on device types that read on the host (:func:`vlmprune.core.greedy.reads_on_host`,
    the CPU) the survivors are compacted every round on an (R, R) similarity (nine operations a
    round on a shrinking block, :func:`_compacting_rounds`) or, from ``NEIGHBOUR_FORM_MIN`` rows,
    each round reads every token's nearest-neighbour list (:func:`_neighbour_rounds`: ``O(R m)``
    a round and in memory, no (R, R) matrix); elsewhere a round is five
    operations on fixed-shape views of the (R + 1, R + 1) similarity (:func:`_removal_rounds`),
    through :func:`vlmprune.core.greedy.maybe_compiled` (opt-in: one CUDA graph per (R, keep)
    with ``compile_loops()``).
    """
    r = pre_features.shape[0]
    device = pre_features.device
    if keep >= r:
        return torch.arange(r, device=device)
    if keep <= 0:
        return torch.empty(0, dtype=torch.long, device=device)
    f = F.normalize(pre_features.float(), dim=-1, eps=1e-6)
    if reads_on_host(f) and r < NEIGHBOUR_FORM_MIN:
        sim = _similarity_rows(f)  # (R, R) cosine
        return maybe_compiled(_compacting_rounds, sim)(sim, keep, drop_per_round)
    if reads_on_host(f):
        kept = _neighbour_rounds(f, keep, drop_per_round)
        if kept is not None:
            return kept
    sim = f.new_empty(r + 1, r + 1)  # index R is no token: -inf against everything, no padded copy
    torch.mm(f, f.T, out=sim[:r, :r]).nan_to_num_(nan=NO_MATCH)  # (R, Dv) @ (Dv, R) -> (R, R)
    sim[r].fill_(NO_MATCH)
    sim[:, r].fill_(NO_MATCH)
    return maybe_compiled(_removal_rounds, sim)(sim, keep, drop_per_round)


def _similarity_rows(f: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity of the unit ``f`` (R, Dv) rows ``rows`` (all: None) to every row, NaN as
    ``-inf``: (len(rows), R)."""
    block = f if rows is None else f.index_select(0, rows)
    return (block @ f.T).nan_to_num_(nan=NO_MATCH)  # (C, Dv) @ (Dv, R) -> (C, R)


def nearest_neighbours(f: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each unit row's ``m`` most similar other rows of ``f`` (R, Dv): ``(values, indices)``, each
    (R, m), most similar first. Row blocks of ``BLOCK_ELEMENTS`` similarities: no (R, R) matrix
    beyond one block."""
    r = f.shape[0]
    values = f.new_empty(r, m)
    indices = torch.empty(r, m, dtype=torch.long, device=f.device)
    step = max(1, BLOCK_ELEMENTS // max(r, 1))
    for start in range(0, r, step):
        rows = torch.arange(start, min(start + step, r), device=f.device)
        sim = _similarity_rows(f, None if rows.numel() == r else rows)  # (C, R)
        sim[torch.arange(rows.numel(), device=f.device), rows] = NO_MATCH  # never its own neighbour
        torch.topk(
            sim, m, dim=1, out=(values[start : start + rows.numel()], indices[start : start + rows.numel()])
        )
    return values, indices


def _neighbour_rounds(f: torch.Tensor, keep: int, drop_per_round: int) -> torch.Tensor:
    """The CPU form on unit rows ``f`` (R, Dv), ``0 < keep < R`` -> (keep,) sorted indices, or
    None where it cannot vouch for its answer (the caller then runs the exact rounds).

    A token's score, its highest similarity to ``B``, is the first entry of its nearest-neighbour
    list among the survivors (:func:`nearest_neighbours`, ``NEIGHBOURS`` long, rebuilt once the
    survivors halve) that lies in ``B``: the full similarity's value, in ``O(R m)`` a round and
    ``O(R m)`` memory. A row with none of its list in ``B`` is scored by an upper bound, its list's
    last value: if that lands it among the round's ``drop`` highest, its exact score might not, and
    the result is not vouched for; elsewhere the order is the exact one. One host read, at the end.
    """
    r = f.shape[0]
    cur = torch.arange(r, device=f.device)  # survivors in raster order (global ids)
    in_b = torch.zeros(r + 1, dtype=torch.bool, device=f.device)  # slot r: a dropped token
    row_of = torch.empty(r, dtype=torch.long, device=f.device)  # global id -> row of the lists
    suspect = torch.zeros((), dtype=torch.bool, device=f.device)
    size, window = r, 0
    while size > keep:
        if size <= SHRINK * window or window == 0:  # neighbour lists among the survivors
            values, local = nearest_neighbours(f.index_select(0, cur), min(NEIGHBOURS, size - 1))
            neighbours = cur[local]  # (S, m) global ids
            m = values.shape[1]
            flat, last = values.view(-1), values[:, -1].contiguous()  # (S * m,), (S,)
            row_of[cur] = torch.arange(size, device=f.device)
            window = size
        a, b = cur[0:size:2], cur[1:size:2]  # (|A|,), (|B|,) the alternate split
        drop = min(drop_per_round, size - keep, a.numel())
        rows = row_of.index_select(0, a)  # (|A|,)
        in_b.index_fill_(0, b, True)
        hit = in_b[neighbours.index_select(0, rows)]  # (|A|, m): that neighbour is in B
        in_b.index_fill_(0, b, False)
        found, first = hit.byte().max(dim=1)  # (|A|,) any neighbour in B, the first one (most similar)
        # none of its list in B: the score is at most the list's last value, which stands in for it
        score = torch.where(found.bool(), flat.index_select(0, rows * m + first), last.index_select(0, rows))
        order = torch.sort(score, descending=True, stable=True).indices  # ties: lowest index first
        gone = order[:drop]  # the most duplicated a
        suspect |= (found.index_select(0, gone) == 0).any()  # a stand-in among them: not vouched for
        cur = cur.index_fill(0, 2 * gone, r)  # a's slot in the survivors: dropped
        cur = torch.sort(cur).values[: size - drop]  # survivors back in raster order
        size -= drop
    return None if bool(suspect) else cur


def _compacting_rounds(sim: torch.Tensor, keep: int, drop_per_round: int) -> torch.Tensor:
    """The rounds on an (R, R) similarity, ``0 < keep < R`` -> (keep,) sorted indices.

    The survivors live at the front of one index buffer, in raster order; a dropped index is
    overwritten with ``R`` and sorts to the back. A round is nine tensor operations on shapes known
    on the host (no sync): two strided views for ``A`` and ``B``, two gathers of their similarity
    block, its row maximum, the stable ranking (no NaN: the caller replaced them), the ``drop``
    first ranks, one fill and one sort.
    """
    r = sim.shape[0]
    cur = torch.arange(r, device=sim.device)  # survivors first, in raster order; dropped: r
    size = r  # survivors, tracked in Python: every shape below is known without a host sync
    while size > keep:
        a = cur.as_strided(((size + 1) // 2,), (2,))  # (|A|,) view: positions 0, 2, 4, ...
        b = cur.as_strided((size // 2,), (2,), 1)  # (|B|,) view: positions 1, 3, 5, ...
        drop = min(drop_per_round, size - keep, (size + 1) // 2)
        score = sim.index_select(0, a).index_select(1, b).amax(dim=1)  # (|A|, |B|) -> (|A|,)
        order = torch.sort(score, descending=True, stable=True).indices  # ties: lowest index first
        a.index_fill_(0, order[:drop], r)  # the most duplicated a: out of the survivors
        cur = torch.sort(cur).values  # (R,) survivors back in raster order, at the front
        size -= drop
    return cur[:keep]


class _Window:
    """Fixed-shape views for the accelerator form while the survivors fit in ``length`` slots.

    ``bufs`` are two (R,) index buffers (survivors first in raster order, then ``R``); a round reads
    one and sorts into the other. Per buffer: ``a`` (|A|, 1) and ``b`` (|B|,) strided views (slots
    0, 2, 4, ... and 1, 3, 5, ...) that follow the buffer as it is rewritten in place; ``values``
    and ``order`` receive the ranking of ``A``, and ``head(drop)`` is a view of its first ranks.
    """

    def __init__(self, bufs: tuple[torch.Tensor, torch.Tensor], length: int):
        self.length = length
        h_a, h_b = (length + 1) // 2, length // 2
        self.a = [buf.as_strided((h_a, 1), (2, 1)) for buf in bufs]
        self.b = [buf.as_strided((h_b,), (2,), 1) for buf in bufs]
        self.values = bufs[0].new_empty(h_a, dtype=torch.float32)
        self.order = bufs[0].new_empty(h_a)
        self._heads: dict[int, torch.Tensor] = {}

    def head(self, drop: int) -> torch.Tensor:
        if drop not in self._heads:
            self._heads[drop] = self.order[:drop]
        return self._heads[drop]


def _removal_rounds(sim: torch.Tensor, keep: int, drop_per_round: int) -> torch.Tensor:
    """The rounds on an (R + 1, R + 1) padded similarity, ``0 < keep < R`` -> (keep,) sorted indices.

    A round is five tensor operations on shapes known on the host (no sync): the similarity block
    of ``A`` against ``B`` (one gather), its row maximum, the stable ranking of ``A`` (a dropped
    slot holds ``R``, whose row is ``-inf``, so it ranks last), one fill of the ``drop`` first ranks
    with ``R`` and one sort that puts the survivors back at the front in raster order. The views are
    rebuilt (seven operations) once the survivors shrink to ``SHRINK`` of them, so the gathered
    block stays near the survivors' size.
    """
    r = sim.shape[0] - 1
    bufs = (torch.arange(r, device=sim.device), torch.empty(r, dtype=torch.long, device=sim.device))
    unused = torch.empty_like(bufs[1])  # the sort's index output
    size, cur, win = r, 0, None
    while size > keep:
        if win is None or size <= SHRINK * win.length:
            win = _Window(bufs, size)
        drop = min(drop_per_round, size - keep, (size + 1) // 2)
        a = win.a[cur]
        score = sim[a, win.b[cur]].amax(dim=1)  # (|A|, |B|) -> (|A|,)
        torch.sort(score, dim=0, descending=True, stable=True, out=(win.values, win.order))
        a.index_fill_(0, win.head(drop), r)  # the most duplicated a: out of the survivors
        torch.sort(bufs[cur], out=(bufs[1 - cur], unused))  # (R,) survivors back at the front
        cur, size = 1 - cur, size - drop
    return bufs[cur][:keep]


def select(
    saliency: torch.Tensor,
    pre_features: torch.Tensor,
    budget: int,
    important_ratio: float = 0.5,
    drop_per_round: int = 8,
) -> torch.Tensor:
    """VisPruner on one image.

    Args:
        saliency: (N,) CLS attention per token.
        pre_features: (N, Dv) features before the projector (or any per-token features).
        budget: tokens to keep, ``>= 0``; ``>= N`` keeps every token.
        important_ratio: share of the budget taken by saliency, in ``[0, 1]``.
        drop_per_round: most tokens dropped per duplicate-removal round, ``>= 1``.

    Returns:
        (min(budget, N),) sorted unique LongTensor.
    """
    if pre_features.dim() != 2:
        raise ValueError(f"`pre_features` must be (N, Dv), got shape {tuple(pre_features.shape)}")
    n = pre_features.shape[0]
    if saliency.shape != (n,):
        raise ValueError(f"`saliency` must be ({n},), got shape {tuple(saliency.shape)}")
    budget = check_count(budget)
    if not 0.0 <= important_ratio <= 1.0:
        raise ValueError(f"`important_ratio` must be in [0, 1], got {important_ratio}")
    if drop_per_round < 1:
        raise ValueError(f"`drop_per_round` must be >= 1, got {drop_per_round}")
    k = min(int(budget), n)
    if k >= n:
        return torch.arange(n, device=pre_features.device)
    k_imp = important_count(k, important_ratio)
    order = ranked(saliency)  # (N,) most salient first
    important = order[:k_imp]
    rest = torch.sort(order[k_imp:]).values  # (N - K_i,) raster order
    diverse = rest[remove_duplicates(pre_features[rest], k - k_imp, drop_per_round)]
    return torch.sort(torch.cat([important, diverse])).values


@register
@dataclass
class VisPruner(Method):
    """VisPruner (arXiv 2412.01818): top saliency tokens + duplicate removal on pre-projector features.

    ``important_ratio`` (default 0.5): share of the budget chosen by CLS attention.
    ``drop_per_round`` (default 8): most tokens removed per bipartite round. Per region (crop).
    See the module docstring for the open choices.
    """

    important_ratio: float = option(0.5, number(0.0, 1.0))
    drop_per_round: int = option(8, integer(1))

    name: ClassVar[str] = "vispruner"
    needs_saliency: ClassVar[bool] = True
    needs_pre_features: ClassVar[bool] = True
    per_region: ClassVar[bool] = True

    def select_unit(self, unit: ImageTokens) -> Kept:
        n = unit.num_tokens
        if unit.budget >= n:
            return Kept(indices=torch.arange(n, device=unit.features.device))
        if unit.saliency is None:
            raise ValueError("VisPruner needs `saliency` (CLS attention) for every image")
        pre = unit.pre_features if unit.pre_features is not None else unit.features
        kept = select(unit.saliency, pre, unit.budget, float(self.important_ratio), self.drop_per_round)
        return Kept(indices=kept)
