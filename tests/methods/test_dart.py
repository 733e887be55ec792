"""DART: in-LLM pivot-based duplicate removal (arXiv 2502.11494), pure function and method."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from method_inputs import DTYPES, SETTINGS, budget_for, make

from vlmprune.core.registry import get_method
from vlmprune.core.types import LayerTokens
from vlmprune.methods import dart
from vlmprune.methods.dart import DART


def layer_tokens(n: int, m: int, budget: int, seed: int, d: int = 8, dk: int = 6) -> LayerTokens:
    return LayerTokens(
        attention=torch.rand(n, generator=torch.Generator().manual_seed(seed)),
        hidden=make((n, d), "random", seed + 1),
        keys=make((n, dk), "random", seed + 2),
        text_hidden=make((m, d), "random", seed + 3),
        text_keys=make((m, dk), "random", seed + 4),
        budget=budget,
        origin=torch.arange(n),
    )


@SETTINGS
@given(
    n=st.integers(1, 40),
    m=st.integers(0, 8),
    kind=st.sampled_from(["one", "n-1", "n", "over", "any"]),
    extra=st.integers(0, 60),
    mode=st.sampled_from(["random", "ties", "constant"]),
    dtype=st.sampled_from(DTYPES),
    pivots=st.sampled_from([(4, 4), (1, 0), (0, 2), (3, 1), (6, 6)]),
    seed=st.integers(0, 2**31 - 1),
)
def test_select_properties(n, m, kind, extra, mode, dtype, pivots, seed):
    hidden = make((n, 8), mode, seed).to(dtype)
    keys = make((n, 6), mode, seed + 1).to(dtype)
    text_hidden = make((m, 8), mode, seed + 2).to(dtype)
    text_keys = make((m, 6), mode, seed + 3).to(dtype)
    budget = budget_for(kind, n, extra)
    args = (hidden, keys, text_hidden, text_keys, budget, *pivots)
    kept = dart.select(*args)
    assert kept.dtype == torch.long and kept.shape == (min(budget, n),)
    assert torch.unique(kept).numel() == kept.numel()
    assert torch.equal(kept, torch.sort(kept).values)
    assert torch.equal(kept, dart.select(*args))
    up = dart.select(hidden.float(), keys.float(), text_hidden.float(), text_keys.float(), budget, *pivots)
    assert torch.equal(kept, up)


@SETTINGS
@given(n=st.integers(2, 50), m=st.integers(0, 10), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_image_pivots_are_kept(n, m, seed, data):
    k = data.draw(st.integers(1, n - 1))
    t = layer_tokens(n, m, k, seed)
    kept = dart.select(t.hidden, t.keys, t.text_hidden, t.text_keys, k)
    pivots = torch.argsort(t.keys.abs().sum(dim=1), descending=True)[: min(4, k)]
    assert set(pivots.tolist()) <= set(kept.tolist())


def test_pivots_rank_by_l1_norm_of_keys():
    # token 1 has the larger L1 norm (3.6 > 3.0), token 0 the larger L2 norm (3.0 > 2.08)
    keys = torch.tensor([[3.0, 0.0, 0.0], [1.2, 1.2, 1.2], [0.1, 0.1, 0.1], [0.2, 0.0, 0.0]])
    hidden = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    assert dart.select(hidden, keys, None, None, 1, pivots_image=1, pivots_text=0).tolist() == [1]
    assert dart.select(hidden, -keys, None, None, 1, pivots_image=1, pivots_text=0).tolist() == [1]


@SETTINGS
@given(n=st.integers(3, 40), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_single_image_pivot_keeps_the_least_similar(n, seed, data):
    k = data.draw(st.integers(2, n - 1))
    t = layer_tokens(n, 0, k, seed)
    kept = dart.select(t.hidden, t.keys, None, None, k, pivots_image=1, pivots_text=0)
    pivot = int(torch.argmax(t.keys.abs().sum(dim=1)))
    h = torch.nn.functional.normalize(t.hidden.double(), dim=-1)
    cos = h @ h[pivot]
    cos[pivot] = float("inf")
    expected = sorted([pivot] + torch.argsort(cos)[: k - 1].tolist())
    assert kept.tolist() == expected


def reference(hidden, keys, text_hidden, text_keys, k, n_img_piv=4, n_txt_piv=4) -> list[int]:
    """Plain-Python DART as documented (similarities from torch in float32, logic in Python)."""
    n = hidden.shape[0]
    if k >= n:
        return list(range(n))
    norm = keys.float().abs().sum(1).tolist()
    img = sorted(range(n), key=lambda i: (-norm[i], i))[: min(n_img_piv, k)]
    vecs = [torch.nn.functional.normalize(hidden.float(), dim=-1)[i] for i in img]
    if text_hidden is not None and text_hidden.shape[0]:
        tnorm = text_keys.float().abs().sum(1).tolist()
        txt = sorted(range(len(tnorm)), key=lambda i: (-tnorm[i], i))[:n_txt_piv]
        vecs += [torch.nn.functional.normalize(text_hidden.float(), dim=-1)[i] for i in txt]
    sim = (torch.nn.functional.normalize(hidden.float(), dim=-1) @ torch.stack(vecs).T).tolist()
    kept = list(img)
    quota = k // len(vecs)
    for j in range(len(vecs)):
        take = min(quota - 1 if j < len(img) else quota, k - len(kept))
        free = sorted((i for i in range(n) if i not in kept), key=lambda i: (sim[i][j], i))
        kept += free[: max(take, 0)]
    free = sorted((i for i in range(n) if i not in kept), key=lambda i: (max(sim[i]), i))
    kept += free[: k - len(kept)]
    return sorted(kept)


@SETTINGS
@given(n=st.integers(1, 40), m=st.integers(0, 8), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_matches_reference(n, m, seed, data):
    k = data.draw(st.integers(1, n + 2))
    piv = data.draw(st.sampled_from([(4, 4), (2, 1), (1, 3), (5, 0)]))
    t = layer_tokens(n, m, k, seed)
    got = dart.select(t.hidden, t.keys, t.text_hidden, t.text_keys, k, *piv)
    assert got.tolist() == reference(t.hidden, t.keys, t.text_hidden, t.text_keys, k, *piv)


def test_text_pivot_is_the_largest_key_norm_text_token():
    torch.manual_seed(5)
    n, d = 20, 4
    hidden = torch.randn(n, d)
    keys = torch.randn(n, 3)
    text_hidden = torch.stack([torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0, 0.0])])
    big = torch.tensor([[5.0, 5.0, 5.0], [0.1, 0.1, 0.1]])
    a = dart.select(hidden, keys, text_hidden, big, 6, pivots_image=0, pivots_text=1)
    b = dart.select(hidden, keys, text_hidden, big.flip(0), 6, pivots_image=0, pivots_text=1)
    assert a.tolist() == sorted(torch.argsort(hidden[:, 0] / hidden.norm(dim=1))[:6].tolist())
    assert b.tolist() == sorted(torch.argsort(hidden[:, 1] / hidden.norm(dim=1))[:6].tolist())


def test_duplicates_of_a_pivot_are_dropped():
    # token 0 is the pivot (huge keys); tokens 1..8 copy it; 9..16 are distinct
    torch.manual_seed(6)
    base = torch.randn(1, 16)
    hidden = torch.cat([base.repeat(9, 1), torch.randn(8, 16)])
    keys = torch.cat([torch.full((1, 3), 10.0), torch.rand(16, 3)])
    for k in (2, 5, 9):
        kept = dart.select(
            hidden, keys, torch.zeros(0, 16), torch.zeros(0, 3), k, pivots_image=1, pivots_text=0
        )
        assert kept.tolist()[0] == 0 and all(int(i) >= 9 for i in kept[1:])
    # with several pivots each one's least similar tokens are kept, whatever their count
    kept = dart.select(hidden, keys, torch.zeros(0, 16), torch.zeros(0, 3), 9)
    assert kept.numel() == 9 and 0 in kept.tolist()


def test_quota_and_shortfall():
    # K=10 with 4 image + 4 text pivots: quota 1 each; image pivots use theirs, text pivots add 4,
    # the 2 left go to the tokens least similar to any pivot. Exactly 10 whatever happens.
    for seed in range(20):
        t = layer_tokens(30, 6, 10, seed)
        kept = DART(budget=10).select_layer([t])[0]
        assert kept.numel() == 10 and torch.unique(kept).numel() == 10
    # budget below the pivot count: only K image pivots, nothing else
    t = layer_tokens(30, 6, 3, 0)
    kept = dart.select(t.hidden, t.keys, t.text_hidden, t.text_keys, 3)
    assert kept.tolist() == sorted(torch.argsort(t.keys.abs().sum(1), descending=True)[:3].tolist())


def test_no_pivot_falls_back_to_key_norm():
    torch.manual_seed(7)
    hidden, keys = torch.randn(10, 4), torch.randn(10, 3)
    kept = dart.select(hidden, keys, None, None, 4, pivots_image=0, pivots_text=4)
    assert kept.tolist() == sorted(torch.argsort(keys.abs().sum(1), descending=True)[:4].tolist())


def test_method():
    m = get_method("dart", budget=8)
    assert isinstance(m, DART) and not m.pre_llm and m.llm_layer == 2 and m.layer == 2
    assert DART(budget=8, layer=5).llm_layer == 5
    images = [layer_tokens(30, 5, 8, 1), layer_tokens(6, 5, 8, 2), layer_tokens(50, 0, 8, 3)]
    out = m.select_layer(images)
    assert [o.numel() for o in out] == [8, 6, 8]
    assert out[1].tolist() == list(range(6))
    for img, kept in zip(images, out):
        assert torch.equal(kept, dart.select(img.hidden, img.keys, img.text_hidden, img.text_keys, 8))
    for bad in ({"layer": 0}, {"layer": 1.5}, {"pivots_image": -1}, {"pivots_text": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DART(budget=8, **bad)
    with pytest.raises(ValueError, match="pivots"):
        DART(budget=8, pivots_image=0, pivots_text=0)
    with pytest.raises(ValueError, match="budget"):
        DART(budget=8, ratio=0.5)
    with pytest.raises(ValueError, match="keys"):
        dart.select(torch.randn(5, 4), torch.randn(4, 3), None, None, 2)
