"""SPpruner: focus-then-context visual token reduction (a reconstruction).

Seed paper: "Focus-then-Context: Subject-Centric Progressive Visual Token Reduction for
Vision-Language Models" (arXiv 2605.20950). **Only the abstract is public**: there are no
equations and no code. This module is this library's reconstruction; it follows the abstract's
structure (subject spectrum -> context-aware structural scanning -> subject integrity ->
progressive reduction) and every concrete choice below is ours, made so that each stage is a
separate function and option (:class:`Stages`) that can be replaced when the full paper appears.
The defaults are chosen by the stage ablation on the two testbed models (``docs/methods.md``).

Per region grid ``(h, w)`` with ``N = h w`` tokens ``X`` (projector outputs), saliency ``a``, text
embeddings ``Q`` and budget ``K < N``:

1. **Focus identification** (:func:`focus_scores`, :func:`focus_order`). ``s_v`` = min-max
   normalised ``a``; relevance ``r_i = max_j cos(X_i, Q_j)``. ``focus="calibrated"`` (default):
   the relevance counts only where it stands out against the image's own tokens,
   ``c = clip((z - 2) / 2, 0, 1)`` with ``z`` the z-score of ``r`` over the region (:func:`contrast`),
   and ``f = 1 - (1 - s_v)(1 - c)`` (``union="soft"``: salient OR clearly relevant; ``"product"``,
   ``"mean"`` the other unions). A relevance that points at the background, or at nothing, leaves
   ``f = s_v``. ``"union"`` uses the min-max normalised ``r`` instead of ``c`` (an uninformative
   relevance then has as much say as the saliency); ``"saliency"`` / ``"relevance"`` one signal
   alone. Without text ``f = s_v``; without saliency ``f`` is the relevance term. With
   ``subjects`` (default) the local maxima of ``f`` on the grid (3 x 3, above the mean ``f``),
   one per subject, rank before the other tokens; the focus set is the first ``K_f = round(rho K)``.
2. **Structural scanning** (:func:`scan_order`, :func:`scan_runs`, :func:`place_context`). The
   other tokens are visited in serpentine row order (or ``w x w`` windows visited in serpentine
   order, serpentine inside each window) and cut into ``K_c = K - K_f`` contiguous runs whose
   non-focus counts differ by at most one. Each run gives one context token at the run's most
   salient member (``place="salient"``; ``"nearest"``: the member nearest (L2) to the run's
   mean; ``"centroid"``: the member nearest the run's centroid on the grid): that member's own
   feature (``context="keep"``) or the run's mean weighted by ``softmax(s_v)`` (``"merge"``).
   A context token sits at its member's position (under M-RoPE: its time, row and column).
3. **Subject integrity** (:func:`aggregate_neighbours`). Each non-focus 4-neighbour of a focus
   token is also folded into its most similar adjacent focus token:
   ``x_f <- (x_f + Σ w_i x_i) / (1 + Σ w_i)``, ``w_i = max(cos(x_i, x_f), 0)``.
4. **Progressive option** (``llm_layer``). Inside the LLM, at the input of ``llm_layer``, every
   focus token is kept and only the top ``llm_keep`` share of the context tokens by the last text
   token's attention (FastV style).

Our choices (not in the abstract): the calibration of the relevance (z-score threshold 2, full
weight at 4) and the subject peaks; context tokens that keep a representative rather than merging
the run (merging averages a run's object and background tokens into a feature the LLM never saw);
the min-max eps ``1e-6``; Python's ``round`` (half to even) for ``K_f``; ties everywhere to the
lowest raster index; softmax over the normalised ``s_v``; a neighbour token contributes both to its
run and to its focus token, and its ``assignment`` is the focus token's slot (0 weight: the run's
slot when runs merge, else dropped; a run's own placed token keeps its slot); the text is whatever
the adapter passes as ``ImageTokens.text``; with neither text nor saliency ``f`` is constant and the
focus set is the first tokens in raster order. A merged token's position is one member's, never a
fractional centroid (the session keeps each kept token's own position ids). Each crop of a
multi-crop image is a region: the image's budget is shared across crops in proportion to their
token counts and each crop is reduced on its own grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from vlmprune.core.grid import SCANS, argmin_per_run, local_peaks, neighbours, scan_order
from vlmprune.core.method import Method
from vlmprune.core.ops import minmax, ranked, top
from vlmprune.core.options import check_count, choice, flag, integer, number, option
from vlmprune.core.registry import register
from vlmprune.core.types import ImageTokens, Kept, LayerTokens

FOCI = ("calibrated", "union", "saliency", "relevance")
UNIONS = ("soft", "product", "mean")
CONTEXTS = ("keep", "merge")
PLACES = ("salient", "nearest", "centroid")
#: z-score of the relevance (against the image's own tokens) from which it counts, full weight at 2x
CONTRAST = 2.0

__all__ = ["SPPruner", "Stages", "focus_scores", "relevance", "scan_order", "scan_runs", "select"]


def _choice(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}")


def _flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool, got {value!r}")


@dataclass(frozen=True)
class Stages:
    """The options of the pre-LLM stage, validated on construction (module docstring)."""

    rho: float = 0.875
    focus: str = "calibrated"
    union: str = "soft"
    subjects: bool = True
    context: str = "keep"
    place: str = "salient"
    scan: str = "serpentine"
    window: int = 4
    merge_neighbors: bool = True

    def __post_init__(self) -> None:
        rho = self.rho
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 <= rho <= 1.0:
            raise ValueError(f"`rho` must be a number in [0, 1], got {rho!r}")
        _choice("focus", self.focus, FOCI)
        _choice("union", self.union, UNIONS)
        _choice("context", self.context, CONTEXTS)
        _choice("place", self.place, PLACES)
        _choice("scan", self.scan, SCANS)
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"`window` must be an int >= 1, got {self.window!r}")
        _flag("subjects", self.subjects)
        _flag("merge_neighbors", self.merge_neighbors)


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


def contrast(r: torch.Tensor) -> torch.Tensor:
    """(N,) relevance -> (N,) in [0, 1]: its z-score against the image's own tokens, 0 below
    ``CONTRAST``, rising linearly to 1 at ``2 * CONTRAST``. A relevance that singles out no token
    (flat, or pointing at the background that most tokens are) scores 0 everywhere."""
    z = (r - r.mean()) / (r.std(unbiased=False) + 1e-6)
    return ((z - CONTRAST) / CONTRAST).clamp(0.0, 1.0)


def focus_scores(
    features: torch.Tensor,
    saliency: torch.Tensor | None,
    text: torch.Tensor | None,
    union: str = "soft",
    focus: str = "calibrated",
) -> torch.Tensor:
    """(N,) float32 subject score ``f`` in [0, 1] from saliency and text relevance (module docstring, step 1)."""
    x = features.float()
    s_v = None if saliency is None else minmax(saliency.to(features.device).reshape(-1))
    return _focus_scores(x, _norms(x), s_v, text, union, focus)


def _focus_scores(
    x: torch.Tensor,
    norms: torch.Tensor,
    s_v: torch.Tensor | None,
    text: torch.Tensor | None,
    union: str,
    focus: str = "calibrated",
) -> torch.Tensor:
    n = x.shape[0]
    s_r = None
    if focus != "saliency" and text is not None and text.shape[0] > 0:
        r = _relevance(x, norms, text)  # (N,)
        s_r = contrast(r) if focus == "calibrated" else minmax(r)
    if focus == "relevance" and s_r is not None:
        return s_r
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


def focus_order(f: torch.Tensor, grid: tuple[int, int], subjects: bool) -> torch.Tensor:
    """(N,) indices in focus rank order: with ``subjects``, the local peaks of ``f`` (one per
    subject, :func:`vlmprune.core.grid.local_peaks`) by ``f`` first, then the rest by ``f``;
    without, all by ``f``. Ties to the lowest index."""
    if not subjects:
        return ranked(f)
    return ranked(f + 2.0 * local_peaks(f, grid).float())  # f in [0, 1]: every peak ranks first


# -- 2. structural scanning ----------------------------------------------------------------------
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
    x: torch.Tensor,
    sq: torch.Tensor,
    means: torch.Tensor,
    s_v: torch.Tensor | None,
    members: torch.Tensor,
    run: torch.Tensor,
    grid: tuple[int, int],
    place: str = "salient",
) -> torch.Tensor:
    """(K_c,) raster index of each run's context token (ties to the lowest index): the member of
    highest saliency (``"salient"``; without saliency the first in raster order), the member
    nearest (L2) to the run's mean (``"nearest"``), or the member nearest the run's centroid on
    the grid (``"centroid"``). x: (N, D), sq: (N,) squared norms, means: (K_c, D)."""
    k_c = means.shape[0]
    if place == "salient":
        cost = torch.zeros(members.numel(), device=x.device) if s_v is None else -s_v[members]  # (m,)
    elif place == "nearest":
        dots = (x @ means.T)[members, run]  # (N, D) @ (D, K_c) -> (N, K_c) -> (m,)
        cost = sq[members] - 2.0 * dots + means.square().sum(dim=1)[run]  # (m,) |x - mean|²
    else:
        w = int(grid[1])
        rc = torch.stack((members // w, members % w), dim=1).float()  # (m, 2) row, column
        size = torch.zeros(k_c, device=x.device).index_add_(0, run, torch.ones_like(rc[:, 0]))
        centre = torch.zeros(k_c, 2, device=x.device).index_add_(0, run, rc) / size[:, None]  # (K_c, 2)
        cost = (rc - centre[run]).square().sum(dim=1)  # (m,)
    return argmin_per_run(cost, members, run, k_c)


# -- 3. subject integrity ------------------------------------------------------------------------
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
    nb = neighbours(h, w, x.device)  # (N, 4)
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
def _checked(features, saliency, grid, budget) -> tuple[int, int, int, int]:
    """``(n, d, h, w)`` of valid inputs, else ``ValueError`` naming the argument."""
    if features.dim() != 2:
        raise ValueError(f"`features` must be (N, D), got shape {tuple(features.shape)}")
    n, d = features.shape
    h, w = int(grid[0]), int(grid[1])
    if h * w != n:
        raise ValueError(f"`grid` {tuple(grid)} does not match {n} tokens")
    budget = check_count(budget)
    if saliency is not None and saliency.numel() != n:
        raise ValueError(f"`saliency` must have {n} entries, got shape {tuple(saliency.shape)}")
    return n, d, h, w


def _select(
    features: torch.Tensor,
    saliency: torch.Tensor | None,
    text: torch.Tensor | None,
    grid: tuple[int, int],
    budget: int,
    st: Stages,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`select` plus the (N,) bool focus mask."""
    n, d, h, w = _checked(features, saliency, grid, budget)
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

    # 1. focus: the first K_f of the subject order
    k_f = min(k, max(0, round(st.rho * k)))
    k_c = k - k_f
    f = _focus_scores(x, norms, s_v, text, st.union, st.focus)  # (N,)
    focus = focus_order(f, (h, w), st.subjects)[:k_f]  # (K_f,) in rank order
    is_focus[focus] = True

    # 2. context: K_c runs of the scan, each a softmax(s_v)-weighted mean placed on a member
    members, run = scan_runs(scan_order((h, w), st.scan, st.window).to(device), is_focus, k_c)
    ctx_w = context_weights(s_v, members, run, k_c, n) if k_c > 0 else x.new_zeros(0, n)  # (K_c, N)

    # 3. subject integrity: folded neighbours join their focus token's weights
    if st.merge_neighbors and k_f > 0:
        target, weight = neighbour_weights(x, norms, is_focus, (h, w))  # (N,), (N,)
    else:
        target, weight = torch.full((n,), -1, dtype=torch.long, device=device), x.new_zeros(n)
    sub_w = _subject_weights(focus, target, weight, n)  # (K_f, N)

    merged = _mix(torch.cat((sub_w, ctx_w)), x)  # (K, N) @ (N, D) -> (K, D): focus rows, then context rows
    rep = focus.new_empty(0)
    if k_c > 0:
        rep = place_context(x, sq, merged[k_f:], s_v, members, run, (h, w), st.place)  # (K_c,)
        if st.context == "keep":
            merged[k_f:] = x[rep]  # the placed member itself

    kept, order = torch.sort(torch.cat((focus, rep)))  # (K,)
    feats = merged[order]  # (K, D) aligned with kept
    slot = torch.full((n,), -1, dtype=torch.long, device=device)
    slot[kept] = torch.arange(k, device=device)
    assignment = torch.full((n,), -1, dtype=torch.long, device=device)
    if k_c > 0 and st.context == "merge":
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
    **options,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPpruner on one region grid.

    Args:
        features: (N, D) projector outputs in raster order over ``grid = (h, w)``.
        saliency: (N,) vision-encoder saliency or None (uniform). text: (M, D) text embeddings or
            None (relevance omitted). budget: tokens kept, ``>= N`` keeps all. ``options``: the
            fields of :class:`Stages` (``rho``, ``focus``, ``union``, ``subjects``, ``context``,
            ``place``, ``scan``, ``window``, ``merge_neighbors``).

    Returns:
        ``kept`` (K,) sorted indices; ``features`` (K, D) the replacement features aligned with
        ``kept`` (input dtype; each a convex combination of input tokens); ``assignment`` (N,) slot
        in ``0..K-1`` each token was folded into (-1: dropped).
    """
    kept, feats, assignment, _ = _select(features, saliency, text, grid, budget, Stages(**options))
    return kept, feats, assignment


# -- the method ----------------------------------------------------------------------------------
@register
@dataclass
class SPPruner(Method):
    """SPpruner (arXiv 2605.20950, a reconstruction from the abstract): subject tokens plus scanned context tokens.

    Only the paper's abstract is public; the stages follow it (focus from saliency and semantic
    relevance, then context by structured scanning) and every rule is ours, chosen by the stage
    ablation on the testbed models (``docs/methods.md``). See the module docstring for each choice.

    Keeps ``round(rho K)`` subject (focus) tokens, local peaks of the subject score first, the
    score being the soft union of saliency and a calibrated text relevance (it counts only where
    it stands out against the image's own tokens, so a relevance that points at the background
    cannot outvote the saliency); subject edges are folded into adjacent focus tokens; the rest of
    the grid is cut into ``K - round(rho K)`` contiguous runs of a structured scan, each kept as
    its most salient member. Options (:class:`Stages`, each validated): ``rho``, ``focus``
    ("calibrated" | "union" | "saliency" | "relevance"), ``union`` ("soft" | "product" | "mean"),
    ``subjects``, ``context`` ("keep" | "merge"), ``place`` ("salient" | "nearest" | "centroid"),
    ``scan`` ("serpentine" | "window"), ``window``, ``merge_neighbors``; ``llm_layer`` (None:
    off) with ``llm_keep`` for the progressive pass that keeps every focus token and the top
    ``llm_keep`` share of the context tokens by the last text token's attention at that layer.
    Multi-crop images share the budget across crops in proportion to their token counts. The
    focus tokens reach the in-LLM stage as ``Kept.pinned``; the method keeps no state between
    calls or stages.
    """

    rho: float = option(0.875, number(0.0, 1.0))
    focus: str = option("calibrated", choice(*FOCI))
    union: str = option("soft", choice(*UNIONS))
    subjects: bool = option(True, flag())
    context: str = option("keep", choice(*CONTEXTS))
    place: str = option("salient", choice(*PLACES))
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

    def stages(self) -> Stages:
        """The pre-LLM options as a validated :class:`Stages`."""
        names = ("rho", "focus", "union", "subjects", "context", "place", "scan", "window", "merge_neighbors")
        return Stages(**{k: getattr(self, k) for k in names})

    def select_unit(self, unit: ImageTokens) -> Kept:
        kept, merged, assignment, is_focus = _select(
            unit.features, unit.saliency, unit.text, unit.grid, unit.budget, self.stages()
        )
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
