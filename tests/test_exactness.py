"""Exactness of pruned runs against stated references, every family."""

import pytest
import torch
from conftest import batch_inputs, cached_model
from reference import (
    feed_side_inputs,
    layer_key_mask,
    left_pack,
    restrict_side_inputs,
    stock_embeds,
    stock_positions,
    stock_side_inputs,
    two_stage_stock,
)

import vlmprune
from vlmprune.adapters import get_adapter

ATOL = 1e-4
NEW = 4


def media_items(model, inputs):
    """Per image or video, in batch order: (row, sequence positions of its content tokens, of all
    its placeholders), via the adapter's layouts."""
    adapter = get_adapter(model)
    call = {k: inputs.get(k) for k in ("input_ids", "image_sizes", "image_grid_thw", "video_grid_thw")}
    ids = inputs["input_ids"]
    out = []
    for kind, token in adapter.media_tokens().items():
        if not (ids == token).any():
            continue
        it = iter(adapter.media_layouts(kind, call, None))
        for b in range(ids.shape[0]):
            pos = torch.nonzero(ids[b] == token).flatten()
            off = 0
            while off < pos.numel():
                lay = next(it)
                run = pos[off : off + lay.n_placeholders]
                out.append((b, run[lay.content], run))
                off += lay.n_placeholders
    return sorted(out, key=lambda item: (item[0], int(item[2][0])))


def content_positions(model, inputs):
    """Per image or video: (row, sequence positions of its content tokens)."""
    return [(row, pos) for row, pos, _ in media_items(model, inputs)]


def media_mask(model, ids):
    """(B, L) True at every image or video placeholder the adapter prunes."""
    return torch.isin(ids, torch.tensor(list(get_adapter(model).media_tokens().values())))


def kept_mask(model, inputs, selections, in_llm=False):
    """(B, L) True where a token survives. Pre-LLM: text + kept content tokens (LLaVA-NeXT newlines
    are dropped); in-LLM: everything except the dropped content tokens."""
    ids = inputs["input_ids"]
    items = media_items(model, inputs)
    if in_llm:
        keep = torch.ones_like(ids, dtype=torch.bool)
        for (row, pos, _), sel in zip(items, selections):
            dropped = torch.ones(pos.numel(), dtype=torch.bool)
            dropped[sel.kept] = False
            keep[row, pos[dropped]] = False
        return keep
    keep = ~media_mask(model, ids)
    for (row, pos, run), sel in zip(items, selections):
        if sel.kept.numel() == sel.num_tokens:
            keep[row, run] = True
        keep[row, pos[sel.kept]] = True
    return keep


def gen(model, inputs, **kw):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=NEW, do_sample=False, **kw)


def logits(model, inputs, **kw):
    with torch.no_grad():
        return model(**inputs, **kw).logits


# 1. keep everything == unmodified model ------------------------------------------------------
@pytest.mark.parametrize("name", ["random", "pool", "fastv"])
def test_keep_all_equals_stock(family, name):
    model, proc = cached_model(family)
    inputs = batch_inputs(family, proc)
    ref_logits, ref_gen = logits(model, inputs), gen(model, inputs)
    method = vlmprune.get_method(name, budget=10_000)
    with method(model):
        got_logits, got_gen = logits(model, inputs), gen(model, inputs)
    assert got_logits.shape == ref_logits.shape
    torch.testing.assert_close(got_logits, ref_logits, atol=ATOL, rtol=ATOL)
    assert torch.equal(got_gen, ref_gen)


# 2. pre-LLM, original positions == stock with the dropped tokens masked out --------------------
def test_original_positions_equal_masked_stock(family):
    model, proc = cached_model(family)
    inputs = batch_inputs(family, proc)
    method = vlmprune.RandomPrune(budget=5, positions="original")
    with method(model):
        got_logits = logits(model, inputs)
        got_gen = gen(model, inputs)
    keep = kept_mask(model, inputs, method.last_selection)
    masked = dict(inputs)
    masked["attention_mask"] = inputs["attention_mask"] * keep
    pos = stock_positions(model, inputs)
    ref_logits = logits(model, masked, position_ids=pos)
    ref_at_kept, valid = left_pack(ref_logits, keep)
    assert got_logits.shape == ref_at_kept.shape
    if not get_adapter(model).masking_is_dropping:
        # a linear-attention layer's gate still decays its state at a masked token: the masked
        # model is not the reference there (test 3, the model fed only the kept tokens, is)
        assert not torch.allclose(got_logits[valid], ref_at_kept[valid], atol=ATOL, rtol=ATOL)
        return
    torch.testing.assert_close(got_logits[valid], ref_at_kept[valid], atol=ATOL, rtol=ATOL)
    ref_gen = gen(model, masked, position_ids=pos)
    assert torch.equal(got_gen, ref_gen)


# 3. pre-LLM == the stock model fed only the kept tokens (both policies, merges included) ------
@pytest.mark.parametrize("name", ["random", "pool"])
@pytest.mark.parametrize("policy", ["compact", "original"])
def test_equals_stock_fed_kept_tokens(family, name, policy):
    model, proc = cached_model(family)
    if policy == "compact" and family.startswith("qwen"):
        with pytest.raises(ValueError, match="positions"):
            vlmprune.get_method(name, budget=5, positions=policy)(model)
        return
    check_fed_kept(model, batch_inputs(family, proc), name, policy)


@pytest.mark.parametrize("name", ["random", "pool", "temporal"])
def test_video_equals_stock_fed_kept_tokens(video_family, name):
    """Videos (a budget per video, frames as regions) next to an image, original positions."""
    model, proc = cached_model(video_family)
    check_fed_kept(model, batch_inputs(video_family, proc, "video"), name, "original")


def test_video_keep_all_equals_stock(video_family):
    model, proc = cached_model(video_family)
    inputs = batch_inputs(video_family, proc, "video")
    ref_logits, ref_gen = logits(model, inputs), gen(model, inputs)
    method = vlmprune.get_method("temporal", budget=10_000)
    with method(model):
        torch.testing.assert_close(logits(model, inputs), ref_logits, atol=ATOL, rtol=ATOL)
        assert torch.equal(gen(model, inputs), ref_gen)
    assert [s.num_tokens for s in method.last_selection] == [
        pos.numel() for _, pos, _ in media_items(model, inputs)
    ]
    assert len(method.last_selection) == 3


def check_fed_kept(model, inputs, name, policy):
    method = vlmprune.get_method(name, budget=5, positions=policy)
    with method(model):
        got_logits = logits(model, inputs)
        got_gen = gen(model, inputs)
    embeds = stock_embeds(model, inputs).clone()
    if method.merges:  # the merged features replace the kept tokens' own
        got = {}
        with method(model):

            def grab(module, args, kwargs):
                got["e"] = kwargs["inputs_embeds"]

            h = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
            try:
                logits(model, inputs)
            finally:
                h.remove()
    keep = kept_mask(model, inputs, method.last_selection)
    short_e, valid = left_pack(embeds, keep)
    if method.merges:
        assert short_e.shape == got["e"].shape
        short_e = got["e"]  # checked separately: merged rows are means of their groups (test_methods_matrix)
    short_mask = left_pack(inputs["attention_mask"], keep)[0] * valid
    kw = {"inputs_embeds": short_e, "attention_mask": short_mask}
    if policy == "original":
        pos = stock_positions(model, inputs)
        kw["position_ids"] = left_pack(pos, keep, dim=2 if pos.dim() == 3 else 1)[0]
    side = restrict_side_inputs(stock_side_inputs(model, inputs), keep)  # e.g. DeepStack rows
    with torch.no_grad(), feed_side_inputs(model, side):
        ref_logits = model(**kw).logits
        ref_new = model.generate(**kw, max_new_tokens=NEW, do_sample=False)
    torch.testing.assert_close(got_logits[valid], ref_logits[valid], atol=ATOL, rtol=ATOL)
    assert torch.equal(got_gen[:, inputs["input_ids"].shape[1] :], ref_new[:, -NEW:])


# 4. in-LLM at layer K == stock with dropped keys masked from layer K on ------------------------
def test_in_llm_equals_layer_masked_stock(family):
    model, proc = cached_model(family)
    inputs = batch_inputs(family, proc)
    method = vlmprune.FastV(budget=4, layer=2)
    with method(model):
        got_logits = logits(model, inputs)
        got_gen = gen(model, inputs)
    keep = kept_mask(model, inputs, method.last_selection, in_llm=True)
    assert all(s.stage == "in_llm" and s.kept.numel() == 4 for s in method.last_selection)
    if not get_adapter(model).masking_is_dropping:  # hybrid decoder: layers >= 2 run on the kept tokens only
        ref_at_kept, ref_new = two_stage_stock(model, inputs, keep, 2, NEW)
        real = left_pack(inputs["attention_mask"], keep)[0].bool()
        torch.testing.assert_close(got_logits[real], ref_at_kept[real], atol=ATOL, rtol=ATOL)
        assert torch.equal(got_gen[:, inputs["input_ids"].shape[1] :], ref_new)
        return
    with layer_key_mask(model, 2, ~keep):
        ref_logits = logits(model, inputs)
        ref_gen = gen(model, inputs)
    ref_at_kept, valid = left_pack(ref_logits, keep)
    real = valid & left_pack(inputs["attention_mask"], keep)[0].bool()  # padding rows carry no output
    torch.testing.assert_close(got_logits[real], ref_at_kept[real], atol=ATOL, rtol=ATOL)
    assert torch.equal(got_gen, ref_gen)
