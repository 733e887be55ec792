"""Attention signals at the cost of fused attention passes, in O(S) extra memory.

The attention a key ``j`` receives, ``sum_i softmax_j(s_ij)`` with ``s_ij = scale * q_i . k_j``,
needs every query's log-sum-exp ``lse_i`` first: ``received_j = sum_i exp(s_ij - lse_i)``. Both
steps are fused attention calls that return the log-sum-exp and never hold the (S, S) scores:

1. queries against keys gives ``lse_i`` (or it is read off the tower's own attention call, which
   computes it anyway: :class:`LseRecorder`);
2. the roles swapped, with one more dimension that carries ``-lse_i``: queries ``[scale * k_j,
   1]`` against keys ``[q_i, -lse_i]`` score ``s_ij - lse_i``, so that call's own log-sum-exp is
   ``log received_j``.

The engine-independent math lives here once: the HF adapters and the vLLM plugin take ``q``/``k``
from whatever module layout they have and call :func:`received` / :func:`received_segments` /
:func:`cls_attention`.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: elements of one block of scores in the unfused fallback (H x C x S_k)
BLOCK_ELEMENTS = 1 << 22


def _pad_to(t: torch.Tensor, width: int) -> torch.Tensor:
    return t if t.shape[-1] == width else torch.nn.functional.pad(t, (0, width - t.shape[-1]))


def lse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, H, Lq) log-sum-exp over keys of ``scale * q k^T`` for ``q`` (B, H, Lq, d), ``k`` and
    ``v`` (B, H, Lk, d): one fused attention call where the device has one that returns it (the
    CPU's flash kernel, CUDA's memory-efficient kernel), else blocks of queries."""
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)[1]
    if q.device.type == "cuda":
        width = -(-q.shape[-1] // 8) * 8  # the kernel's head-size alignment
        q, k, v = (_pad_to(t, width) for t in (q, k, v))
        out = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, scale=scale)
        return out[1][..., : q.shape[-2]].float()
    return _blocked_lse(q, k, scale)


def _blocked_lse(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """The unfused form of :func:`lse_attention`: O(C x Lk) scores per head at a time."""
    b, h, lq, _ = q.shape
    step = max(1, BLOCK_ELEMENTS // max(1, b * h * k.shape[-2]))
    kt = k.transpose(-1, -2)
    parts = [torch.logsumexp((q[..., c : c + step, :] @ kt) * scale, dim=-1) for c in range(0, lq, step)]
    return torch.cat(parts, dim=-1) if parts else q.new_zeros(b, h, 0)


def received(q: torch.Tensor, k: torch.Tensor, scale: float, lse: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, Lk): per head, the attention each key receives, ``sum_i softmax_j(scale * q_i .
    k_j)`` over the queries ``q`` (B, H, Lq, d), for keys ``k`` (B, H, Lk, d), float32. ``lse``
    (B, H, Lq) the queries' log-sum-exp when known (from the tower's own attention call), else one
    more fused pass computes it. Extra memory O((Lq + Lk) d)."""
    q, k = q.float(), k.float()
    if lse is None:
        lse = lse_attention(q, k, k, scale)
    one = torch.ones_like(k[..., :1])
    queries = torch.cat([k * scale, one], dim=-1)  # (B, H, Lk, d + 1)
    keys = torch.cat([q, -lse.float().unsqueeze(-1)], dim=-1)  # (B, H, Lq, d + 1): scores s_ij - lse_i
    return lse_attention(queries, keys, keys, 1.0).exp()


def received_segments(
    q: torch.Tensor,
    k: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    heads: int,
    lses: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """(S,) attention received per key patch from rotated ``q``, ``k`` (S, H, hd): softmax(q k^T *
    scale) within each ``cu_seqlens`` segment (an image, or a frame), summed over the H heads
    given and the segment's queries, divided by ``heads`` x the segment's length (``heads`` is the
    model's head count: where a rank holds only some heads, the ranks' results add up to the
    mean). ``lses``: per segment, its queries' (1, H, S_i) log-sum-exp when known."""
    out = torch.empty(q.shape[0], dtype=torch.float32, device=q.device)
    bounds = cu_seqlens.tolist()
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        qs = q[a:b].transpose(0, 1).unsqueeze(0)  # (S_i, H, hd) -> (1, H, S_i, hd)
        ks = k[a:b].transpose(0, 1).unsqueeze(0)
        got = received(qs, ks, scale, None if lses is None else lses[i])  # (1, H, S_i)
        out[a:b] = got[0].sum(0) / (heads * (b - a))  # (1, H, S_i) -> (S_i,)
    return out


def cls_attention(q: torch.Tensor, k: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The CLS query's attention, from the CLS query ``q`` (V, H, 1, hd) and the keys ``k``
    (V, H, T, hd) of the heads given (float32): ``(saliency (V, T), keys (V, T, hd))``, the
    softmax row ``softmax(q_cls k^T * scale)`` and the keys, each averaged over those heads. One
    query row instead of T: O(V H T hd)."""
    q, k = q.float(), k.float()
    probs = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1)  # (V, H, 1, T)
    return probs.mean(1)[:, 0], k.mean(1)  # (V, T), (V, T, hd)


class LseRecorder(TorchDispatchMode):
    """Records ``(query, key, scale, lse)`` of every fused attention call that runs while it is
    active and whose kernel computes the log-sum-exp anyway (the CPU's flash kernel, float32),
    without changing what runs: the call's own outputs are returned untouched.

    Active while a module's forward runs (:func:`on_attention_calls`), it turns the first pass of
    :func:`received` into a read of the module's own attention call.
    """

    OPS = ("_scaled_dot_product_flash_attention_for_cpu",)

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.__name__.split(".")[0] in self.OPS and args[0].dtype == torch.float32:
            q, k = args[0], args[1]
            dropout = kwargs.get("dropout_p", args[3] if len(args) > 3 else 0.0)
            causal = kwargs.get("is_causal", args[4] if len(args) > 4 else False)
            if not dropout and not causal and kwargs.get("attn_mask") is None:
                scale = kwargs.get("scale")
                self.calls.append((q, k, q.shape[-1] ** -0.5 if scale is None else scale, out[1]))
        return out


def on_attention_calls(module: torch.nn.Module, done, recorder: type[LseRecorder] = LseRecorder) -> list:
    """Hooks that record ``module``'s fused attention calls while its forward runs (a
    ``recorder``, :class:`LseRecorder` or a subclass for an engine's own attention op) and then
    call ``done(args, kwargs, calls)``; the recorder is left in a forward hook registered with
    ``always_call``, so it never outlives the forward, even when the forward raises (``done`` is
    not called then). Returns the two handles."""
    active: list[LseRecorder] = []

    def start(mod, args, kwargs):
        while active:  # a forward that never reached its hooks' end (cannot happen with always_call)
            active.pop().__exit__(None, None, None)
        active.append(recorder())
        active[0].__enter__()

    def stop(mod, args, kwargs, output):
        if not active:
            return
        rec = active.pop()
        rec.__exit__(None, None, None)
        if output is not None:
            done(args, kwargs, rec.calls)

    return [
        module.register_forward_pre_hook(start, with_kwargs=True),
        module.register_forward_hook(stop, with_kwargs=True, always_call=True),
    ]
