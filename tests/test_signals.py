"""Attention signals in fused passes (vlmprune.adapters.signals): the values of the dense softmax,
O(S) extra memory, one extra pass where the tower's own call gives the log-sum-exp, and a recorder
that never outlives the forward it watches."""

from __future__ import annotations

import pytest
import torch
from conftest import batch_inputs, cached_model
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode

from vlmprune.adapters import families, get_adapter
from vlmprune.adapters.signals import (
    _blocked_lse,
    lse_attention,
    on_attention_calls,
    received,
    received_segments,
)

FLASH = "_scaled_dot_product_flash_attention_for_cpu"


def dense_received(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, H, Lk) float64 column sums of softmax(scale q k^T): the whole score matrix at once."""
    probs = torch.softmax((q.double() @ k.double().transpose(-1, -2)) * scale, dim=-1)  # (B, H, Lq, Lk)
    return probs.sum(dim=-2)


@pytest.mark.parametrize(
    "shape", [(1, 1, 1, 1, 4), (2, 3, 40, 57, 8), (1, 4, 300, 300, 16), (1, 2, 129, 64, 5)]
)
def test_received_equals_the_dense_softmax(shape):
    b, h, lq, lk, d = shape
    g = torch.Generator().manual_seed(lq)
    q, k = 3 * torch.randn(b, h, lq, d, generator=g), 3 * torch.randn(b, h, lk, d, generator=g)
    want = dense_received(q, k, d**-0.5)
    got = received(q, k, d**-0.5)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    lse = torch.logsumexp((q @ k.transpose(-1, -2)) * d**-0.5, dim=-1)  # (B, H, Lq) known
    torch.testing.assert_close(received(q, k, d**-0.5, lse).double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse_attention(q, k, k, d**-0.5), lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_blocked_lse(q, k, d**-0.5), lse, rtol=1e-5, atol=1e-5)


def test_segments_are_independent_and_averaged():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(70, 3, 8, generator=g), torch.randn(70, 3, 8, generator=g)  # (S, H, hd)
    cu = torch.tensor([0, 30, 70])
    got = received_segments(q, k, cu, 0.3, heads=3)
    for a, b in ((0, 30), (30, 70)):
        seg = dense_received(q[a:b].transpose(0, 1)[None], k[a:b].transpose(0, 1)[None], 0.3)  # (1, H, S_i)
        torch.testing.assert_close(got[a:b].double(), seg[0].sum(0) / (3 * (b - a)), rtol=1e-5, atol=1e-7)
    assert torch.allclose(got[:30].sum(), torch.tensor(1.0)) and torch.allclose(
        got[30:].sum(), torch.tensor(1.0)
    )


class Largest(TorchDispatchMode):
    """The largest tensor any operation returns while active (in elements)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if torch.is_tensor(t):
                self.largest = max(self.largest, t.numel())
        return out


def test_memory_is_linear_in_the_patches():
    """16384 patches: no tensor of the signal is more than a few times (S x hd); an S x S score
    matrix (268M elements) would fail this."""
    s, h, d = 16384, 2, 8
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(s, h, d, generator=g), torch.randn(s, h, d, generator=g)
    with Largest() as big:
        got = received_segments(q, k, torch.tensor([0, s]), d**-0.5, heads=h)
    assert big.largest <= 4 * s * h * (d + 8), big.largest
    assert got.shape == (s,) and torch.isfinite(got).all()
    torch.testing.assert_close(got.sum(), torch.tensor(1.0), rtol=1e-4, atol=0)
    # spot-check columns against the dense definition, 512 keys at a time
    cols = torch.arange(0, s, 997)
    scores = torch.einsum("shd,chd->hsc", q.double(), k[cols].double()) * d**-0.5  # (H, S, C)
    lse = torch.cat([torch.logsumexp(torch.einsum("shd,thd->hst", q[i : i + 1024].double(), k.double())
                                     * d**-0.5, dim=-1) for i in range(0, s, 1024)], dim=1)  # fmt: skip
    want = (scores - lse.unsqueeze(-1)).exp().sum(dim=(0, 1)) / (h * s)  # (C,)
    torch.testing.assert_close(got[cols].double(), want, rtol=1e-4, atol=0)


class FlashCalls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func.__name__.split(".")[0] == FLASH
        return func(*args, **(kwargs or {}))


RECEIVED = [c.family for c in families() if c.default_saliency == "attention_received"]


@pytest.mark.parametrize("family", RECEIVED)
def test_the_signal_costs_one_fused_pass_beside_the_towers_own(family):
    """Under SDPA the tower's own attention call gives the queries' log-sum-exp: the signal adds
    one fused pass per segment (image, or crop batch), and equals the signal of the eager model."""
    model, proc = cached_model(family)  # sdpa
    eager, _ = cached_model(family, "eager")
    inputs = batch_inputs(family, proc)
    calls, values = {}, {}
    for name, m in (("sdpa", model), ("eager", eager)):
        for hooked in (False, True):
            record = {}
            hooks = get_adapter(m).vision_hooks(lambda r=record: type("R", (), {"raw": r})(), {"saliency"})
            if not hooked:
                for hk in hooks:
                    hk.remove()
            try:
                with torch.no_grad(), FlashCalls() as fc:
                    m(**inputs)
            finally:
                for hk in hooks:
                    hk.remove()
            calls[name, hooked] = fc.calls
            if hooked:
                got = record.get("received", record.get("saliency"))
                values[name] = torch.cat(list(got)) if isinstance(got, list) else got
    segments = inputs["image_grid_thw"].shape[0] if "image_grid_thw" in inputs else 1
    assert calls["sdpa", True] - calls["sdpa", False] == segments
    assert calls["eager", True] - calls["eager", False] == 2 * segments  # no call to read: two passes
    torch.testing.assert_close(values["sdpa"], values["eager"], rtol=1e-4, atol=1e-7)


def test_the_recorder_is_gone_after_a_forward_that_raises():
    layer = torch.nn.Linear(4, 4)
    got = []

    def attention(x):
        torch.nn.functional.scaled_dot_product_attention(x, x, x)
        raise RuntimeError("boom")

    module = torch.nn.Module()
    module.forward = attention
    handles = on_attention_calls(module, lambda *a: got.append(a))
    try:
        with pytest.raises(RuntimeError, match="boom"):
            module(torch.randn(1, 2, 5, 4))
        assert _get_current_dispatch_mode() is None and not got
        module.forward = lambda x: torch.nn.functional.scaled_dot_product_attention(x, x, layer(x))
        module(torch.randn(1, 2, 5, 4))
        assert _get_current_dispatch_mode() is None and len(got) == 1 and len(got[0][2]) == 1
    finally:
        for h in handles:
            h.remove()
