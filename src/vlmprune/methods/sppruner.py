"""SPpruner: focus-then-context visual token reduction (a reconstruction).

Seed paper: "Focus-then-Context: Subject-Centric Progressive Visual Token Reduction for
Vision-Language Models" (arXiv 2605.20950). **Only the abstract is public**: there are no
equations and no code. This module is this library's reconstruction; it follows the abstract's
structure (subject spectrum -> context-aware structural scanning -> subject integrity ->
progressive reduction) and every concrete choice below is ours, made so that each module is a
separate function that can be replaced when the full paper appears (``methods.md``).

Per region grid ``(h, w)`` with ``N = h w`` tokens ``X`` (projector outputs), saliency ``a``, text
embeddings ``Q`` and budget ``K < N``:

1. **Focus identification** (:func:`focus_scores`). ``s_v`` = min-max normalised ``a``; ``s_r`` =
   min-max normalised ``max_j cos(X_i, Q_j)``; soft union ``f = 1 - (1 - s_v)(1 - s_r)`` (a token
   is a subject if salient OR relevant), or ``"product"`` / ``"mean"``. Without text ``f = s_v``;
   without saliency (uniform ``s_v``) ``f = s_r``. Focus set: top ``K_f = round(rho K)`` by ``f``.
2. **Structural scanning** (:func:`scan_order`, :func:`context_tokens`). The other tokens are
   visited in serpentine row order (or ``w x w`` windows visited in serpentine order, serpentine
   inside each window) and cut into ``K_c = K - K_f`` contiguous runs whose non-focus counts
   differ by at most one. Each run becomes one token: the mean of its members weighted by
   ``softmax(s_v)`` over the run (uniform without saliency), placed at the member nearest (L2)
   to that mean.
3. **Subject integrity** (:func:`aggregate_neighbours`). Each non-focus 4-neighbour of a focus
   token is also folded into its most similar adjacent focus token:
   ``x_f <- (x_f + Σ w_i x_i) / (1 + Σ w_i)``, ``w_i = max(cos(x_i, x_f), 0)``.
4. **Progressive option** (``llm_layer``). Inside the LLM, at the input of ``llm_layer``, every
   focus token is kept and only the top ``llm_keep`` share of the context tokens by the last text
   token's attention (FastV style).

Our choices (not in the abstract): the min-max eps ``1e-6``; Python's ``round`` (half to even)
for ``K_f``; ties everywhere to the lowest raster index; softmax over the normalised ``s_v``;
the L2 "nearest member"; a neighbour token contributes both to its run and to its focus token, and
its ``assignment`` is the focus token's slot (0 weight: the run's slot; a run's own placed token
keeps its slot); the text is whatever the
adapter passes as ``ImageTokens.text``; with neither text nor saliency ``f`` is constant and the
focus set is the first tokens in raster order. Each crop of a multi-crop image is a region: the
image's budget is shared across crops in proportion to their token counts and each crop is reduced
on its own grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import torch
import torch.nn.functional as F

from vlmprune.core.method import Method
from vlmprune.core.ops import minmax, top
from vlmprune.core.options import check_count, choice, flag, integer, number, option
from vlmprune.core.registry import register
from vlmprune.core.types import ImageTokens, Kept, LayerTokens

UNIONS = ("soft", "product", "mean")
SCANS = ("serpentine", "window")


def check_params(rho: float, union: str, scan: str, window: int, merge_neighbors: bool) -> None:
    """Raise ``ValueError`` naming the offending option."""
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 <= rho <= 1.0:
        raise ValueError(f"`rho` must be a number in [0, 1], got {rho!r}")
    if union not in UNIONS:
        raise ValueError(f"`union` must be one of {UNIONS}, got {union!r}")
    if scan not in SCANS:
        raise ValueError(f"`scan` must be one of {SCANS}, got {scan!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"`window` must be an int >= 1, got {window!r}")
    if not isinstance(merge_neighbors, bool):
        raise ValueError(f"`merge_neighbors` must be a bool, got {merge_neighbors!r}")


# -- 1. focus identification ---------------------------------------------------------------------
def relevance(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(N, D) tokens, (M, D) text embeddings -> (N,) ``max_j cos(X_i, Q_j)`` (not normalised)."""
    x = features.float()
    return _relevance(x, _norms(x), text)


def _norms(x: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N,) ``max(|x_i|, 1e-6)``: dividing by it is the eps-1e-6 row normalisation."""
    return torch.linalg.vecdot(x, x, dim=-1).sqrt().clamp_min(1e-6)


def _relevance(x: torch.Tensor, norms: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(N, D) rows, (N,) their clamped norms, (M, D) text -> (N,) max cosine."""
    if text.dim() != 2 or text.shape[1] != x.shape[1]:
        raise ValueError(f"`text` must be (M, {x.shape[1]}), got shape {tuple(text.shape)}")
    q = F.normalize(text.float().to(x.device), dim=-1, eps=1e-6)
    return (x @ q.T).amax(dim=1) / norms  # (N, D) @ (D, M) -> (N, M) -> (N,)


def focus_scores(
    features: torch.Tensor,
    saliency: torch.Tensor | None,
    text: torch.Tensor | None,
    union: str = "soft",
) -> torch.Tensor:
    """(N,) float32 subject score ``f`` from saliency and text relevance (module docstring, step 1)."""
    x = features.float()
    s_v = None if saliency is None else minmax(saliency.to(features.device).reshape(-1))
    return _focus_scores(x, _norms(x), s_v, text, union)


def _focus_scores(
    x: torch.Tensor, norms: torch.Tensor, s_v: torch.Tensor | None, text: torch.Tensor | None, union: str
) -> torch.Tensor:
    n = x.shape[0]
    s_r = None if text is None or text.shape[0] == 0 else minmax(_relevance(x, norms, text))
    if s_v is None and s_r is None:
        return torch.zeros(n, dtype=torch.float32, device=x.device)
    if s_r is None:
        return s_v
    if s_v is None:
        return s_r
    if union == "soft":
        return 1.0 - (1.0 - s_v) * (1.0 - s_r)
    if union == "product":
        return s_v * s_r
    if union == "mean":
        return 0.5 * (s_v + s_r)
    raise ValueError(f"`union` must be one of {UNIONS}, got {union!r}")


# -- 2. structural scanning ----------------------------------------------------------------------
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


def scan_runs(order: torch.Tensor, is_focus: torch.Tensor, k_c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the non-focus tokens, in scan ``order``, into ``k_c`` contiguous runs.

    Returns:
        ``members`` (m,) raster indices of the non-focus tokens in scan order and ``run`` (m,) the
        run of each (``0..k_c-1``, sizes ``floor`` / ``ceil`` of ``m / k_c``).
    """
    members = order[~is_focus[order]]  # (m,)
    m = members.numel()
    run = (torch.arange(m, device=members.device) * k_c) // max(m, 1)  # (m,) non-decreasing
    return members, run


def _mix(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(K, N) weights (about one non-zero per token) @ (N, D) -> (K, D), as a sparse product."""
    return torch.sparse.mm(weights.to_sparse(), x)


def context_weights(s_v: torch.Tensor | None, members: torch.Tensor, run: torch.Tensor, k_c: int, n: int):
    """(K_c, N) weights of the context tokens: ``softmax(s_v)`` over each run's members (uniform
    without saliency), 0 elsewhere; every row sums to 1."""
    device = members.device
    logits = torch.zeros(members.numel(), device=device) if s_v is None else s_v[members]
    e = torch.exp(logits - logits.max())  # (m,); s_v in [0, 1]
    den = torch.zeros(k_c, device=device).index_add_(0, run, e)  # (K_c,)
    wts = torch.zeros(k_c, n, device=device)
    wts[run, members] = e / den[run]
    return wts


def place_context(
    x: torch.Tensor, sq: torch.Tensor, means: torch.Tensor, members: torch.Tensor, run: torch.Tensor
) -> torch.Tensor:
    """(K_c,) raster index of the member of each run nearest (L2) to the run's mean, ties to the
    lowest index. x: (N, D), sq: (N,) squared norms, means: (K_c, D)."""
    k_c = means.shape[0]
    dots = (x @ means.T)[members, run]  # (N, D) @ (D, K_c) -> (N, K_c) -> (m,)
    dist = sq[members] - 2.0 * dots + means.square().sum(dim=1)[run]  # (m,) |x - mean|²
    best = torch.full((k_c,), float("inf"), device=x.device).scatter_reduce(0, run, dist, "amin")
    big = torch.iinfo(torch.long).max
    cand = torch.where(dist == best[run], members, big)  # (m,) the members at the minimum
    return torch.full((k_c,), big, dtype=torch.long, device=x.device).scatter_reduce(0, run, cand, "amin")


def context_tokens(
    x: torch.Tensor,
    s_v: torch.Tensor | None,
    members: torch.Tensor,
    run: torch.Tensor,
    k_c: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per run: the ``softmax(s_v)``-weighted mean, placed at the member nearest to it.

    Args:
        x: (N, D) float32 features. s_v: (N,) normalised saliency or None (uniform weights).
        members: (m,) raster indices. run: (m,) run per member.

    Returns:
        ``means`` (k_c, D) and ``rep`` (k_c,) raster index of each run's representative.
    """
    means = _mix(context_weights(s_v, members, run, k_c, x.shape[0]), x)  # (K_c, N) @ (N, D) -> (K_c, D)
    return means, place_context(x, torch.linalg.vecdot(x, x, dim=-1), means, members, run)


# -- 3. subject integrity ------------------------------------------------------------------------
def _neighbours(h: int, w: int, device) -> torch.Tensor:
    """(h*w, 4) raster indices of the up, left, right, down neighbours (ascending), -1 outside."""
    idx = torch.arange(h * w, device=device).view(h, w)
    out = torch.full((h, w, 4), -1, dtype=torch.long, device=device)
    out[1:, :, 0] = idx[:-1, :]
    out[:, 1:, 1] = idx[:, :-1]
    out[:, :-1, 2] = idx[:, 1:]
    out[:-1, :, 3] = idx[1:, :]
    return out.view(h * w, 4)  # (h, w, 4) -> (N, 4)


def neighbour_weights(x: torch.Tensor, norms: torch.Tensor, is_focus: torch.Tensor, grid: tuple[int, int]):
    """Which focus token each non-focus 4-neighbour of a subject is folded into, and its weight.

    Args:
        x: (N, D) rows. norms: (N,) their norms clamped at 1e-6. is_focus: (N,) bool. grid: (h, w).

    Returns:
        ``target`` (N,) the most similar adjacent focus token (ties: lowest index; -1: none or
        ``cos <= 0``) and ``weight`` (N,) ``max(cos, 0)``.
    """
    h, w = grid
    n = h * w
    nb = _neighbours(h, w, x.device)  # (N, 4)
    valid = (nb >= 0) & is_focus[nb.clamp_min(0)] & ~is_focus.unsqueeze(1)  # (N, 4)
    right = torch.linalg.vecdot(x[:-1], x[1:], dim=-1) / (norms[:-1] * norms[1:])  # (N - 1,) cos(i, i + 1)
    down = torch.linalg.vecdot(x[: n - w], x[w:], dim=-1) / (norms[: n - w] * norms[w:])  # (N - w,)
    cos = torch.full((n, 4), float("-inf"), device=x.device)  # (N, 4): up, left, right, down
    cos[w:, 0], cos[1:, 1], cos[:-1, 2], cos[: n - w, 3] = down, right, right, down
    cos = cos.masked_fill(~valid, float("-inf"))
    best = cos.argmax(dim=1, keepdim=True)  # (N, 1) first maximum = lowest raster index among ties
    weight = cos.gather(1, best).squeeze(1).clamp_min(0.0)  # (N,); -inf (no focus neighbour) -> 0
    target = torch.where(weight > 0, nb.gather(1, best).squeeze(1), -1)  # (N,)
    return target, weight


def aggregate_neighbours(
    x: torch.Tensor, is_focus: torch.Tensor, grid: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold each non-focus 4-neighbour of a focus token into its most similar adjacent focus token.

    Args:
        x: (N, D) float32 features. is_focus: (N,) bool. grid: (h, w), ``h * w = N``.

    Returns:
        ``merged`` (N, D): for focus rows ``(x_f + Σ w_i x_i) / (1 + Σ w_i)``, other rows ``x``;
        ``target`` (N,): the focus token each token was folded into (-1: none, or weight 0).
    """
    target, weight = neighbour_weights(x, _norms(x), is_focus, grid)
    focus = is_focus.nonzero().squeeze(1)
    merged = x.clone()
    merged[focus] = _mix(_subject_weights(focus, target, weight, x.shape[0]), x)  # (K_f, N) @ (N, D)
    return merged, target


def _subject_weights(focus: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, n: int) -> torch.Tensor:
    """(K_f, N) convex weights of the focus tokens: ``[1 at f, w_i at its folded neighbours] / (1 + Σ w_i)``."""
    pos = torch.full((n,), -1, dtype=torch.long, device=focus.device)
    pos[focus] = torch.arange(focus.numel(), device=focus.device)
    wts = torch.zeros(focus.numel(), n, device=focus.device)
    wts[pos[focus], focus] = 1.0
    src = (target >= 0).nonzero().squeeze(1)
    wts[pos[target[src]], src] = weight[src]  # a token has one target: no accumulation needed
    return wts / wts.sum(dim=1, keepdim=True)


# -- the full selection --------------------------------------------------------------------------
def _select(
    features: torch.Tensor,
    saliency: torch.Tensor | None,
    text: torch.Tensor | None,
    grid: tuple[int, int],
    budget: int,
    rho: float,
    union: str,
    scan: str,
    window: int,
    merge_neighbors: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`select` plus the (N,) bool focus mask."""
    check_params(rho, union, scan, window, merge_neighbors)
    if features.dim() != 2:
        raise ValueError(f"`features` must be (N, D), got shape {tuple(features.shape)}")
    n, d = features.shape
    h, w = int(grid[0]), int(grid[1])
    if h * w != n:
        raise ValueError(f"`grid` {tuple(grid)} does not match {n} tokens")
    budget = check_count(budget)
    if saliency is not None and saliency.numel() != n:
        raise ValueError(f"`saliency` must have {n} entries, got shape {tuple(saliency.shape)}")
    device, dtype = features.device, features.dtype
    k = min(int(budget), n)
    is_focus = torch.zeros(n, dtype=torch.bool, device=device)
    if k >= n:
        return torch.arange(n, device=device), features.clone(), torch.arange(n, device=device), ~is_focus
    if k == 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        none = torch.full((n,), -1, dtype=torch.long, device=device)
        return empty, features.new_empty(0, d), none, is_focus

    x = features.float()
    sq = torch.linalg.vecdot(x, x, dim=-1)  # (N,) squared norms
    norms = sq.sqrt().clamp_min(1e-6)  # (N,) eps-1e-6 normalisers (cosines without a unit copy)
    s_v = None if saliency is None else minmax(saliency.to(device).reshape(n))

    # 1. focus: top K_f by the subject score
    k_f = min(k, max(0, round(rho * k)))
    k_c = k - k_f
    focus = top(_focus_scores(x, norms, s_v, text, union), k_f)  # (K_f,) in rank order
    is_focus[focus] = True

    # 2. context: K_c runs of the scan, each a softmax(s_v)-weighted mean placed on a member
    members, run = scan_runs(scan_order((h, w), scan, window).to(device), is_focus, k_c)
    ctx_w = context_weights(s_v, members, run, k_c, n) if k_c > 0 else x.new_zeros(0, n)  # (K_c, N)

    # 3. subject integrity: folded neighbours join their focus token's weights
    if merge_neighbors and k_f > 0:
        target, weight = neighbour_weights(x, norms, is_focus, (h, w))  # (N,), (N,)
    else:
        target, weight = torch.full((n,), -1, dtype=torch.long, device=device), x.new_zeros(n)
    sub_w = _subject_weights(focus, target, weight, n)  # (K_f, N)

    merged = _mix(torch.cat((sub_w, ctx_w)), x)  # (K, N) @ (N, D) -> (K, D): focus rows, then context rows
    rep = place_context(x, sq, merged[k_f:], members, run) if k_c > 0 else focus.new_empty(0)  # (K_c,)

    kept, order = torch.sort(torch.cat((focus, rep)))  # (K,)
    feats = merged[order]  # (K, D) aligned with kept
    slot = torch.full((n,), -1, dtype=torch.long, device=device)
    slot[kept] = torch.arange(k, device=device)
    assignment = torch.full((n,), -1, dtype=torch.long, device=device)
    if k_c > 0:
        assignment[members] = slot[rep[run]]  # every non-focus token: its run's slot
    folded = target >= 0
    assignment[folded] = slot[target[folded]]  # neighbours of a subject: the subject's slot
    assignment[kept] = torch.arange(k, device=device)  # a kept token (focus or run token) is its own slot
    return kept, feats.to(dtype), assignment, is_focus


def select(
    features: torch.Tensor,
    saliency: torch.Tensor | None,
    text: torch.Tensor | None,
    grid: tuple[int, int],
    budget: int,
    rho: float = 0.75,
    union: str = "soft",
    scan: str = "serpentine",
    window: int = 4,
    merge_neighbors: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPpruner on one region grid.

    Args:
        features: (N, D) projector outputs in raster order over ``grid = (h, w)``.
        saliency: (N,) vision-encoder saliency or None (uniform). text: (M, D) text embeddings or
            None (relevance omitted). budget: tokens kept, ``>= N`` keeps all.

    Returns:
        ``kept`` (K,) sorted indices; ``features`` (K, D) the replacement features aligned with
        ``kept`` (input dtype; each a convex combination of input tokens); ``assignment`` (N,) slot
        in ``0..K-1`` each token was folded into (-1: dropped).
    """
    kept, feats, assignment, _ = _select(
        features, saliency, text, grid, budget, rho, union, scan, window, merge_neighbors
    )
    return kept, feats, assignment


# -- the method ----------------------------------------------------------------------------------
@register
@dataclass
class SPPruner(Method):
    """SPpruner (arXiv 2605.20950, a reconstruction from the abstract): subject tokens plus scanned context tokens.

    See the module docstring for every choice that is ours.

    Keeps ``round(rho K)`` subject (focus) tokens chosen by the soft union of saliency and text
    relevance, and summarises the rest in ``K - round(rho K)`` context tokens, one per contiguous
    run of a structured scan of the grid; subject edges are folded into adjacent focus tokens.
    Options: ``rho``, ``union`` ("soft" | "product" | "mean"), ``scan`` ("serpentine" | "window"),
    ``window``, ``merge_neighbors``; ``llm_layer`` (None: off) with ``llm_keep`` for the
    progressive pass that keeps every focus token and the top ``llm_keep`` share of the context
    tokens by the last text token's attention at that layer. Multi-crop images share the budget
    across crops in proportion to their token counts. The focus tokens reach the in-LLM stage as
    ``Kept.pinned``; the method keeps no state between calls or stages.
    """

    rho: float = option(0.75, number(0.0, 1.0))
    union: str = option("soft", choice(*UNIONS))
    scan: str = option("serpentine", choice(*SCANS))
    window: int = option(4, integer(1))
    merge_neighbors: bool = option(True, flag())
    # A field named like Method's ``llm_layer`` property overrides it: the session reads the value.
    llm_layer: int | None = option(None, integer(1, optional=True))  # type: ignore[assignment]
    llm_keep: float = option(0.5, number(0.0, 1.0))

    name: ClassVar[str] = "sppruner"
    merges: ClassVar[bool] = True
    needs_saliency: ClassVar[bool] = True
    needs_text: ClassVar[bool] = True
    per_region: ClassVar[bool] = True
    in_llm_option: ClassVar[str | None] = "llm_layer"

    def select_unit(self, unit: ImageTokens) -> Kept:
        kept, merged, assignment, is_focus = _select(
            unit.features, unit.saliency, unit.text, unit.grid, unit.budget,
            self.rho, self.union, self.scan, self.window, self.merge_neighbors,
        )  # fmt: skip
        return Kept(indices=kept, features=merged, assignment=assignment, pinned=is_focus[kept])

    def select_layer(self, images: list[LayerTokens]) -> list[torch.Tensor]:
        """Keep every focus token (``pinned`` by the pre-LLM stage) and the top ``llm_keep`` share
        (rounded) of the context tokens by ``attention`` (ties: lowest index); without a pre-LLM
        stage every token counts as context."""
        out = []
        for layer in images:
            device = layer.attention.device
            if layer.pinned is None:
                is_focus = torch.zeros(layer.attention.shape[0], dtype=torch.bool, device=device)
            else:
                is_focus = layer.pinned.to(device)
            ctx = (~is_focus).nonzero().squeeze(1)  # (c,)
            n_keep = min(ctx.numel(), round(self.llm_keep * ctx.numel()))
            chosen = ctx[top(layer.attention[ctx], n_keep)]
            out.append(torch.sort(torch.cat((is_focus.nonzero().squeeze(1), chosen))).values)
        return out
