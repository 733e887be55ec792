"""DivPrune: greedy max-min diversity (arXiv 2503.02175), pure function and method."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from method_inputs import DTYPES, SETTINGS, budget_for, make, sized

from vlmprune.core.registry import get_method
from vlmprune.core.types import ImageTokens, Region
from vlmprune.methods import divprune
from vlmprune.methods.divprune import DivPrune


def reference(features: torch.Tensor, k: int) -> tuple[list[int], float]:
    """Plain-Python greedy max-min in float64; also the smallest winning margin over all steps."""
    rows = features.double().tolist()
    n = len(rows)

    def dist(i: int, j: int) -> float:
        dot = sum(a * b for a, b in zip(rows[i], rows[j]))
        ni = math.sqrt(sum(a * a for a in rows[i]))
        nj = math.sqrt(sum(b * b for b in rows[j]))
        return 1.0 - dot / (max(ni, 1e-6) * max(nj, 1e-6))

    d = [[dist(i, j) for j in range(n)] for i in range(n)]
    margin = math.inf

    def best(scores: dict[int, float]) -> int:
        nonlocal margin
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
        if len(ranked) > 1:
            margin = min(margin, ranked[0][1] - ranked[1][1])
        return ranked[0][0]

    picks = [best({i: min(d[i][j] for j in range(n) if j != i) for i in range(n)})]
    while len(picks) < k:
        picks.append(best({c: min(d[s][c] for s in picks) for c in range(n) if c not in picks}))
    return sorted(picks), margin


@SETTINGS
@given(
    n=st.integers(1, 24),
    d=st.integers(1, 12),
    kind=st.sampled_from(["one", "n-1", "n", "over", "any"]),
    extra=st.integers(0, 50),
    mode=st.sampled_from(["random", "ties", "constant"]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31 - 1),
)
def test_select_properties(n, d, kind, extra, mode, dtype, seed):
    x = make((n, d), mode, seed).to(dtype)
    budget = budget_for(kind, n, extra)
    kept = divprune.select(x, budget)
    assert kept.dtype == torch.long
    assert kept.shape == (min(budget, n),)
    assert torch.unique(kept).numel() == kept.numel()
    assert torch.equal(kept, torch.sort(kept).values)
    assert kept.numel() == 0 or (0 <= int(kept.min()) and int(kept.max()) < n)
    assert torch.equal(kept, divprune.select(x, budget))  # deterministic
    # computed in float32 whatever the input dtype
    assert torch.equal(kept, divprune.select(x.float(), budget))


@SETTINGS
@given(n=st.integers(2, 10), d=st.integers(2, 6), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_matches_bruteforce_greedy(n, d, seed, data):
    x = make((n, d), "random", seed)
    k = data.draw(st.integers(1, n - 1))
    expected, margin = reference(x, k)
    assume(margin > 1e-4)  # no near-ties, where float32 and float64 may legitimately disagree
    assert divprune.select(x, k).tolist() == expected


def test_first_pick_is_the_isolated_token():
    # four tokens in a tight cluster and one far away: K=1 keeps the far one
    x = torch.tensor([[1.0, 0.0], [1.0, 0.05], [1.0, 0.1], [1.0, -0.05], [0.0, 1.0]])
    assert divprune.select(x, 1).tolist() == [4]
    # then the cluster member farthest from it
    assert divprune.select(x, 2).tolist() == [3, 4]


def test_ties_go_to_the_lowest_index():
    x = torch.eye(4).repeat(2, 1)  # rows i and i+4 identical; every token's nearest neighbour at 0
    assert divprune.select(x, 1).tolist() == [0]
    assert divprune.select(x, 4).tolist() == [0, 1, 2, 3]


@SETTINGS
@given(m=st.integers(2, 8), copies=st.integers(2, 4), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_never_keeps_a_duplicate_while_distinct_tokens_remain(m, copies, seed, data):
    base = make((m, 16), "random", seed)
    perm = torch.randperm(m * copies, generator=torch.Generator().manual_seed(seed + 1))
    x = base.repeat(copies, 1)[perm]  # every token appears `copies` times, shuffled
    source = torch.arange(m).repeat(copies)[perm]
    k = data.draw(st.integers(1, m))
    kept = divprune.select(x, k)
    assert torch.unique(source[kept]).numel() == k


@SETTINGS
@given(b=st.integers(1, 4), n=st.integers(1, 20), seed=st.integers(0, 2**31 - 1), budget=st.integers(1, 25))
def test_batched_equals_per_image(b, n, seed, budget):
    x = make((b, n, 6), "random", seed)
    batched = divprune.select(x, budget)  # (B, K)
    assert batched.shape == (b, min(budget, n))
    for i in range(b):
        assert torch.equal(batched[i], divprune.select(x[i], budget))


def test_zero_rows_and_bad_arguments():
    x = torch.zeros(5, 3)
    assert divprune.select(x, 3).tolist() == [0, 1, 2]
    assert divprune.select(torch.randn(5, 3), 0).shape == (0,)
    with pytest.raises(ValueError, match="budget"):
        divprune.select(torch.randn(5, 3), -1)
    with pytest.raises(ValueError, match="features"):
        divprune.select(torch.randn(5), 2)


def test_method_is_global_over_regions_and_batches():
    torch.manual_seed(0)
    feats = torch.randn(50, 8)
    regions = [Region(torch.arange(0, 20), (4, 5)), Region(torch.arange(20, 50), (5, 6))]
    image = ImageTokens(features=feats, budget=9, regions=regions, grid=(4, 5))
    m = DivPrune(budget=9)
    kept = m.select_image(sized(m, image))
    assert torch.equal(kept.indices, divprune.select(feats, 9))  # one global selection
    assert kept.features is None and kept.assignment is None
    others = [ImageTokens(features=torch.randn(50, 8), budget=9, regions=[], grid=(5, 10)) for _ in range(2)]
    small = ImageTokens(features=torch.randn(12, 8), budget=9, regions=[], grid=(3, 4))
    images = [image, others[0], small, others[1]]
    batched = m.select_images(sized(m, images))
    assert [len(k.indices) for k in batched] == [9, 9, 9, 9]
    for img, k in zip(images, batched):  # batched by shape and budget = each image alone, unbatched
        assert torch.equal(k.indices, divprune.select(img.features, min(9, img.num_tokens)))
        assert torch.equal(k.indices, m.select_unit(sized(m, img)).indices)
    half = DivPrune(ratio=0.5)  # the session resolves the budget once and passes it in the tokens
    assert half.keep_count(small.num_tokens) == 6
    assert half.select_image(sized(half, small)).indices.numel() == 6
    assert DivPrune(budget=100).select_image(sized(DivPrune(budget=100), small)).indices.tolist() == list(
        range(12)
    )


def test_registered():
    assert isinstance(get_method("divprune", budget=3), DivPrune)
    with pytest.raises(ValueError, match="budget"):
        DivPrune(budget=0)


@pytest.mark.parametrize("n,d,k", [(576, 64, 64), (200, 8, 150), (30, 2, 29)])
def test_dense_and_rowwise_paths_agree(n, d, k):
    """Up to 4096 tokens the distances are built once (three operations per step); above, one row
    per step: the same picks."""
    import torch.nn.functional as F

    for seed in range(4):
        x = torch.randn(2, n, d, generator=torch.Generator().manual_seed(seed))
        f = F.normalize(x, dim=-1, eps=1e-6)
        assert torch.equal(divprune.select_batched(x, k), torch.sort(divprune._rowwise(f, k), dim=1).values)
