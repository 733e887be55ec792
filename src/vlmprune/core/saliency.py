"""Attention signals recomputed without eager attention (integration.md "Attention weights").

SDPA/FlashAttention never return attention probabilities, and forcing a user's model to eager
is not an option. Each function here recomputes exactly the one row (or column sum) a method
needs from the attention module's own projections, in float32.
"""

from __future__ import annotations

import sys

import torch


def cls_attention(attn, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS-query attention of a CLIP attention module.

    ``hidden`` (V, T, Dv): the module's input (after ``layer_norm1``), CLS at position 0.
    Returns ``(saliency, keys)``: saliency (V, T) = softmax(q_cls k^T * scale) mean over heads
    (row 0 of the eager attention probabilities, all T columns), keys (V, T, hd) mean over heads.
    Cost O(V T Dv): one query row instead of T.
    """
    h = hidden.float()
    n_views, t, _ = h.shape
    heads, hd = attn.num_heads, attn.head_dim
    w_q, b_q = attn.q_proj.weight.float(), attn.q_proj.bias
    w_k, b_k = attn.k_proj.weight.float(), attn.k_proj.bias
    q = torch.nn.functional.linear(h[:, :1], w_q, None if b_q is None else b_q.float())  # (V, 1, Dv)
    k = torch.nn.functional.linear(h, w_k, None if b_k is None else b_k.float())  # (V, T, Dv)
    q = q.view(n_views, 1, heads, hd).transpose(1, 2)  # (V, H, 1, hd)
    k = k.view(n_views, t, heads, hd).transpose(1, 2)  # (V, H, T, hd)
    probs = torch.softmax((q @ k.transpose(-1, -2)) * attn.scale, dim=-1)  # (V, H, 1, T)
    return probs.mean(1)[:, 0], k.mean(1)  # (V, T), (V, T, hd)


def qwen_attention_received(attn, hidden, cu_seqlens, position_embeddings, chunk: int = 1024) -> torch.Tensor:
    """Attention received per patch in a Qwen vision block with full attention.

    ``hidden`` (S, Dv): the attention module's input (after ``norm1``) for every image
    concatenated; ``cu_seqlens`` (n+1,) image boundaries; ``position_embeddings`` the vision
    (cos, sin). Returns (S,): for each key patch, softmax(q k^T * scale) averaged over heads and
    over the queries of its own image. Queries are processed in chunks (memory O(chunk * S_i)).
    """
    rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision
    s = hidden.shape[0]
    heads = attn.num_heads
    qkv = torch.nn.functional.linear(
        hidden.float(), attn.qkv.weight.float(), None if attn.qkv.bias is None else attn.qkv.bias.float()
    )
    q, k, _ = qkv.reshape(s, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)  # each (S, H, hd)
    cos, sin = position_embeddings
    q, k = rotate(q, k, cos.float(), sin.float())
    scale = getattr(attn, "scaling", None) or q.shape[-1] ** -0.5
    out = torch.zeros(s, dtype=torch.float32, device=hidden.device)
    bounds = cu_seqlens.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        kb = k[a:b].transpose(0, 1)  # (H, S_i, hd)
        acc = torch.zeros(b - a, dtype=torch.float32, device=hidden.device)
        for c in range(a, b, chunk):
            qb = q[c : min(b, c + chunk)].transpose(0, 1)  # (H, C, hd)
            probs = torch.softmax((qb @ kb.transpose(-1, -2)) * scale, dim=-1)  # (H, C, S_i)
            acc += probs.sum(dim=(0, 1))  # (H, C, S_i) -> (S_i,)
        out[a:b] = acc / (heads * (b - a))
    return out


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def last_token_attention(layer, hidden, position_embeddings, mask2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The last position's attention over the sequence at a Llama/Qwen2-style decoder layer.

    ``hidden`` (B, L, D) the layer's input; ``position_embeddings`` (cos, sin) each (B, L, hd);
    ``mask2d`` (B, L) 1 for real tokens. Returns ``(attention, keys)``: attention (B, L) =
    softmax over keys of the last query, mean over heads (what eager attention returns as
    ``attn_weights[:, :, -1]``, averaged), and keys (B, L, Hkv*hd) un-rotated key projections.
    Cost O(L D Dkv) for the keys, O(L D) for the query row.
    """
    attn = layer.self_attn
    x = layer.input_layernorm(hidden).float()
    bsz, length, _ = x.shape
    hd = attn.head_dim

    def proj(lin, inp):
        return torch.nn.functional.linear(
            inp, lin.weight.float(), None if lin.bias is None else lin.bias.float()
        )

    q = proj(attn.q_proj, x[:, -1:]).view(bsz, 1, -1, hd).transpose(1, 2)  # (B, H, 1, hd)
    k_flat = proj(attn.k_proj, x)  # (B, L, Hkv*hd)
    k = k_flat.view(bsz, length, -1, hd).transpose(1, 2)  # (B, Hkv, L, hd)
    if (
        getattr(attn, "q_norm", None) is not None
    ):  # pragma: no cover - Qwen3-style, not a supported family yet
        q, k = attn.q_norm(q), attn.k_norm(k)
    cos, sin = (t.float().unsqueeze(1) for t in position_embeddings)  # (B, 1, L, hd)
    q = q * cos[:, :, -1:] + rotate_half(q) * sin[:, :, -1:]
    k = k * cos + rotate_half(k) * sin
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)  # (B, H, L, hd)
    scores = (q @ k.transpose(-1, -2)) * attn.scaling  # (B, H, 1, L)
    scores = scores.masked_fill(~mask2d.bool()[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)[:, :, 0]  # (B, H, L)
    return probs.mean(1), k_flat
