"""The first pass of the attention-received signal read off vLLM's own vision attention call.

On the CPU, vLLM's vision towers run their attention through one custom op,
``torch.ops.vllm.torch_sdpa_wrapper`` (per ``cu_seqlens`` segment, ``F.scaled_dot_product_attention``
on (b, h, s, d) views). That op is opaque to a dispatch mode: the log-sum-exp its kernel computes
never reaches the caller. While a hooked block's attention runs, :class:`SdpaLseRecorder` answers
the op itself with the kernel ``F.scaled_dot_product_attention`` picks there (the CPU's flash
kernel), on the same views, and keeps each segment's log-sum-exp: the output is the op's own,
and :func:`~vlmprune.adapters.signals.received` then needs one fused pass instead of two.

Where that kernel would not be the one chosen (another dtype, a mask, grouped heads, another
platform's kernel), the op runs untouched and the signal takes its two passes.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend

from vlmprune.adapters.signals import LseRecorder

OP = "torch_sdpa_wrapper"


def _flash_is_chosen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale) -> bool:
    """Whether ``F.scaled_dot_product_attention(q, k, v, scale=scale)`` runs the CPU flash kernel."""
    from vllm.platforms import current_platform

    if q.device.type != "cpu" or q.dtype != torch.float32 or current_platform.is_zen_cpu():
        return False  # (AMD's zen CPU build runs its own kernel)
    choice = torch._fused_sdp_choice(q, k, v, None, 0.0, False, scale=scale)
    return choice == SDPBackend.FLASH_ATTENTION.value


class SdpaLseRecorder(LseRecorder):
    """An :class:`LseRecorder` that also answers vLLM's ``torch_sdpa_wrapper`` op (see the module
    docstring); ``calls`` holds one ``(q, k, scale, lse)`` per segment, q/k (1, H, S_i, d)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ != OP:
            return super().__torch_dispatch__(func, types, args, kwargs)
        kwargs = kwargs or {}
        names = ("q", "k", "v", "scale", "cu_seqlens", "enable_gqa")
        bound = dict(zip(names, args)) | kwargs
        got = self._answer(bound)
        return func(*args, **kwargs) if got is None else got

    def _answer(self, a: dict) -> torch.Tensor | None:
        q, k, v = (a[n].transpose(1, 2) for n in ("q", "k", "v"))  # (b, s, h, d) -> (b, h, s, d)
        scale, cu = a.get("scale"), a.get("cu_seqlens")
        if a.get("enable_gqa") or q.shape[0] != 1 or not _flash_is_chosen(q, k, v, scale):
            return None
        bounds = [0, q.shape[2]] if cu is None else cu.tolist()
        outs, calls = [], []
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            qs, ks, vs = q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi]
            out, lse = flash(qs, ks, vs, scale=scale)
            outs.append(out.transpose(1, 2))  # (1, h, s_i, d) -> (1, s_i, h, d)
            calls.append((qs, ks, qs.shape[-1] ** -0.5 if scale is None else scale, lse))
        self.calls += calls
        return torch.cat(outs, dim=1) if cu is not None else outs[0].contiguous()
