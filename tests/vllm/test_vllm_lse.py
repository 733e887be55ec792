"""vLLM's CPU vision attention op answered by the plugin's recorder: the op's own output, bit for
bit, each segment's log-sum-exp kept, and the attention-received signal one fused pass cheaper."""

from __future__ import annotations

import pytest
import torch
import vllm.v1.attention.ops.vit_attn_wrappers  # noqa: F401  (registers torch.ops.vllm.torch_sdpa_wrapper)
from torch.utils._python_dispatch import TorchDispatchMode

from vlmprune.adapters.signals import lse_attention, received_segments
from vlmprune.integrations.vllm.lse import SdpaLseRecorder
from vlmprune.integrations.vllm.mrope import grab_received

S, H, D = 100, 4, 16
CU = torch.tensor([0, 36, 100], dtype=torch.int32)


class Attn(torch.nn.Module):
    """A vision block's inner attention, as vLLM's ``MMEncoderAttention`` calls its op."""

    def forward(self, query, key, value, cu_seqlens):
        return torch.ops.vllm.torch_sdpa_wrapper(query, key, value, D**-0.5, cu_seqlens)


class Flash(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func.__name__.startswith("_scaled_dot_product_flash_attention_for_cpu")
        return func(*args, **(kwargs or {}))


def qkv(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, S, H, D, generator=g, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("cu", [CU, None])
def test_recorder_returns_the_ops_output_and_keeps_the_lse(cu):
    q, k, v = qkv()
    want = torch.ops.vllm.torch_sdpa_wrapper(q, k, v, D**-0.5, cu)
    with SdpaLseRecorder() as rec:
        got = torch.ops.vllm.torch_sdpa_wrapper(q, k, v, D**-0.5, cu)
    assert torch.equal(got, want)
    bounds = [0, S] if cu is None else cu.tolist()
    assert len(rec.calls) == len(bounds) - 1
    for (qs, ks, scale, lse), lo, hi in zip(rec.calls, bounds[:-1], bounds[1:]):
        assert torch.equal(qs, q[:, lo:hi].transpose(1, 2)) and torch.equal(ks, k[:, lo:hi].transpose(1, 2))
        torch.testing.assert_close(lse, lse_attention(qs, ks, v[:, lo:hi].transpose(1, 2), scale))


def test_recorder_leaves_other_kernels_to_the_op():
    q, k, v = qkv(torch.float64)  # the CPU flash kernel is not what SDPA picks for float64
    want = torch.ops.vllm.torch_sdpa_wrapper(q, k, v, D**-0.5, CU)
    with SdpaLseRecorder() as rec:
        got = torch.ops.vllm.torch_sdpa_wrapper(q, k, v, D**-0.5, CU)
    assert torch.equal(got, want) and rec.calls == []


@pytest.mark.parametrize("dtype, own, passes", [(torch.float32, 1, 1), (torch.float64, 0, 2)])
def test_received_costs_one_fused_pass_more_than_the_tower(dtype, own, passes):
    """float32: the recorder runs the op's own call (seen here, ``own``) and the signal adds one
    pass per segment; float64: the op runs untouched (opaque here) and the signal adds two."""
    q, k, v = qkv(dtype)
    attn, record = Attn(), {}
    handles = grab_received(attn, record, H)
    try:
        with Flash() as count:
            out = attn(query=q, key=k, value=v, cu_seqlens=CU)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(out, torch.ops.vllm.torch_sdpa_wrapper(q, k, v, D**-0.5, CU))
    want = received_segments(q[0].float(), k[0].float(), CU, D**-0.5, H)
    torch.testing.assert_close(record["received"], want, rtol=1e-4, atol=1e-7)
    assert count.calls == (own + passes) * (CU.numel() - 1)
