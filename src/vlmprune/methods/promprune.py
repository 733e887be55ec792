"""PromPrune: entropy-budgeted split between salient tokens and a diverse (DPP) cover.

Implements Lee et al., "Balancing Saliency and Coverage: Semantic Prominence-Aware Budgeting for
Visual Token Compression in VLMs" (arXiv 2603.14892) exactly as specified in ``methods.md``, which
was checked against the authors' released code, which covers one single-crop CLIP model (read,
not copied). Per image (or crop)
with ``N`` tokens ``X`` (N, D) (projector outputs), saliency ``a`` (N,) and budget ``K < N``:

1. ``r = (a - min a) / (max a - min a + 1e-6)``.
2. Normalised spectral entropy ``Hn`` of the centred, row-normalised tokens (float32): eigenvalues
   of ``Fc Fcᵀ`` (``N <= D``) or ``Fcᵀ Fc``, clamped at ``1e-12``, as a distribution ``p``;
   ``Hn = -Σ p log p / log d``.
3. ``T_sal = clip(round((kr_min + (1 - sigmoid(clamp((Hn - mu) / tau, ±20))) (kr_max - kr_min)) K),
   0, K)``, ``T_cov = K - T_sal``: a low-entropy image (few prominent subjects) gets more salient
   tokens, a cluttered one more coverage tokens.
4. Stage 1: the ``T_sal`` most salient tokens (ties: lowest index).
5. Stage 2: greedy DPP MAP (Chen et al. 2018, incremental Cholesky) with the cosine kernel of the
   other tokens; the first pick is the token least similar to every stage-1 token (``T_sal > 0``).

Differences from the released code (all deliberate, see ``methods.md``):

- Kept tokens enter the LLM in **raster order** (the reference code uses selection order).
- Works on **multi-crop (anyres) images** per crop: the entropy and the selection are per crop,
  and the image's budget is shared across crops in proportion to their token counts (the released
  code fails on the packed anyres layout). On **towers without a CLS token** the saliency is the
  CLS-free signal the model's adapter computes (e.g. attention received in the last
  full-attention block, summed per merge group).
- Determinism where the reference depends on floating-point noise or unspecified order: stage-1
  ties go to the lowest index (``torch.topk`` leaves them unspecified); the DPP starts from the
  exact kernel diagonal (1 for every non-zero token, not the rounding noise of a float32 GEMM
  diagonal, so with ``T_sal = 0`` the first pick is the lowest index); a picked token is never
  picked again (the reference's ``clamp_min(0)`` resets its ``-inf`` marker, so on rank-deficient
  inputs it can return duplicates); once the kernel's rank is spent (every remaining ``d²`` at or
  below ``1e-5``, where exact arithmetic gives ``d² = 0``, a tie) the next pick is the lowest
  remaining index instead of the argmax of float32 rounding noise (never the case while ``K`` is
  below the rank of the tokens, e.g. 4096-d tokens at K <= 576); ``r`` is computed in float32 whatever
  the input dtype.
- Batched: all images (crops) with the same token count are selected together with tensor ops
  (one Gram matrix per image serves both the entropy and the DPP kernel when ``N <= D``; with
  more tokens than dimensions the entropy takes the (D, D) side and the DPP the kernel's (N, D)
  factor, :func:`vlmprune.core.greedy.dpp_factor_steps`). On an accelerator the greedy DPP runs
  a fixed ``K`` steps of five tensor operations each (:func:`vlmprune.core.greedy.dpp_steps`;
  steps past an image's ``T_cov`` are discarded on the device) and one host sync, which checks
  that every accepted pivot stayed above the rank floor; where one did not, the picks are kept up
  to that step and the floor rule above fills the rest, with tensor operations. On the CPU, where a read stalls nothing, it first reads the largest ``T_cov``
  and runs only that many steps (the same picks, one more read).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from vlmprune.core.greedy import dpp_factor_steps, dpp_steps, reads_on_host
from vlmprune.core.method import Method
from vlmprune.core.ops import RANK_EPS, ranked
from vlmprune.core.options import check_count, number, option
from vlmprune.core.registry import register
from vlmprune.core.types import ImageTokens, Kept

ENTROPY_EPS = 1e-8  # row normalisation eps of the entropy features
KERNEL_EPS = 1e-6  # row normalisation eps of the DPP features


# -- parameters ----------------------------------------------------------------------------------
def check_params(kr_min: float, kr_max: float, mu: float, tau: float) -> None:
    """Raise ``ValueError`` naming the offending parameter."""
    for name, value in (("kr_min", kr_min), ("kr_max", kr_max), ("mu", mu), ("tau", tau)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    if not 0.0 <= kr_min <= 1.0:
        raise ValueError(f"`kr_min` must be in [0, 1], got {kr_min}")
    if not kr_min <= kr_max <= 1.0:
        raise ValueError(f"`kr_max` must be in [kr_min, 1] = [{kr_min}, 1], got {kr_max}")
    if tau < 0.0:
        raise ValueError(f"`tau` must be >= 0, got {tau}")


def _check_budget(budget: int) -> int:
    return check_count(budget)


# -- building blocks -----------------------------------------------------------------------------
def _gram(a: torch.Tensor) -> torch.Tensor:
    """(B, N, D) -> (B, N, N) ``a aᵀ``, one batched GEMM (one launch on a GPU)."""
    return torch.bmm(a, a.transpose(1, 2))


def _cosine_gram(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N, D) float32 -> (``F Fᵀ`` (B, N, N) of the rows normalised with eps 1e-8, norms (B, N),
    norms clamped at 1e-8 (B, N)).

    One GEMM on the raw rows, then scaled by the inverse norms taken from its diagonal: the tokens
    are read once, by the GEMM (no normalised copy).
    """
    s = _gram(x)  # (B, N, N)
    norm = torch.diagonal(s, dim1=1, dim2=2).sqrt()  # (B, N) |x_i|: a sum of squares, never negative
    norm8 = norm.clamp_min(ENTROPY_EPS)
    inv = norm8.reciprocal()
    s.mul_(inv.unsqueeze(2)).mul_(inv.unsqueeze(1))
    return s, norm, norm8


def _double_centre(s: torch.Tensor) -> torch.Tensor:
    """(B, N, N) ``F Fᵀ`` -> (B, N, N) ``Fc Fcᵀ`` with ``Fc = F - mean_over_tokens(F)``.

    ``fc_i . fc_j = s_ij - m_i - m_j + mean(m)`` with ``m_i = f_i . mean(F)`` the row means of ``s``.
    """
    m = s.mean(dim=2, keepdim=True)  # (B, N, N) -> (B, N, 1)
    return (s - m).sub_(m.mT - m.mean(dim=1, keepdim=True))  # (B, 1, N) - (B, 1, 1)


def _centred_gram_small_d(x: torch.Tensor) -> torch.Tensor:
    """(B, N, D) float32 with ``N > D`` -> (B, D, D) ``Fcᵀ Fc``."""
    f8 = F.normalize(x, dim=-1, eps=ENTROPY_EPS)
    fc = f8 - f8.mean(dim=1, keepdim=True)  # (B, N, D)
    return _gram(fc.transpose(1, 2))  # (B, D, N) @ (B, N, D) -> (B, D, D)


def _entropy_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """(B, d, d) symmetric PSD -> (B, 1) normalised spectral entropy ``Hn`` (float32)."""
    lam = torch.linalg.eigvalsh(gram).clamp_min(1e-12)  # (B, d)
    p = lam / lam.sum(dim=-1, keepdim=True)  # a sum of d clamped values: at least d * 1e-12
    h = torch.special.entr(p).sum(dim=-1, keepdim=True)  # -p log p: (B, d) -> (B, 1)
    d = lam.shape[-1]
    return h / float(math.log(d) if d > 1 else 1.0)


def _as_batch(features: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if features.dim() == 2:
        return features.unsqueeze(0), True  # (N, D) -> (1, N, D)
    if features.dim() == 3:
        return features, False
    raise ValueError(f"`features` must be (N, D) or (B, N, D), got shape {tuple(features.shape)}")


@torch.no_grad()
def spectral_entropy(features: torch.Tensor) -> torch.Tensor:
    """Normalised spectral entropy ``Hn`` in [0, 1] of (N, D) -> () or (B, N, D) -> (B,) tokens.

    float32 whatever the input dtype, no grad. ``F`` = rows normalised (eps 1e-8), centred over
    the tokens; eigenvalues of ``Fc Fcᵀ`` (``N <= D``) or ``Fcᵀ Fc`` clamped at 1e-12, as a
    distribution; entropy divided by ``log d`` (1 when d = 1).
    """
    x, single = _as_batch(features)
    if x.shape[1] == 0 or x.shape[2] == 0:
        out = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        return out[0] if single else out
    x = x.float()
    if x.shape[1] <= x.shape[2]:
        hn = _entropy_from_gram(_double_centre(_cosine_gram(x)[0]))  # (B, N, N) -> (B, 1)
    else:
        hn = _entropy_from_gram(_centred_gram_small_d(x))  # (B, D, D) -> (B, 1)
    return hn[0, 0] if single else hn[:, 0]


def _saliency_count(hn: torch.Tensor, k: torch.Tensor, kr_min: float, kr_max: float, mu: float, tau: float):
    """Entropies and float32 budgets, both (B,) or both (B, 1) -> ``T_sal`` of their shape, whole
    numbers in float32 (float32 arithmetic, round half to even). ``0 <= T_sal <= K`` holds without
    a clamp: ``r_local`` lies in ``[kr_min, kr_max]`` up to one rounding, within ``[0, 1]``."""
    z = ((hn - mu) / (tau + 1e-12)).clamp(-20.0, 20.0)
    r_local = kr_min + (1.0 - torch.sigmoid(z)) * (kr_max - kr_min)
    return torch.round(r_local * k)


@torch.no_grad()
def split_budget(
    features: torch.Tensor,
    budget: int,
    kr_min: float = 0.0,
    kr_max: float = 1.0,
    mu: float = 0.42,
    tau: float = 0.02,
):
    """``(T_sal, T_cov)`` of ``K = min(budget, N)``: ints for (N, D) features, (B,) LongTensors for
    (B, N, D). When ``budget >= N`` :func:`select` keeps every token whatever the split."""
    check_params(kr_min, kr_max, mu, tau)
    budget = _check_budget(budget)
    x, single = _as_batch(features)
    k = torch.full((x.shape[0],), min(budget, x.shape[1]), dtype=torch.long, device=x.device)
    t_sal = _saliency_count(spectral_entropy(x), k.float(), kr_min, kr_max, mu, tau).long()
    t_cov = k - t_sal
    if single:
        return int(t_sal[0]), int(t_cov[0])
    return t_sal, t_cov


def _normalise_saliency(saliency: torch.Tensor | None, b: int, n: int, device) -> torch.Tensor:
    """(B, N) any dtype or None -> (B, N) float32 ``(a - min) / (max - min + 1e-6)`` (None: zeros)."""
    if saliency is None:
        return torch.zeros(b, n, dtype=torch.float32, device=device)
    if tuple(saliency.shape) != (b, n):
        raise ValueError(f"`saliency` must have shape {(b, n)}, got {tuple(saliency.shape)}")
    a = saliency.to(device=device, dtype=torch.float32)
    lo, hi = torch.aminmax(a, dim=-1, keepdim=True)  # (B, 1) each
    return (a - lo) / (hi - lo + 1e-6)


@torch.no_grad()
def _select_rows(
    x: torch.Tensor,
    r: torch.Tensor,
    k: torch.Tensor,
    kr_min: float,
    kr_max: float,
    mu: float,
    tau: float,
    steps: int,
) -> torch.Tensor:
    """The batched core on images that all need a selection (``0 < K_b < N``).

    Args:
        x: (B, N, D) float32 features (read only). r: (B, N) normalised saliency.
        k: (B, 1) budgets, whole numbers in float32; ``steps`` their maximum (a Python int: no
            host sync).

    Returns:
        (B, N) int32, 1 for the kept tokens (exactly ``K_b`` per row), 0 for the others.
    """
    b, n, d = x.shape
    k_max = steps  # T_sal <= K <= k_max
    if n <= d:  # one (N, N) Gram matrix per image: the spectral entropy and the DPP's cosine kernel
        kernel, norm, norm8 = _cosine_gram(x)  # (B, N, N), (B, N), (B, N)
        hn = _entropy_from_gram(_double_centre(kernel))  # (B, 1)
    else:  # more tokens than dimensions: the (D, D) side for the entropy, the kernel's factor for the DPP
        kernel, norm = None, x.square().sum(dim=2).sqrt()  # (B, N) |x_i|
        norm8 = norm.clamp_min(ENTROPY_EPS)
        hn = _entropy_from_gram(_centred_gram_small_d(x))  # (B, 1)
    t_sal = _saliency_count(hn, k, kr_min, kr_max, mu, tau)  # (B, 1) whole numbers in float32
    t_cov = k - t_sal  # (B, 1)

    # eps 1e-6 rows = eps 1e-8 rows * scale; scale is exactly 1 for every row of norm >= 1e-6
    norm6 = norm.clamp_min(KERNEL_EPS)
    scale = norm8 / norm6  # (B, N)
    # exact diagonal of the kernel: 1 for every token of norm >= 1e-6, less for tinier ones, 0 for zero
    d2 = (norm / norm6).square()  # (B, N)

    # Stage 1: top T_sal by r, ties to the lowest index (stable descending sort).
    order = ranked(r)  # (B, N) most salient first
    rank = order.argsort(dim=1)  # (B, N): the rank of each token (a permutation's inverse)
    salient = rank < t_sal  # (B, N)

    # Stage 2: greedy DPP MAP on the other tokens, all images at once, K_max steps whatever T_cov on
    # an accelerator (no host sync; steps past an image's T_cov are discarded). d² is -inf for a
    # stage-1 token.
    d2 = torch.threshold(d2, RANK_EPS, 0.0).masked_fill_(salient, float("-inf"))  # (B, N): <= 1e-5 is 0
    if reads_on_host(t_cov):  # the CPU: run only the steps some image uses (a read, not a stall)
        steps = int(t_cov.max() if t_cov.numel() > 1 else t_cov)
    if steps == 0:
        return salient.int()
    if kernel is not None:
        residual = _dpp_kernel(kernel, scale)  # in place: the greedy steps overwrite it
        # the remaining token least like any salient one: argmin_j max_{s in S_sal} L[j, s]
        overlap = torch.where(salient.unsqueeze(1), residual, float("-inf")).amax(dim=2)  # (B, N)
    else:
        rows = x / norm6.unsqueeze(2)  # (B, N, D) the kernel's factor: unit rows (eps 1e-6)
        overlap = _overlap(rows, order, t_sal, k_max)
    seed = overlap.masked_fill_(salient, float("inf")).argmin(dim=1)  # (B,)
    seed = torch.where(salient.any(dim=1), seed, d2.argmax(dim=1))  # no salient token: the largest d²
    if kernel is not None:
        residual.diagonal(dim1=1, dim2=2).copy_(d2)
        picks, pivots = dpp_steps(residual, steps, first=seed)  # (B, S), (B, S)
    else:  # the kernel's rank is at most D: pivots after D steps are rounding noise
        picks, pivots = dpp_factor_steps(rows, d2.clone(), min(steps, d), first=seed)  # (B, S), (B, S)
    if picks.shape[1] < steps:  # fewer steps than T_cov may need: the floor rule fills the rest
        return _with_floor_fill(salient, picks, pivots, t_cov)
    valid = torch.arange(steps, device=x.device) < t_cov  # (B, S): step i < T_cov
    if not bool((valid <= (pivots > RANK_EPS)).all()):  # the one host sync: the kernel's rank ran out
        return _with_floor_fill(salient, picks, pivots, t_cov)
    # 1 for a stage-1 token or a valid pick; a discarded step (valid 0) changes nothing
    return salient.int().scatter_reduce_(1, picks, valid.int(), "amax")  # (B, N)


def _with_floor_fill(salient, picks, pivots, t_cov) -> torch.Tensor:
    """(B, N) int32 kept: the stage-1 tokens, the DPP picks up to ``T_cov`` while their ``d²`` is
    above the rank floor (the seed always: it is chosen, not ranked), then, once the kernel's rank
    is spent (every remaining ``d²`` at or below ``1e-5`` counts as 0, a tie), the lowest remaining
    indices up to ``T_cov``: what one Cholesky row per step with that floor picks. Tensor
    operations only (no host sync), no (N, N) buffer."""
    steps = picks.shape[1]
    above = pivots > RANK_EPS  # (B, S)
    above[:, 0] = True  # the seed
    take = above.cumprod(dim=1) * (torch.arange(steps, device=picks.device) < t_cov)  # (B, S) 0/1
    kept = salient.long().scatter_reduce_(1, picks, take, "amax")  # (B, N)
    free = kept == 0
    need = t_cov - take.sum(dim=1, keepdim=True)  # (B, 1) picks left to the floor rule
    return kept.masked_fill_(free & (free.cumsum(dim=1) <= need), 1)  # the lowest free indices


def _overlap(rows: torch.Tensor, order: torch.Tensor, t_sal: torch.Tensor, most: int) -> torch.Tensor:
    """(B, N): each token's largest cosine to a stage-1 token, from the unit ``rows`` (B, N, D),
    the saliency ranking ``order`` (B, N) and ``t_sal`` (B, 1), at most ``most`` stage-1 tokens:
    an (N, most) block per image, no (N, N) kernel."""
    first = order[:, : max(1, min(most, order.shape[1]))]  # (B, T) the most salient tokens
    picked = rows.gather(1, first.unsqueeze(2).expand(-1, -1, rows.shape[2]))  # (B, T, D)
    cos = torch.bmm(rows, picked.transpose(1, 2))  # (B, N, D) @ (B, D, T) -> (B, N, T)
    stage1 = torch.arange(first.shape[1], device=rows.device) < t_sal  # (B, T): within T_sal
    return cos.masked_fill_(~stage1.unsqueeze(1), float("-inf")).amax(dim=2)  # (B, N, T) -> (B, N)


def _dpp_kernel(kernel: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(B, N, N) eps-1e-8 cosine kernel, (B, N) scale -> the (B, N, N) eps-1e-6 DPP kernel, in
    place (exactly the input where ``scale == 1``; no new N x N buffer)."""
    return kernel.mul_(scale.unsqueeze(2)).mul_(scale.unsqueeze(1))


@torch.no_grad()
def select_rows(
    features: torch.Tensor,
    saliency: torch.Tensor | None,
    budgets: Sequence[int],
    kr_min: float = 0.0,
    kr_max: float = 1.0,
    mu: float = 0.42,
    tau: float = 0.02,
) -> list[torch.Tensor]:
    """PromPrune on a batch of images with the same ``N`` and a budget per image.

    Args:
        features: (B, N, D) projector outputs, any float dtype. saliency: (B, N) or None (uniform).
        budgets: B ints ``>= 0``; ``>= N`` keeps every token.

    Returns:
        B sorted 1-D LongTensors of ``min(K_b, N)`` kept indices.
    """
    check_params(kr_min, kr_max, mu, tau)
    x, _ = _as_batch(features)
    b, n, _ = x.shape
    if len(budgets) != b:
        raise ValueError(f"`budgets` must have one entry per image ({b}), got {len(budgets)}")
    ks = [min(_check_budget(k), n) for k in budgets]
    device = x.device
    r = _normalise_saliency(saliency, b, n, device)
    # K >= N keeps every token, K = 0 none; the rest are selected together
    todo = [i for i, k in enumerate(ks) if 0 < k < n]
    out = [None if i in todo else torch.arange(k, device=device) for i, k in enumerate(ks)]
    if todo:
        if len(todo) < b:
            idx = torch.tensor(todo, device=device)
            x, r = x[idx], r[idx]  # (B', N, D), (B', N)
        k_t = torch.tensor([[ks[i]] for i in todo], dtype=torch.float32, device=device)  # (B', 1)
        steps = max(ks[i] for i in todo)
        kept = _select_rows(x.float(), r, k_t, kr_min, kr_max, mu, tau, steps)  # (B', N) 0/1
        # kept indices first, each row in ascending order (a stable sort: no host sync)
        cols = torch.sort(kept, dim=1, descending=True, stable=True).indices  # (B', N)
        for row, i in enumerate(todo):
            out[i] = cols[row, : ks[i]]
    return out


def select_batch(
    features: torch.Tensor,
    saliency: torch.Tensor | None,
    budget: int,
    kr_min: float = 0.0,
    kr_max: float = 1.0,
    mu: float = 0.42,
    tau: float = 0.02,
) -> torch.Tensor:
    """PromPrune on (B, N, D) features and (B, N) saliency -> (B, min(budget, N)) sorted indices.

    One batched selection (no loop over images; the ``T_cov`` greedy DPP steps are the only loop).
    """
    if features.dim() != 3:
        raise ValueError(f"`features` must be (B, N, D), got shape {tuple(features.shape)}")
    budget = _check_budget(budget)
    b, n, _ = features.shape
    rows = select_rows(features, saliency, [budget] * b, kr_min, kr_max, mu, tau)
    k = min(budget, n)
    if b == 0:
        return torch.empty(0, k, dtype=torch.long, device=features.device)
    return torch.stack(rows)  # B x (K,) -> (B, K)


def select(
    features: torch.Tensor,
    saliency: torch.Tensor | None,
    budget: int,
    kr_min: float = 0.0,
    kr_max: float = 1.0,
    mu: float = 0.42,
    tau: float = 0.02,
) -> torch.Tensor:
    """PromPrune on one image: (N, D) features, (N,) saliency -> (min(budget, N),) sorted indices.

    (B, N, D) / (B, N) inputs are passed to :func:`select_batch`. ``saliency=None``: uniform.
    """
    if features.dim() == 3:
        return select_batch(features, saliency, budget, kr_min, kr_max, mu, tau)
    if features.dim() != 2:
        raise ValueError(f"`features` must be (N, D), got shape {tuple(features.shape)}")
    sal = None if saliency is None else saliency.reshape(1, -1)  # (N,) -> (1, N)
    return select_rows(features.unsqueeze(0), sal, [budget], kr_min, kr_max, mu, tau)[0]


def _stack(parts: list[torch.Tensor]) -> torch.Tensor:
    """B x (N, D) -> (B, N, D) float32, without copying when the parts are evenly spaced, row-major
    views of one float32 storage (the usual case: per-image slices of one projector output)."""
    first = parts[0]
    n, d = first.shape
    same = all(
        p.dtype == torch.float32
        and p.device == first.device
        and p.stride() == (d, 1)
        and p.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        for p in parts
    )
    if same and n > 0 and d > 0:
        offsets = [p.storage_offset() for p in parts]
        step = offsets[1] - offsets[0] if len(parts) > 1 else 0
        if step >= 0 and all(b - a == step for a, b in zip(offsets, offsets[1:])):
            return first.as_strided((len(parts), n, d), (step, d, 1), offsets[0])  # a view, (B, N, D)
    return torch.stack([p.float() for p in parts])  # (B, N, D)


# -- the method ----------------------------------------------------------------------------------
@register
@dataclass
class PromPrune(Method):
    """PromPrune (arXiv 2603.14892): entropy-budgeted saliency top-k plus a greedy-DPP cover.

    ``kr_min``/``kr_max`` bound the salient share of the budget, ``mu``/``tau`` are the midpoint and
    width of the sigmoid on the normalised spectral entropy. Defaults are the authors' evaluation
    script (their lmms-eval config uses ``kr_min=0.1, kr_max=0.7``). Pre-LLM, text-agnostic, needs
    the vision-encoder saliency (CLS attention on CLIP towers; a CLS-free signal elsewhere).

    Differences from the paper's code: kept tokens in raster order (not selection order); on
    multi-crop images the entropy and selection are per crop, the image's budget shared across crops
    in proportion to their token counts; CLS-free towers use their adapter's saliency; ties and
    degenerate inputs are resolved deterministically (module docstring). Regions (crops) with the
    same token count are selected in one batch.
    """

    kr_min: float = option(0.0, number(0.0, 1.0))
    kr_max: float = option(1.0, number(0.0, 1.0))
    mu: float = option(0.42, number())
    tau: float = option(0.02, number(0.0))

    name: ClassVar[str] = "promprune"
    needs_saliency: ClassVar[bool] = True
    per_region: ClassVar[bool] = True

    def check(self) -> None:
        super().check()
        check_params(self.kr_min, self.kr_max, self.mu, self.tau)

    def select_units(self, units: list[ImageTokens]) -> list[Kept]:
        # units (image regions) of one size, selected as one batch
        n, device = units[0].num_tokens, units[0].features.device
        given = [u.saliency for u in units]
        if all(a is not None for a in given):
            sal = torch.stack(given).to(device=device, dtype=torch.float32)  # B x (N,) -> (B, N)
        else:
            sal = torch.zeros(len(units), n, dtype=torch.float32, device=device)  # (B, N)
            for row, a in enumerate(given):
                if a is not None:
                    sal[row] = a.to(device)
        feats = _stack([u.features for u in units])  # (B, N, D)
        budgets = [u.budget for u in units]
        rows = select_rows(feats, sal, budgets, self.kr_min, self.kr_max, self.mu, self.tau)
        return [Kept(indices=kept) for kept in rows]
