"""VisionZip: dominant + merged contextual tokens (arXiv 2412.04467), pure function and method."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from method_inputs import DTYPES, SETTINGS, budget_for, make, sized

from vlmprune.core.budget import split_across_regions
from vlmprune.core.registry import get_method
from vlmprune.core.types import ImageTokens, Region
from vlmprune.methods import visionzip
from vlmprune.methods.visionzip import VisionZip, default_split


def distinct_saliency(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).float() / n


def check_groups(kept, merged, assignment, feats, merge="mean"):
    """Every kept slot's feature is the merge of exactly the tokens assigned to it."""
    k = kept.numel()
    for s in range(k):
        members = torch.nonzero(assignment == s).squeeze(1)
        assert int(kept[s]) in members.tolist()  # a kept token belongs to its own slot
        if merge == "mean" or members.numel() == 1:
            expected = feats[members].double().mean(dim=0)
        else:
            others = members[members != kept[s]]
            expected = feats[kept[s]].double() + feats[others].double().mean(dim=0)
        torch.testing.assert_close(merged[s].double(), expected, rtol=1e-5, atol=1e-5)


def test_default_split_matches_the_paper():
    assert default_split(64) == (54, 10)
    assert default_split(128) == (108, 20)
    assert default_split(192) == (162, 30)
    for k in (1, 7, 32, 100, 288, 576):
        dom, ctx = default_split(k)
        assert dom + ctx == k and dom >= ctx
        assert abs(ctx - k * 16 / 100) <= 1 + 0.01 * k  # ~84:16


@SETTINGS
@given(
    n=st.integers(1, 30),
    d=st.integers(1, 8),
    kind=st.sampled_from(["one", "n-1", "n", "over", "any"]),
    extra=st.integers(0, 50),
    mode=st.sampled_from(["random", "ties", "constant"]),
    dtype=st.sampled_from(DTYPES),
    with_keys=st.booleans(),
    dominant=st.one_of(st.none(), st.integers(0, 40)),
    seed=st.integers(0, 2**31 - 1),
)
def test_select_properties(n, d, kind, extra, mode, dtype, with_keys, dominant, seed):
    sal = make((n,), mode, seed).to(dtype)
    feats = make((n, d), mode, seed + 1).to(dtype)
    keys = make((n, 5), mode, seed + 2).to(dtype) if with_keys else None
    budget = budget_for(kind, n, extra)
    kept, merged, assignment = visionzip.select(sal, keys, feats, budget, dominant=dominant)
    k = min(budget, n)
    assert kept.dtype == torch.long and kept.shape == (k,)
    assert torch.unique(kept).numel() == k
    assert torch.equal(kept, torch.sort(kept).values)
    assert merged.shape == (k, d) and merged.dtype == dtype
    assert assignment.shape == (n,) and assignment.dtype == torch.long
    assert torch.equal(assignment[kept], torch.arange(k))
    assert int(assignment.max()) < k and int(assignment.min()) >= -1
    again = visionzip.select(sal, keys, feats, budget, dominant=dominant)
    assert all(torch.equal(a, b) for a, b in zip((kept, merged, assignment), again))
    # float32 internally: the same selection from the upcast inputs
    up = visionzip.select(
        sal.float(), None if keys is None else keys.float(), feats.float(), budget, dominant
    )
    assert torch.equal(kept, up[0]) and torch.equal(assignment, up[2])
    if dtype == torch.float32:
        check_groups(kept, merged, assignment, feats)
    n_ctx = (k - (default_split(k)[0] if dominant is None else min(dominant, k))) if k < n else 0
    if n_ctx > 0 or k == n:
        assert int(assignment.min()) >= 0  # every token is represented


@SETTINGS
@given(n=st.integers(2, 40), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_dominant_targets_and_assignment(n, seed, data):
    k = data.draw(st.integers(1, n - 1))
    dom = data.draw(st.one_of(st.none(), st.integers(0, k)))
    sal = distinct_saliency(n, seed)
    keys = make((n, 6), "random", seed + 1)
    feats = make((n, 4), "random", seed + 2)
    merge = data.draw(st.sampled_from(["mean", "add"]))
    kept, merged, assignment = visionzip.select(sal, keys, feats, k, dominant=dom, merge=merge)
    k_dom, k_ctx = default_split(k) if dom is None else (dom, k - dom)
    # dominant = the top-saliency tokens, unchanged and alone in their slot
    top = torch.argsort(sal, descending=True)[:k_dom]
    slot = {int(t): s for s, t in enumerate(kept.tolist())}
    for t in top.tolist():
        assert t in slot
        assert torch.equal(merged[slot[t]], feats[t])
        assert (assignment == slot[t]).sum() == 1
    # targets: evenly strided over the remaining tokens in raster order
    rest = torch.sort(torch.argsort(sal, descending=True)[k_dom:]).values
    targets = rest[(torch.arange(k_ctx) * rest.numel()) // max(k_ctx, 1)] if k_ctx else rest[:0]
    assert sorted(top.tolist() + targets.tolist()) == kept.tolist()
    if k_ctx == 0:
        assert torch.equal(assignment[rest], torch.full_like(rest, -1))
        return
    assert int(assignment.min()) >= 0
    # each other token went to the target whose key is most similar (checked in float64)
    kn = torch.nn.functional.normalize(keys.double(), dim=-1)
    for i in rest.tolist():
        if i in targets.tolist():
            continue
        cos = kn[targets] @ kn[i]
        got = int(kept[assignment[i]])
        assert got in targets.tolist()
        assert float(cos[targets.tolist().index(got)]) >= float(cos.max()) - 1e-6
    check_groups(kept, merged, assignment, feats, merge)


def test_handmade_merge_values():
    # 6 tokens; token 5 dominant; targets among [0..4] with R=5, C=2: positions 0 and 2 -> tokens 0, 2
    sal = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.1, 0.9])
    keys = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [0.9, 0.2], [1.0, 1.0]])
    feats = torch.tensor([[1.0], [3.0], [10.0], [20.0], [5.0], [100.0]])
    kept, merged, assign = visionzip.select(sal, keys, feats, 3, dominant=1)
    assert kept.tolist() == [0, 2, 5]
    assert assign.tolist() == [0, 0, 1, 1, 0, 2]
    assert merged.squeeze(1).tolist() == [3.0, 15.0, 100.0]  # (1+3+5)/3, (10+20)/2
    _, added, _ = visionzip.select(sal, keys, feats, 3, dominant=1, merge="add")
    assert added.squeeze(1).tolist() == [5.0, 30.0, 100.0]  # 1 + (3+5)/2, 10 + 20


def test_keys_none_falls_back_to_features():
    torch.manual_seed(3)
    sal, feats = torch.rand(40), torch.randn(40, 7)
    a = visionzip.select(sal, None, feats, 12)
    b = visionzip.select(sal, feats, feats, 12)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = visionzip.select(sal, torch.randn(40, 7), feats, 12)
    assert not torch.equal(a[2], c[2])  # the keys do matter when given


def test_keep_all_and_errors():
    feats = torch.randn(5, 3)
    kept, merged, assign = visionzip.select(torch.rand(5), None, feats, 9)
    assert (
        kept.tolist() == list(range(5)) and torch.equal(merged, feats) and assign.tolist() == list(range(5))
    )
    with pytest.raises(ValueError, match="saliency"):
        visionzip.select(torch.rand(4), None, feats, 2)
    with pytest.raises(ValueError, match="merge"):
        visionzip.select(torch.rand(5), None, feats, 2, merge="max")


def test_method_per_region():
    torch.manual_seed(1)
    n = 20 + 30
    feats, sal, keys = torch.randn(n, 6), torch.rand(n), torch.randn(n, 4)
    # second region's indices are not contiguous in raster order on purpose
    second = torch.arange(20, 50).flip(0)
    regions = [Region(torch.arange(0, 20), (4, 5)), Region(second, (5, 6))]
    image = ImageTokens(features=feats, budget=16, regions=regions, grid=(4, 5), saliency=sal, keys=keys)
    out = VisionZip(budget=16).select_image(sized(VisionZip(budget=16), image))
    shares = split_across_regions(16, [20, 30])
    assert (out.indices < 20).sum() == shares[0] and (out.indices >= 20).sum() == shares[1]
    assert torch.equal(out.indices, torch.sort(out.indices).values)
    assert out.features.shape == (16, 6) and out.assignment.shape == (n,)
    assert torch.equal(out.assignment[out.indices], torch.arange(16))
    assert int(out.assignment.min()) >= 0
    # tokens are only merged within their region, and each slot is the mean of its group
    region_of = torch.zeros(n, dtype=torch.long)
    region_of[20:] = 1
    assert torch.equal(region_of[out.indices[out.assignment]], region_of)
    check_groups(out.indices, out.features, out.assignment, feats)
    # the first region alone gives the same as the pure function on its tokens
    kept0, merged0, _ = visionzip.select(sal[:20], keys[:20], feats[:20], shares[0])
    assert torch.equal(out.indices[: shares[0]], kept0)
    torch.testing.assert_close(out.features[: shares[0]], merged0)


def test_method_single_image_and_validation():
    torch.manual_seed(2)
    feats, sal = torch.randn(30, 5), torch.rand(30)
    image = ImageTokens(features=feats, budget=8, regions=[], grid=(5, 6), saliency=sal)
    out = VisionZip(budget=8).select_image(sized(VisionZip(budget=8), image))
    ref = visionzip.select(sal, None, feats, 8)
    assert torch.equal(out.indices, ref[0]) and torch.equal(out.features, ref[1])
    assert torch.equal(out.assignment, ref[2])
    assert (
        VisionZip(budget=8, dominant=8)
        .select_image(sized(VisionZip(budget=8, dominant=8), image))
        .assignment.min()
        == -1
    )
    assert VisionZip(budget=99).select_image(sized(VisionZip(budget=99), image)).indices.tolist() == list(
        range(30)
    )
    with pytest.raises(ValueError, match="saliency"):
        VisionZip(budget=8).select_image(ImageTokens(features=feats, budget=8, regions=[], grid=(5, 6)))
    with pytest.raises(ValueError, match="dominant"):
        VisionZip(budget=8, dominant=-1)
    with pytest.raises(ValueError, match="dominant"):
        VisionZip(budget=8, dominant=2.5)
    with pytest.raises(ValueError, match="merge"):
        VisionZip(budget=8, merge="sum")
    with pytest.raises(ValueError, match="budget"):
        VisionZip()
    m = get_method("visionzip", ratio=0.5)
    assert isinstance(m, VisionZip) and m.needs_saliency and m.needs_keys and m.merges and m.pre_llm
