"""VisPruner: important tokens + iterative duplicate removal (arXiv 2412.01818)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from method_inputs import DTYPES, SETTINGS, accelerator_form, budget_for, make, sized

from vlmprune.core.budget import split_across_regions
from vlmprune.core.registry import get_method
from vlmprune.core.types import ImageTokens, Region
from vlmprune.methods import vispruner
from vlmprune.methods.vispruner import VisPruner, important_count, remove_duplicates


def reference_removal(x: torch.Tensor, keep: int, per_round: int) -> list[int]:
    """Plain-Python version of the spec: alternate split of the raster-ordered survivors."""
    f = torch.nn.functional.normalize(x.double(), dim=-1, eps=1e-6).tolist()
    if keep <= 0:
        return []
    cur = list(range(len(f)))
    while len(cur) > keep:
        a, b = cur[0::2], cur[1::2]
        score = {i: max(sum(p * q for p, q in zip(f[i], f[j])) for j in b) for i in a}
        drop = sorted(a, key=lambda i: (-score[i], i))[: min(per_round, len(cur) - keep, len(a))]
        cur = sorted(set(cur) - set(drop))
    return cur


def test_important_count_rounds_half_up():
    assert [important_count(k, 0.5) for k in (1, 2, 3, 5, 64)] == [1, 1, 2, 3, 32]
    assert important_count(7, 0.0) == 0 and important_count(7, 1.0) == 7


@SETTINGS
@given(
    n=st.integers(1, 40),
    d=st.integers(1, 8),
    kind=st.sampled_from(["one", "n-1", "n", "over", "any"]),
    extra=st.integers(0, 60),
    mode=st.sampled_from(["random", "ties", "constant"]),
    dtype=st.sampled_from(DTYPES),
    ratio=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    per_round=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
)
def test_select_properties(n, d, kind, extra, mode, dtype, ratio, per_round, seed):
    sal = make((n,), mode, seed).to(dtype)
    pre = make((n, d), mode, seed + 1).to(dtype)
    budget = budget_for(kind, n, extra)
    kept = vispruner.select(sal, pre, budget, ratio, per_round)
    assert kept.dtype == torch.long and kept.shape == (min(budget, n),)
    assert torch.unique(kept).numel() == kept.numel()
    assert torch.equal(kept, torch.sort(kept).values)
    assert torch.equal(kept, vispruner.select(sal, pre, budget, ratio, per_round))
    assert torch.equal(kept, vispruner.select(sal.float(), pre.float(), budget, ratio, per_round))


@SETTINGS
@given(n=st.integers(2, 40), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_important_half_is_top_saliency_and_rest_matches_reference(n, seed, data):
    k = data.draw(st.integers(1, n - 1))
    per_round = data.draw(st.sampled_from([1, 3, 8]))
    sal = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).float()  # distinct
    pre = make((n, 6), "random", seed + 1)
    kept = vispruner.select(sal, pre, k, 0.5, per_round)
    k_imp = important_count(k, 0.5)
    top = torch.argsort(sal, descending=True)[:k_imp]
    assert set(top.tolist()) <= set(kept.tolist())
    rest = torch.sort(torch.argsort(sal, descending=True)[k_imp:]).values
    expected = rest[reference_removal(pre[rest], k - k_imp, per_round)]
    assert sorted(top.tolist() + expected.tolist()) == kept.tolist()


@SETTINGS
@given(m=st.integers(2, 20), seed=st.integers(0, 2**31 - 1))
def test_duplicates_are_removed_first(m, seed):
    # rest = m distinct tokens, each followed by an exact copy of itself: keeping m must keep one
    # copy of each (a per-token saliency ranking would not)
    base = make((m, 16), "random", seed)
    pre = base.repeat_interleave(2, dim=0)  # (2m, 16): rows 2i and 2i+1 equal
    kept = remove_duplicates(pre, m, drop_per_round=8)
    assert kept.numel() == m
    assert torch.equal(torch.sort(kept // 2).values, torch.arange(m))


@SETTINGS
@given(
    r=st.integers(2, 80),
    d=st.integers(1, 6),
    mode=st.sampled_from(["random", "ties", "constant"]),
    nans=st.integers(0, 3),
    per_round=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_accelerator_form_picks_what_the_cpu_form_picks(r, d, mode, nans, per_round, seed, data):
    """The five-operation rounds on fixed-shape views (the form every device but the CPU runs)
    keep the rows the compacting rounds keep, ties and NaN features included; both equal the
    float64 plain-Python reference on finite features without ties (where its rounding cannot
    break a tie differently)."""
    keep = data.draw(st.integers(1, r - 1))
    pre = make((r, d), mode, seed)
    pre[torch.randperm(r, generator=torch.Generator().manual_seed(seed))[:nans]] = float("nan")
    on_cpu = remove_duplicates(pre, keep, per_round)
    with accelerator_form():
        fixed = remove_duplicates(pre, keep, per_round)
    assert torch.equal(fixed, on_cpu)
    if nans == 0 and mode == "random":
        assert on_cpu.tolist() == reference_removal(pre, keep, per_round)


def test_drop_per_round_matters():
    # drops happen in rounds: with 1 per round the alternation is recomputed after every drop
    torch.manual_seed(0)
    pre = torch.randn(30, 3)
    outs = {tuple(remove_duplicates(pre, 5, r).tolist()) for r in (1, 8, 30)}
    assert len(outs) > 1
    for r in (1, 8, 30):
        assert remove_duplicates(pre, 5, r).tolist() == reference_removal(pre, 5, r)


def test_errors():
    with pytest.raises(ValueError, match="saliency"):
        vispruner.select(torch.rand(3), torch.randn(4, 2), 2)
    with pytest.raises(ValueError, match="important_ratio"):
        vispruner.select(torch.rand(4), torch.randn(4, 2), 2, important_ratio=1.5)
    with pytest.raises(ValueError, match="drop_per_round"):
        vispruner.select(torch.rand(4), torch.randn(4, 2), 2, drop_per_round=0)
    with pytest.raises(ValueError, match="important_ratio"):
        VisPruner(budget=3, important_ratio=-0.1)
    with pytest.raises(ValueError, match="drop_per_round"):
        VisPruner(budget=3, drop_per_round=0)
    with pytest.raises(ValueError, match="budget"):
        VisPruner(budget=0)


def test_method_uses_pre_features_per_region():
    torch.manual_seed(4)
    n = 24 + 36
    feats, pre, sal = torch.randn(n, 5), torch.randn(n, 7), torch.rand(n)
    regions = [Region(torch.arange(24), (4, 6)), Region(torch.arange(24, 60), (6, 6))]
    image = ImageTokens(
        features=feats, budget=13, regions=regions, grid=(4, 6), pre_features=pre, saliency=sal
    )
    m = VisPruner(budget=13)
    kept = m.select_image(sized(m, image)).indices
    shares = split_across_regions(13, [24, 36])
    expected = torch.cat(
        [
            vispruner.select(sal[:24], pre[:24], shares[0]),
            24 + vispruner.select(sal[24:], pre[24:], shares[1]),
        ]
    )
    assert torch.equal(kept, expected)
    # no pre_features: the projector outputs are used
    image.pre_features = None
    expected = torch.cat(
        [
            vispruner.select(sal[:24], feats[:24], shares[0]),
            24 + vispruner.select(sal[24:], feats[24:], shares[1]),
        ]
    )
    assert torch.equal(m.select_image(sized(m, image)).indices, expected)
    assert VisPruner(budget=100).select_image(sized(VisPruner(budget=100), image)).indices.tolist() == list(
        range(n)
    )
    assert VisPruner(ratio=0.25).select_image(sized(VisPruner(ratio=0.25), image)).indices.numel() == 15
    m2 = get_method("vispruner", budget=4)
    assert isinstance(m2, VisPruner) and m2.needs_saliency and m2.needs_pre_features


@pytest.mark.parametrize("r,d,mode", [(1100, 16, "random"), (1300, 8, "clusters"), (1024, 4, "ties")])
def test_neighbour_form_picks_what_the_exact_rounds_pick(r, d, mode):
    """From 1024 rows the CPU form reads nearest-neighbour lists: the same survivors as the exact
    rounds on the full similarity (random, clustered and exactly repeated features)."""
    g = torch.Generator().manual_seed(r)
    if mode == "clusters":
        x = torch.randn(12, d, generator=g)[torch.randint(0, 12, (r,), generator=g)]
        x = x + 0.05 * torch.randn(r, d, generator=g)
    elif mode == "ties":
        x = torch.randint(-1, 2, (r, d), generator=g).float()  # many identical rows and zero rows
    else:
        x = torch.randn(r, d, generator=g)
    for keep, per_round in ((r // 5, 8), (r // 2, 3)):
        got = remove_duplicates(x, keep, per_round)
        with accelerator_form():
            want = remove_duplicates(x, keep, per_round)
        assert torch.equal(got, want), (keep, per_round)


def test_neighbour_rounds_vouch_for_their_answer_or_step_aside():
    """Called directly on small inputs the neighbour lists are short relative to the survivors:
    the form either answers what the exact rounds answer or declines (None)."""
    f = torch.nn.functional.normalize(torch.randn(60, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    sim = f.new_empty(61, 61)
    sim[:60, :60] = f @ f.T
    sim[60].fill_(float("-inf"))
    sim[:, 60].fill_(float("-inf"))
    answers = 0
    for keep in (5, 20, 40):
        got = vispruner._neighbour_rounds(f, keep, 8)
        if got is not None:
            answers += 1
            assert torch.equal(got, vispruner._removal_rounds(sim.clone(), keep, 8))
    assert answers > 0
