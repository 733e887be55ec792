"""SPpruner (reconstruction): focus, structural scan, neighbour aggregation, the method and its LLM pass."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from method_inputs import sized

from vlmprune.core.budget import split_across_regions
from vlmprune.core.grid import neighbours
from vlmprune.core.registry import get_method
from vlmprune.core.types import ImageTokens, LayerTokens, Region
from vlmprune.methods.sppruner import (
    SPPruner,
    Stages,
    aggregate_neighbours,
    contrast,
    focus_order,
    focus_scores,
    place_context,
    scan_order,
    scan_runs,
    select,
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


DEFAULT = Stages()


def focus_of(x, sal, text, k, grid, rho=DEFAULT.rho, union=DEFAULT.union, focus=DEFAULT.focus, subjects=None):
    k_f = min(k, round(rho * k))
    score = focus_scores(x, sal, text, union, focus)
    order = focus_order(score, grid, DEFAULT.subjects if subjects is None else subjects)
    return set(order[:k_f].tolist())


def adjacent(a: int, b: int, w: int) -> bool:
    (ra, ca), (rb, cb) = divmod(a, w), divmod(b, w)
    return abs(ra - rb) + abs(ca - cb) == 1


@st.composite
def cases(draw):
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    n = h * w
    d = draw(st.integers(1, 12))
    k = draw(st.sampled_from([1, max(n - 1, 1), n, n + 2, draw(st.integers(1, n))]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["random", "constant", "ties"]))
    if kind == "constant":
        x, sal = torch.ones(n, d), torch.ones(n)
    elif kind == "ties":
        x = torch.randint(-1, 2, (n, d), generator=g).float()
        sal = torch.randint(0, 2, (n,), generator=g).float()
    else:
        x, sal = torch.randn(n, d, generator=g), torch.rand(n, generator=g)
    text = draw(st.sampled_from([None, "text"]))
    text = torch.randn(3, d, generator=g) if text else None
    sal = draw(st.sampled_from([sal, None]))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    opts = dict(
        rho=draw(st.sampled_from([0.0, 0.5, 0.75, 1.0])),
        union=draw(st.sampled_from(["soft", "product", "mean"])),
        focus=draw(st.sampled_from(["calibrated", "union", "saliency", "relevance"])),
        subjects=draw(st.booleans()),
        context=draw(st.sampled_from(["merge", "keep"])),
        place=draw(st.sampled_from(["salient", "nearest", "centroid"])),
        scan=draw(st.sampled_from(["serpentine", "window"])),
        window=draw(st.integers(1, 4)),
        merge_neighbors=draw(st.booleans()),
    )
    return x.to(dtype), sal, text, (h, w), k, opts


@SETTINGS
@given(cases())
def test_selection_is_valid_deterministic_and_keeps_the_focus(case):
    x, sal, text, grid, k, opts = case
    n, d = x.shape
    kept, feats, assign = select(x, sal, text, grid, k, **opts)
    kk = min(k, n)
    assert kept.dtype == torch.long and kept.numel() == kk
    assert torch.unique(kept).numel() == kk and torch.equal(kept, torch.sort(kept).values)
    assert feats.shape == (kk, d) and feats.dtype == x.dtype
    assert assign.shape == (n,) and int(assign.min()) >= -1 and int(assign.max()) < max(kk, 1)
    assert torch.equal(assign[kept], torch.arange(kk))  # each kept token is its own slot
    if kk < n and kk - round(opts["rho"] * kk) > 0 and opts["context"] == "merge":
        assert bool((assign >= 0).all())  # with merged context tokens nothing is dropped
    focus = focus_of(
        x.float(), sal, text, kk, grid, opts["rho"], opts["union"], opts["focus"], opts["subjects"]
    )
    assert focus <= set(kept.tolist())
    again = select(x, sal, text, grid, k, **opts)
    assert torch.equal(kept, again[0]) and torch.equal(feats, again[1]) and torch.equal(assign, again[2])


@pytest.mark.parametrize("scan", ["serpentine", "window"])
@pytest.mark.parametrize("grid", [(4, 6), (5, 5), (7, 3), (1, 9)])
def test_scan_order_is_a_permutation_of_neighbouring_steps(scan, grid):
    h, w = grid
    order = scan_order(grid, scan, window=2).tolist()
    assert sorted(order) == list(range(h * w))
    if scan == "serpentine":
        assert all(adjacent(a, b, w) for a, b in zip(order, order[1:]))
    else:  # within each 2x2 tile consecutive cells are neighbours
        tile = [(i // w // 2, i % w // 2) for i in order]
        assert all(adjacent(a, b, w) for a, b, ta, tb in zip(order, order[1:], tile, tile[1:]) if ta == tb)
        changes = sum(ta != tb for ta, tb in zip(tile, tile[1:]))
        assert changes == len(set(tile)) - 1  # every tile is visited in one piece


@pytest.mark.parametrize("scan", ["serpentine", "window"])
def test_every_scan_run_has_exactly_one_context_token(scan):
    g = torch.Generator().manual_seed(0)
    x, sal, text = (
        torch.randn(48, 16, generator=g),
        torch.rand(48, generator=g),
        torch.randn(4, 16, generator=g),
    )
    for k in (4, 9, 20, 47):
        opts = dict(scan=scan, window=3, merge_neighbors=False, context="merge")
        kept, _, assign = select(x, sal, text, (6, 8), k, **opts)
        k_f = round(DEFAULT.rho * k)
        focus = torch.zeros(48, dtype=torch.bool)
        focus[list(focus_of(x, sal, text, k, (6, 8)))] = True
        members, run = scan_runs(scan_order((6, 8), scan, 3), focus, k - k_f)
        kept_set = set(kept.tolist())
        for r in range(k - k_f):
            in_run = members[run == r]
            reps = [i for i in in_run.tolist() if i in kept_set]
            assert len(reps) == 1  # one representative per run, placed on a member
            slot = int((kept == reps[0]).nonzero())
            assert bool((assign[in_run] == slot).all())  # every member folded into it
        sizes = torch.bincount(run)
        assert int(sizes.max() - sizes.min()) <= 1  # equal non-focus counts


def test_every_grid_row_is_represented():
    g = torch.Generator().manual_seed(1)
    x, sal = torch.randn(24 * 24, 8, generator=g), torch.rand(24 * 24, generator=g)
    kept, _, _ = select(x, sal, None, (24, 24), 48, rho=0.0)  # 48 context tokens, 2 per row
    rows = torch.bincount(kept // 24, minlength=24)
    assert rows.tolist() == [2] * 24
    kept, _, _ = select(x, sal, None, (24, 24), 128)  # default rho: 16 context runs over the scan
    assert len(set((kept // 24).tolist())) >= 12


def test_merged_features_are_convex_combinations():
    # one-hot features plus a constant column: a merged row's first N entries are its weights
    g = torch.Generator().manual_seed(2)
    h, w = 5, 6
    n = h * w
    x = torch.cat([torch.eye(n), torch.full((n, 1), 2.0)], dim=1)  # (N, N + 1), all cosines > 0
    sal = torch.rand(n, generator=g)
    text = torch.randn(2, n + 1, generator=g)
    for merge in (True, False):
        kept, feats, assign = select(x, sal, text, (h, w), 12, merge_neighbors=merge)
        wts = feats[:, :n]  # (K, N)
        assert bool((wts >= -1e-6).all())
        assert torch.allclose(wts.sum(dim=1), torch.ones(12), atol=1e-5)
        assert torch.allclose(feats[:, n], torch.full((12,), 2.0), atol=1e-5)
        focus = focus_of(x, sal, text, 12, (h, w))
        for slot, tok in enumerate(kept.tolist()):
            support = set(wts[slot].nonzero().squeeze(1).tolist())
            if tok in focus:
                near = {i for i in range(n) if adjacent(i, tok, w) and i not in focus}
                assert support <= {tok} | near  # only its own edge tokens
                folded = set((assign == slot).nonzero().squeeze(1).tolist())
                if merge:
                    assert tok in support and folded <= support  # folded neighbours really contribute
                else:
                    assert support == {tok}
            else:
                assert tok in support and all(t not in focus for t in support)


def test_neighbour_aggregation_rule():
    # 1 x 3 grid: focus in the middle, the left token similar, the right one opposite
    x = torch.tensor([[1.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    is_focus = torch.tensor([False, True, False])
    merged, target = aggregate_neighbours(x, is_focus, (1, 3))
    w = 2**-0.5
    assert torch.allclose(merged[1], (x[1] + w * x[0]) / (1 + w))
    assert target.tolist() == [1, -1, -1]  # cos <= 0: weight 0, not folded
    assert torch.equal(merged[0], x[0]) and torch.equal(merged[2], x[2])
    # two adjacent focus tokens: the more similar one wins, ties to the lowest index
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    merged, target = aggregate_neighbours(x, torch.tensor([True, False, True]), (1, 3))
    assert target.tolist() == [-1, 0, -1]
    assert neighbours(2, 2, "cpu").tolist() == [
        [-1, -1, 1, 2],
        [-1, 0, -1, 3],
        [0, -1, 3, -1],
        [1, 2, -1, -1],
    ]


def test_union_modes():
    # one-hot tokens, so relevance to the text vector q is q_i (after min-max)
    n = 6
    x = torch.eye(n)
    sal = torch.tensor([1.0, 0.0, 0.45, 0.0, 0.0, 0.2])
    q = torch.tensor([[0.0, 1.0, 0.45, 0.0, 0.0, 0.0]])  # s_r = q / max
    soft = focus_scores(x, sal, q, "soft", "union")
    prod = focus_scores(x, sal, q, "product", "union")
    mean = focus_scores(x, sal, q, "mean", "union")
    top = lambda f, k: set(torch.sort(f, descending=True, stable=True).indices[:k].tolist())  # noqa: E731
    assert top(soft, 2) == {0, 1}  # salient OR relevant
    assert top(mean, 2) == {0, 1}
    assert top(prod, 1) == {2}  # only the token that is both
    assert torch.allclose(soft, 1 - (1 - sal / (1 + 1e-6)) * (1 - q[0] / (1 + 1e-6)), atol=1e-6)
    # missing inputs: text None -> f = s_v; saliency None -> f = s_r; neither -> constant
    assert torch.allclose(focus_scores(x, sal, None), sal / (1 + 1e-6))
    assert torch.allclose(focus_scores(x, None, q, focus="union"), q[0] / (1 + 1e-6))
    assert torch.equal(focus_scores(x, None, None), torch.zeros(n))
    one = dict(grid=(1, n), focus="union", subjects=False)
    assert focus_of(x, sal, q, 1, union="product", **one) == {2} and focus_of(
        x, sal, q, 1, union="soft", **one
    ) == {0}
    # focus="saliency" ignores the text, "relevance" ignores the saliency
    assert torch.equal(focus_scores(x, sal, q, focus="saliency"), focus_scores(x, sal, None))
    assert torch.equal(focus_scores(x, sal, q, focus="relevance"), focus_scores(x, None, q, focus="union"))


def test_budget_edges_and_validation():
    x, sal = torch.randn(12, 4), torch.rand(12)
    kept, feats, assign = select(x, sal, None, (3, 4), 12)
    assert (
        torch.equal(kept, torch.arange(12))
        and torch.equal(feats, x)
        and torch.equal(assign, torch.arange(12))
    )
    kept, feats, assign = select(x, sal, None, (3, 4), 0)
    assert kept.numel() == 0 and feats.shape == (0, 4) and bool((assign == -1).all())
    for kwargs, field in [
        (dict(rho=1.5), "rho"),
        (dict(union="or"), "union"),
        (dict(scan="zigzag"), "scan"),
        (dict(window=0), "window"),
        (dict(merge_neighbors=1), "merge_neighbors"),
        (dict(focus="text"), "focus"),
        (dict(subjects="yes"), "subjects"),
        (dict(context="drop"), "context"),
        (dict(place="middle"), "place"),
    ]:
        with pytest.raises(ValueError, match=field):
            select(x, sal, None, (3, 4), 5, **kwargs)
        with pytest.raises(ValueError, match=field):
            SPPruner(budget=5, **kwargs)
    with pytest.raises(ValueError, match="grid"):
        select(x, sal, None, (4, 4), 5)
    for kwargs, field in [
        (dict(llm_layer=0), "llm_layer"),
        (dict(llm_layer=True), "llm_layer"),
        (dict(llm_keep=2), "llm_keep"),
    ]:
        with pytest.raises(ValueError, match=field):
            SPPruner(budget=5, **kwargs)


# -- the method ----------------------------------------------------------------------------------
def make_image(h: int, w: int, d: int, seed: int, regions=None) -> ImageTokens:
    g = torch.Generator().manual_seed(seed)
    n = h * w
    return ImageTokens(
        features=torch.randn(n, d, generator=g),
        budget=0,
        regions=regions or [Region(torch.arange(n), (h, w))],
        grid=(h, w),
        saliency=torch.rand(n, generator=g),
        text=torch.randn(5, d, generator=g),
    )


def test_method_flags_and_llm_layer():
    m = SPPruner(budget=16)
    assert SPPruner.name == "sppruner" and SPPruner.merges and SPPruner.needs_saliency and SPPruner.needs_text
    assert m.llm_layer is None and SPPruner(budget=16, llm_layer=2).llm_layer == 2
    assert m.stages() == Stages() and m.llm_keep == 0.5
    assert dataclasses.astuple(Stages()) == (
        0.875,
        "calibrated",
        "soft",
        True,
        "keep",
        "salient",
        "serpentine",
        4,
        True,
    )
    assert isinstance(get_method("sppruner", ratio=0.25), SPPruner)


def test_select_images_matches_select():
    images = [make_image(6, 6, 16, 0), make_image(4, 5, 16, 1)]
    m = SPPruner(ratio=0.3, scan="window", window=2)
    for img, out in zip(images, m.select_images(sized(m, images))):
        kept, feats, assign = select(img.features, img.saliency, img.text, img.regions[0].grid,
                                     m.keep_count(img.num_tokens), scan="window", window=2)  # fmt: skip
        assert torch.equal(out.indices, kept) and torch.equal(out.features, feats)
        assert torch.equal(out.assignment, assign)


def test_multi_region_image():
    g = torch.Generator().manual_seed(3)
    perm = torch.randperm(16 + 12, generator=g)
    regions = [Region(perm[:16], (4, 4)), Region(perm[16:], (3, 4))]
    img = make_image(1, 28, 8, 4, regions=regions)
    m = SPPruner(budget=9, rho=0.75, context="merge")
    out = m.select_images(sized(m, [img]))[0]
    shares = split_across_regions(9, [16, 12])
    assert out.indices.numel() == 9 and torch.equal(out.indices, torch.sort(out.indices).values)
    expected_idx, expected_feats = [], []
    for r, k in zip(regions, shares):
        kept, feats, assign = select(
            img.features[r.indices], img.saliency[r.indices], img.text, r.grid, k, rho=0.75, context="merge"
        )
        expected_idx.append(r.indices[kept])
        expected_feats.append(feats)
        # a region's tokens are merged into kept tokens of the same region
        slots = out.assignment[r.indices]
        assert bool((slots >= 0).all())
        assert set(out.indices[slots].tolist()) <= set(r.indices.tolist())
    idx = torch.cat(expected_idx)
    order = torch.argsort(idx)
    assert torch.equal(out.indices, idx[order])
    assert torch.equal(out.features, torch.cat(expected_feats)[order])
    assert torch.equal(out.assignment[out.indices], torch.arange(9))


def test_layer_pass_keeps_focus_and_the_top_context_share():
    img = make_image(6, 6, 16, 5)
    m = SPPruner(budget=16, llm_layer=2, llm_keep=0.5, rho=0.75)
    first = m.select_images(sized(m, [img, make_image(5, 5, 16, 6)]))[0]  # 12 focus + 4 context
    kept = first.indices
    focus = focus_of(img.features, img.saliency, img.text, 16, (6, 6), rho=0.75)
    g = torch.Generator().manual_seed(7)
    att = torch.rand(16, generator=g)
    layer = LayerTokens(
        attention=att, hidden=torch.randn(16, 8), keys=torch.randn(16, 8), text_hidden=torch.randn(3, 8),
        text_keys=torch.randn(3, 8), budget=16, origin=kept, pinned=first.pinned,
    )  # fmt: skip
    rows = m.select_layer([layer])[0]
    is_focus = torch.tensor([int(o) in focus for o in kept])
    assert bool(is_focus[rows].sum() == is_focus.sum())  # every focus token stays
    ctx = (~is_focus).nonzero().squeeze(1)
    top_ctx = ctx[torch.sort(att[ctx], descending=True, stable=True).indices[:2]]
    assert torch.equal(rows, torch.sort(torch.cat((is_focus.nonzero().squeeze(1), top_ctx))).values)
    # without a pre-LLM stage (no pinned rows) every token is context; the method keeps no state
    unpinned = dataclasses.replace(layer, pinned=None)
    fresh = SPPruner(budget=16, llm_layer=2, llm_keep=0.25)
    assert torch.equal(fresh.select_layer([unpinned])[0], torch.sort(torch.topk(att, 4).indices).values)
    assert torch.equal(m.select_layer([layer])[0], rows)  # the same call again: the same answer


def test_calibrated_relevance_counts_only_where_it_stands_out():
    flat = torch.linspace(0.0, 1.0, 50)  # no token stands out: z < 2 everywhere
    assert torch.equal(contrast(flat), torch.zeros(50))
    peaked = torch.zeros(50)
    peaked[7] = 1.0  # one outlier: z = 7, full weight; the rest below the mean
    assert contrast(peaked).tolist() == [1.0 if i == 7 else 0.0 for i in range(50)]
    # a calibrated union falls back to the saliency when the relevance is flat
    x = torch.eye(6)
    sal = torch.tensor([0.1, 0.9, 0.3, 0.0, 0.5, 0.2])
    q = torch.tensor([[0.2, 0.0, 0.1, 0.3, 0.15, 0.25]])  # relevance spread over every token
    assert torch.allclose(focus_scores(x, sal, q), focus_scores(x, sal, None), rtol=0, atol=1e-6)
    assert not torch.equal(focus_scores(x, sal, q, focus="union"), focus_scores(x, sal, None))


def test_subject_peaks_rank_first():
    # two blobs on a 4 x 6 grid: the big one's second-best token loses to the small one's peak
    f = torch.zeros(4, 6)
    f[0:2, 0:2] = torch.tensor([[0.9, 0.8], [0.85, 0.7]])
    f[3, 5] = 0.5
    f = f.flatten()
    assert focus_order(f, (4, 6), True)[:2].tolist() == [0, 23]
    assert focus_order(f, (4, 6), False)[:2].tolist() == [0, 6]


def test_context_placement_and_kept_representatives():
    # 1 x 6 grid, two runs of three members each
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    members, run = torch.arange(6), torch.tensor([0, 0, 0, 1, 1, 1])
    means = torch.stack((x[:3].mean(0), x[3:].mean(0)))
    sal = torch.tensor([0.1, 0.9, 0.2, 0.3, 0.3, 0.1])
    sq = x.square().sum(1)
    grid = (1, 6)
    assert place_context(x, sq, means, sal, members, run, grid, "salient").tolist() == [1, 3]
    assert place_context(x, sq, means, sal, members, run, grid, "centroid").tolist() == [1, 4]
    assert place_context(x, sq, means, sal, members, run, grid, "nearest").tolist() == [2, 5]
    assert place_context(x, sq, means, None, members, run, grid, "salient").tolist() == [0, 3]
    # context="keep": a context token is its placed member's own feature; the others are dropped
    g = torch.Generator().manual_seed(4)
    x, sal, text = (
        torch.randn(30, 8, generator=g),
        torch.rand(30, generator=g),
        torch.randn(2, 8, generator=g),
    )
    kept, feats, assign = select(x, sal, text, (5, 6), 8, context="keep", merge_neighbors=False)
    merged_kept, _, merged_assign = select(x, sal, text, (5, 6), 8, context="merge", merge_neighbors=False)
    assert torch.equal(kept, merged_kept)  # the same tokens, only the features differ
    assert torch.equal(feats, x[kept])
    assert bool((merged_assign >= 0).all()) and int((assign >= 0).sum()) == 8
