"""Stated references for the exactness tests, built on the *stock* model with no vlmprune hooks.

- :func:`stock_positions`: the position ids stock ``generate`` builds ((B, L) or (4, B, L)).
- :func:`stock_embeds`: the stock LLM input (inputs_embeds) of a call.
- :func:`left_pack`: keep the surviving positions of each row, left padded, as the session does;
  with it the tests build "stock fed only the kept tokens" and "stock with the dropped tokens
  masked" references.
- :func:`layer_key_mask`: the stock model whose layers ``>= K`` cannot see the dropped keys (a 4-D
  additive mask installed on those layers), at prefill and at every decode step.
"""

from __future__ import annotations

import contextlib

import torch


def stock_positions(model, inputs) -> torch.Tensor:
    """The position ids stock ``generate`` builds for these inputs ((B, L) or (4, B, L))."""
    kwargs = {k: v for k, v in inputs.items() if k != "input_ids"}
    kwargs["input_ids"] = inputs["input_ids"]
    return model._prepare_position_ids_for_generation(inputs["input_ids"], dict(kwargs))


def stock_embeds(model, inputs) -> torch.Tensor:
    """(B, L, D) inputs_embeds the stock model feeds its language model."""
    got = {}

    def grab(module, args, kwargs):
        got["e"] = kwargs["inputs_embeds"]

    h = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        h.remove()
    return got["e"]


def left_pack(x: torch.Tensor, keep: torch.Tensor, dim: int = 1):
    """Gather the kept positions of each row, right-aligned (left padded): returns (x', valid)."""
    counts = keep.sum(1)
    new_len = int(counts.max())
    out_idx = torch.zeros(keep.shape[0], new_len, dtype=torch.long)
    valid = torch.zeros(keep.shape[0], new_len, dtype=torch.bool)
    for b in range(keep.shape[0]):
        kept = torch.nonzero(keep[b]).flatten()
        out_idx[b, new_len - kept.numel() :] = kept
        valid[b, new_len - kept.numel() :] = True
    if x.dim() == 2:
        return x.gather(1, out_idx), valid
    if dim == 2:  # (k, B, L)
        return x.gather(2, out_idx[None].expand(x.shape[0], -1, -1)), valid
    return x.gather(1, out_idx[..., None].expand(-1, -1, x.shape[-1])), valid


@contextlib.contextmanager
def layer_key_mask(model, layer: int, dropped: torch.Tensor):
    """Layers ``>= layer`` of the stock LLM cannot attend to keys where ``dropped`` (B, L) is True
    (prompt positions; decode tokens are never dropped). Installs an additive 4-D mask."""
    lm = model.model.language_model
    state = {"mask2d": None}

    def grab_lm(module, args, kwargs):
        m = kwargs.get("attention_mask")
        e = kwargs["inputs_embeds"]
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None else 0
        total = past + e.shape[1]
        if m is None:
            m = torch.ones(e.shape[0], total, dtype=torch.long)
        state.update(mask2d=m, q=e.shape[1], past=past, dtype=e.dtype)

    def on_layer(module, args, kwargs):
        m = state["mask2d"].bool().clone()  # (B, T)
        m[:, : dropped.shape[1]] &= ~dropped
        bsz, total = m.shape
        q, past = state["q"], state["past"]
        qpos = torch.arange(past, past + q)[:, None]
        causal = torch.arange(total)[None, :] <= qpos  # (q, T)
        allowed = causal[None] & m[:, None, :]  # (B, q, T)
        neg = torch.finfo(state["dtype"]).min
        add = torch.zeros(bsz, 1, q, total, dtype=state["dtype"]).masked_fill(~allowed[:, None], neg)
        kwargs["attention_mask"] = add
        return args, kwargs

    handles = [lm.register_forward_pre_hook(grab_lm, with_kwargs=True)]
    handles += [lyr.register_forward_pre_hook(on_layer, with_kwargs=True) for lyr in lm.layers[layer:]]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
