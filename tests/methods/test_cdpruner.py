"""CDPruner: instruction-conditioned DPP (arXiv 2506.10967), pure function and method."""

from __future__ import annotations

import math

import pytest
import torch
from dpp_reference import greedy_dpp_exact
from hypothesis import assume, given
from hypothesis import strategies as st
from method_inputs import DTYPES, SETTINGS, budget_for, make, sized

from vlmprune.core.registry import get_method
from vlmprune.core.types import ImageTokens, Region
from vlmprune.methods import cdpruner
from vlmprune.methods.cdpruner import CDPruner, greedy_dpp, quality, relevance


def reference_greedy(features: torch.Tensor, q: torch.Tensor, k: int) -> tuple[list[int], float]:
    """Greedy MAP by explicit determinants in float64: each step adds argmax det(L_{S+j})."""
    f = torch.nn.functional.normalize(features.double(), dim=-1)
    q = q.double()
    kernel = q[:, None] * (f @ f.T) * q[None, :]
    picks: list[int] = []
    margin = math.inf
    for _ in range(k):
        scores = []
        for j in range(len(f)):
            if j in picks:
                continue
            idx = picks + [j]
            scores.append((float(torch.linalg.det(kernel[idx][:, idx])), j))
        scores.sort(key=lambda t: (-t[0], t[1]))
        if len(scores) > 1:
            margin = min(margin, (scores[0][0] - scores[1][0]) / max(abs(scores[0][0]), 1e-12))
        picks.append(scores[0][1])
    return picks, margin


@SETTINGS
@given(
    n=st.integers(1, 30),
    d=st.integers(1, 8),
    m=st.integers(0, 5),
    kind=st.sampled_from(["one", "n-1", "n", "over", "any"]),
    extra=st.integers(0, 50),
    mode=st.sampled_from(["random", "ties", "constant"]),
    dtype=st.sampled_from(DTYPES),
    theta=st.sampled_from([None, 0.0, 0.5, 0.9]),
    seed=st.integers(0, 2**31 - 1),
)
def test_select_properties(n, d, m, kind, extra, mode, dtype, theta, seed):
    x = make((n, d), mode, seed).to(dtype)
    text = make((m, d), mode, seed + 1).to(dtype) if m else None
    budget = budget_for(kind, n, extra)
    kept = cdpruner.select(x, text, budget, theta)
    assert kept.dtype == torch.long and kept.shape == (min(budget, n),)
    assert torch.unique(kept).numel() == kept.numel()
    assert torch.equal(kept, torch.sort(kept).values)
    assert torch.equal(kept, cdpruner.select(x, text, budget, theta))
    up = cdpruner.select(x.float(), None if text is None else text.float(), budget, theta)
    assert torch.equal(kept, up)


@SETTINGS
@given(n=st.integers(2, 9), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_greedy_dpp_matches_determinant_greedy(n, seed, data):
    d = data.draw(st.integers(n, 12))  # full rank: no numerical exhaustion
    x = make((n, d), "random", seed)
    q = torch.rand(n, generator=torch.Generator().manual_seed(seed + 1)) + 0.2
    k = data.draw(st.integers(1, n))
    expected, margin = reference_greedy(x, q, k)
    assume(margin > 1e-3)
    assert greedy_dpp(x, q, k).tolist() == expected


def test_constant_relevance_is_the_unconditional_dpp():
    torch.manual_seed(0)
    x = torch.cat([torch.zeros(25, 1), torch.randn(25, 9)], dim=1)  # no component along e0
    text = torch.zeros(3, 10)
    text[:, 0] = torch.tensor([1.0, 2.0, 0.5])  # all along e0: relevance 0 for every token
    assert torch.equal(relevance(x, text), torch.ones(25))
    for k in (1, 5, 9, 24):
        plain = cdpruner.select(x, None, k)
        assert torch.equal(cdpruner.select(x, text, k), plain)
        assert torch.equal(plain, torch.sort(greedy_dpp(x, torch.ones(25), k)).values)
        assert torch.equal(cdpruner.select(x, torch.zeros(0, 10), k), plain)  # empty text
    # and a non-constant relevance changes the choice
    assert not torch.equal(cdpruner.select(x, torch.randn(3, 10), 5), cdpruner.select(x, None, 5))


def test_irrelevant_token_is_disfavoured():
    torch.manual_seed(1)
    n, d = 12, 8
    x = torch.zeros(n, d)
    x[:, 0] = 2.0
    x[:, 1:4] = torch.randn(n, 3)
    x[n - 1] = torch.zeros(d)
    x[n - 1, 7] = 1.0  # orthogonal to every other token and to the text
    text = torch.zeros(2, d)
    text[:, 0] = 1.0
    plain = cdpruner.select(x, None, n - 1)
    cond = cdpruner.select(x, text, n - 1)
    assert n - 1 in plain.tolist()  # the most diverse token, kept by the plain DPP...
    assert n - 1 not in cond.tolist()  # ...and dropped once relevance counts
    assert cdpruner.select(x, text, 4, theta=0.0).tolist() == cdpruner.select(x, None, 4).tolist()


def test_relevance_and_quality():
    torch.manual_seed(2)
    x, text = torch.randn(20, 6), torch.randn(4, 6)
    r = relevance(x, text)
    assert float(r.min()) == 0.0 and abs(float(r.max()) - 1.0) < 1e-6
    cos = torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    assert torch.equal(torch.argsort(r), torch.argsort(cos.mean(dim=1)))
    assert torch.equal(quality(r, None), r)
    torch.testing.assert_close(quality(r, 0.5), torch.exp(0.5 * r))
    assert torch.equal(quality(r, 0.0), torch.ones(20))


def test_rank_exhaustion_fills_by_quality():
    x = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)  # rank 2
    q = torch.tensor([0.5, 0.9, 0.7, 0.4, 0.6, 0.8])
    picks = greedy_dpp(x, q, 5).tolist()
    assert picks[:2] == [1, 5]  # best of each direction
    assert picks[2:] == [2, 4, 0]  # then by quality (0.7, 0.6, 0.5)
    assert cdpruner.select(torch.full((7, 3), 0.5), None, 4).tolist() == [0, 1, 2, 3]


def test_errors_and_method():
    with pytest.raises(ValueError, match="theta"):
        cdpruner.select(torch.randn(4, 2), None, 2, theta=1.0)
    with pytest.raises(ValueError, match="text"):
        cdpruner.select(torch.randn(4, 2), torch.randn(3, 5), 2)
    with pytest.raises(ValueError, match="theta"):
        CDPruner(budget=3, theta=1.5)
    with pytest.raises(ValueError, match="theta"):
        CDPruner(budget=3, theta="0.5")
    with pytest.raises(ValueError, match="ratio"):
        CDPruner(ratio=1.5)
    torch.manual_seed(3)
    feats, text = torch.randn(40, 6), torch.randn(5, 6)
    regions = [Region(torch.arange(10), (2, 5)), Region(torch.arange(10, 40), (5, 6))]
    image = ImageTokens(features=feats, budget=7, regions=regions, grid=(2, 5), text=text)
    m = get_method("cdpruner", budget=7)
    assert isinstance(m, CDPruner) and m.needs_text
    assert torch.equal(m.select_image(sized(m, image)).indices, cdpruner.select(feats, text, 7))  # global
    image.text = None
    assert torch.equal(m.select_image(sized(m, image)).indices, cdpruner.select(feats, None, 7))
    assert torch.equal(
        CDPruner(budget=7, theta=0.3).select_image(sized(CDPruner(budget=7, theta=0.3), image)).indices,
        cdpruner.select(feats, None, 7, 0.3),
    )


@pytest.mark.parametrize("n,d,k", [(576, 256, 192), (100, 8, 40), (50, 3, 30), (64, 64, 63)])
def test_fixed_step_dpp_equals_row_by_row(n, d, k):
    """The launch-bound-free DPP (residual kernel, fixed steps) picks what the one-Cholesky-row-
    per-step loop picks, also where the kernel's rank runs out (d < k) and the fill rule applies."""
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, d, generator=g)
        q = cdpruner.relevance(x, torch.randn(4, d, generator=g))
        assert torch.equal(cdpruner.greedy_dpp(x, q, k), greedy_dpp_exact(x, q, k))


@pytest.mark.parametrize("b,n,d,k", [(1, 300, 24, 24), (3, 200, 40, 60), (2, 90, 7, 7), (1, 500, 64, 200)])
def test_factor_dpp_picks_what_the_residual_kernel_picks(b, n, d, k):
    """With more tokens than dimensions the greedy DPP runs on the kernel's (N, D) factor: the
    same picks as on the (N, N) residual kernel, one image or a batch, with or without a forced
    first pick, and pivots equal to rounding (k <= d: the kernel's rank is not spent)."""
    from vlmprune.core.greedy import dpp_factor_steps, dpp_steps

    g = torch.Generator().manual_seed(n + d)
    rows = torch.nn.functional.normalize(torch.randn(b, n, d, generator=g), dim=-1)
    rows = rows * (torch.rand(b, n, 1, generator=g) + 0.2)  # a quality per token
    diag = (rows * rows).sum(-1)  # (B, N)
    for first in (None, torch.randint(0, n, (b,), generator=g)):
        kernel = rows @ rows.transpose(1, 2)
        kernel.diagonal(dim1=1, dim2=2).copy_(diag)
        want, want_piv = dpp_steps(kernel, min(k, d), first)
        got, got_piv = dpp_factor_steps(rows, diag.clone(), min(k, d), first)
        assert torch.equal(got, want)
        torch.testing.assert_close(got_piv, want_piv, atol=1e-5, rtol=1e-4)


def test_cdpruner_on_more_tokens_than_dimensions_matches_row_by_row():
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(2304 // 4, 64, generator=g)  # N > D: the factor form
        q = cdpruner.relevance(x, torch.randn(5, 64, generator=g))
        assert torch.equal(cdpruner.greedy_dpp(x, q, 60), greedy_dpp_exact(x, q, 60))
