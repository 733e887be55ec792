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


LM_OWN = {
    "inputs_embeds",
    "attention_mask",
    "position_ids",
    "past_key_values",
    "use_cache",
    "input_ids",
    "logits_to_keep",
}


def stock_side_inputs(model, inputs) -> dict:
    """The stock language model's per-position side inputs for these inputs (any tensor kwarg of
    its prefill call beyond embeddings, mask, positions and cache, e.g. DeepStack's
    ``visual_pos_masks`` (B, L) and ``deepstack_visual_embeds``), or {} for families without."""
    got = {}

    def grab(module, args, kwargs):
        got.update({k: v for k, v in kwargs.items() if k not in LM_OWN and v is not None})

    h = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        h.remove()
    return {k: v for k, v in got.items() if torch.is_tensor(v) or isinstance(v, (list, tuple))}


def restrict_side_inputs(side: dict, keep: torch.Tensor) -> dict:
    """``side`` restricted to the kept positions (``keep`` (B, L)), left packed like
    :func:`left_pack`: a (B, L) bool position mask is packed; tensors listed beside it with one row
    per True position of that mask (row-major) keep the rows of kept positions."""
    out = {}
    masks = {
        k: v
        for k, v in side.items()
        if torch.is_tensor(v) and v.dtype == torch.bool and v.shape == keep.shape
    }
    for name, mask in masks.items():
        packed, valid = left_pack(mask, keep)
        out[name] = packed & valid
        order = torch.nonzero(mask.reshape(-1)).flatten()  # visual positions, row-major
        kept_rows = keep.reshape(-1)[order]  # (n,) which rows survive, in row-major order
        for other, value in side.items():
            if other in masks:
                continue
            if isinstance(value, (list, tuple)) and all(int(t.shape[0]) == order.numel() for t in value):
                out[other] = [t[kept_rows] for t in value]
    return out


@contextlib.contextmanager
def feed_side_inputs(model, side: dict):
    """The stock language model additionally gets ``side`` at its prefill call (a call without a
    filled cache): the stock model fed exactly those per-position inputs too."""

    def add(module, args, kwargs):
        cache = kwargs.get("past_key_values")
        if side and (cache is None or cache.get_seq_length() == 0):
            kwargs.update(side)
            return args, kwargs
        return None

    h = model.model.language_model.register_forward_pre_hook(add, with_kwargs=True)
    try:
        yield
    finally:
        h.remove()


def _run_layers(model, idx, h, pos, mask2d, cache):
    """Stock decoder layers ``idx`` of the language model on ``h`` (B, q, D) at positions ``pos``
    ((B, q), (3, B, q) or (4, B, q) with the text row first), the 2-D ``mask2d`` (B, past + q)
    and the stock hybrid ``cache``, each layer with the stock mask of its kind."""
    from transformers.masking_utils import create_causal_mask, create_recurrent_attention_mask

    lm = model.model.language_model
    cfg = lm.config
    types = cfg.layer_types
    text_pos, rope_pos = (pos[0], pos[1:]) if pos.dim() == 3 and pos.shape[0] == 4 else (None, pos)
    full = next(i for i in idx if types[i] == "full_attention")
    kw = {"config": cfg, "inputs_embeds": h, "attention_mask": mask2d, "past_key_values": cache}
    masks = {
        "full_attention": create_causal_mask(**kw, position_ids=text_pos, layer_idx=full),
        "linear_attention": create_recurrent_attention_mask(**kw),
    }
    pe = lm.rotary_emb(h, rope_pos)
    for i in idx:
        h = lm.layers[i](
            h,
            position_embeddings=pe,
            attention_mask=masks[types[i]],
            position_ids=text_pos,
            past_key_values=cache,
        )
    return h


def two_stage_stock(model, inputs, keep: torch.Tensor, layer: int, new: int):
    """The stated in-LLM reference for hybrid decoders, run by hand on the stock modules and the
    stock hybrid cache: decoder layers ``< layer`` on the whole prompt, layers ``>= layer`` on only
    the kept positions (``keep`` (B, L), left packed, original positions), then ``new`` greedy
    steps through both stages. Returns ``(logits (B, L', V) of the kept positions, tokens (B, new))``."""
    from transformers import DynamicCache

    lm = model.model.language_model
    n = lm.config.num_hidden_layers
    head, tail = range(layer), range(layer, n)
    cache = DynamicCache(config=lm.config)
    pos = stock_positions(model, inputs)
    mask = inputs["attention_mask"]
    with torch.no_grad():
        h = _run_layers(model, head, stock_embeds(model, inputs), pos, mask, cache)
        h, valid = left_pack(h, keep)
        kmask = left_pack(mask, keep)[0] * valid
        h = _run_layers(model, tail, h, left_pack(pos, keep, dim=2 if pos.dim() == 3 else 1)[0], kmask, cache)
        out = model.lm_head(lm.norm(h))
        nxt = pos[..., -1:] + 1  # the next position of each row, on every axis
        tokens = [out[:, -1].argmax(-1)]
        for _ in range(new - 1):
            e = lm.embed_tokens(tokens[-1][:, None])  # (B, 1, D)
            ones = torch.ones_like(mask[:, :1])
            mask, kmask = torch.cat((mask, ones), 1), torch.cat((kmask, ones), 1)
            e = _run_layers(model, head, e, nxt, mask, cache)
            e = _run_layers(model, tail, e, nxt, kmask, cache)
            tokens.append(model.lm_head(lm.norm(e))[:, -1].argmax(-1))
            nxt = nxt + 1
    return out, torch.stack(tokens, 1)
