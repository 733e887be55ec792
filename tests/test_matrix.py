"""Registry-driven matrix: every registered method x every model family (timm style).

A new method gets these invariants for free by registering itself:
- keeping every token equals the unmodified model;
- exactly min(K, N) sorted unique kept indices per image, in a batch with a two-image prompt;
- the kept tokens really are the ones the LLM sees (pre-LLM: the LLM input equals the stock
  input at the kept positions, or merged features for merging methods; in-LLM: equals the stock
  model with the dropped keys masked from layer K on, or, for hybrid decoders, layers from K on
  fed only the kept tokens), and generation equals the stock model fed exactly that input.
"""

import pytest
import torch
from conftest import batch_inputs, cached_model
from reference import (
    LM_OWN,
    feed_side_inputs,
    layer_key_mask,
    left_pack,
    restrict_side_inputs,
    stock_embeds,
    stock_side_inputs,
    two_stage_stock,
)
from test_exactness import kept_mask, media_mask

import vlmprune
from vlmprune.adapters import get_adapter

METHODS = vlmprune.list_methods()
NEW = 3
BUDGET = 5


def capture_llm_input(model):
    """Registers (after the session's hook) a pre-hook recording what the language model gets."""
    got = {}

    def grab(module, args, kwargs):
        call = {k: kwargs.get(k) for k in ("inputs_embeds", "attention_mask", "position_ids")}
        call["side"] = {k: v for k, v in kwargs.items() if k not in LM_OWN and v is not None}
        got.setdefault("calls", []).append(call)

    return got, model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)


@pytest.mark.parametrize("name", METHODS)
def test_keep_all_equals_stock(name, family):
    model, proc = cached_model(family)
    inputs = batch_inputs(family, proc)
    with torch.no_grad():
        ref = model(**inputs).logits
        method = vlmprune.get_method(name, budget=100_000)
        with method(model):
            got = model(**inputs).logits
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert all(s.kept.numel() == s.num_tokens for s in method.last_selection)


@pytest.mark.parametrize("name", METHODS)
def test_kept_tokens_are_what_the_llm_sees(name, family):
    model, proc = cached_model(family)
    check_kept_tokens(name, model, batch_inputs(family, proc), 3)  # a one-image prompt, a two-image one


@pytest.mark.parametrize("name", METHODS)
def test_video_kept_tokens_are_what_the_llm_sees(name, video_family):
    """The same on videos (a budget per video, each frame a region): a video and an image in one
    prompt, a video alone in the other."""
    model, proc = cached_model(video_family)
    check_kept_tokens(name, model, batch_inputs(video_family, proc, "video"), 3)


def check_kept_tokens(name, model, inputs, items):
    method = vlmprune.get_method(name, budget=BUDGET)
    with torch.no_grad():
        with method(model):
            got, handle = capture_llm_input(model)
            try:
                out_logits = model(**inputs).logits
                out_gen = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
            finally:
                handle.remove()
    sels = method.last_selection
    assert len(sels) == items
    for s in sels:
        assert s.kept.numel() == min(BUDGET, s.num_tokens)
        assert (
            torch.all(s.kept[1:] > s.kept[:-1])
            and int(s.kept.min()) >= 0
            and int(s.kept.max()) < s.num_tokens
        )
    prefill = got["calls"][0]
    if method.pre_llm and method.llm_layer is None:
        stock = stock_embeds(model, inputs)
        keep = kept_mask(model, inputs, sels)
        packed, valid = left_pack(stock, keep)
        fed = prefill["inputs_embeds"]
        assert fed.shape == packed.shape
        real = valid & prefill["attention_mask"].bool()
        text = real & ~left_pack(media_mask(model, inputs["input_ids"]), keep)[0]
        torch.testing.assert_close(fed[text], packed[text], atol=0, rtol=0)  # text untouched
        if not method.merges:
            torch.testing.assert_close(fed[real], packed[real], atol=0, rtol=0)
        # generation == the stock model fed exactly this input (positions as the session computed)
        kw = {"inputs_embeds": fed, "attention_mask": prefill["attention_mask"]}
        if prefill["position_ids"] is not None:
            kw["position_ids"] = prefill["position_ids"]
        side = restrict_side_inputs(stock_side_inputs(model, inputs), keep)  # e.g. DeepStack rows
        assert set(side) == set(prefill["side"])  # the kept tokens' own side inputs, in order
        for name, value in side.items():
            got_value = prefill["side"][name]
            values = value if isinstance(value, list) else [value]
            got_values = got_value if isinstance(got_value, list) else [got_value]
            assert all(torch.equal(a, b) for a, b in zip(values, got_values)), name
        with torch.no_grad(), feed_side_inputs(model, side):
            ref_logits = model(**kw).logits
            ref_new = model.generate(**kw, max_new_tokens=NEW, do_sample=False)
        torch.testing.assert_close(out_logits[real], ref_logits[real], atol=1e-4, rtol=1e-4)
        assert torch.equal(out_gen[:, inputs["input_ids"].shape[1] :], ref_new[:, -NEW:])
    elif not method.pre_llm:
        keep = kept_mask(model, inputs, sels, in_llm=True)
        if not get_adapter(model).masking_is_dropping:  # hybrid decoder: layers >= K see the kept tokens only
            ref_at_kept, ref_new = two_stage_stock(model, inputs, keep, method.llm_layer, NEW)
            real = left_pack(inputs["attention_mask"], keep)[0].bool()
            torch.testing.assert_close(out_logits[real], ref_at_kept[real], atol=1e-4, rtol=1e-4)
            assert torch.equal(out_gen[:, inputs["input_ids"].shape[1] :], ref_new)
            return
        with layer_key_mask(model, method.llm_layer, ~keep), torch.no_grad():
            ref_logits = model(**inputs).logits
            ref_gen = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
        ref_at_kept, valid = left_pack(ref_logits, keep)
        real = valid & left_pack(inputs["attention_mask"], keep)[0].bool()
        torch.testing.assert_close(out_logits[real], ref_at_kept[real], atol=1e-4, rtol=1e-4)
        assert torch.equal(out_gen, ref_gen)


@pytest.mark.parametrize("name", METHODS)
def test_ratio_and_budget_one(name, family):
    model, proc = cached_model(family)
    inputs = batch_inputs(family, proc, "single")
    for kwargs, expect in (({"budget": 1}, lambda n: 1), ({"ratio": 0.3}, lambda n: max(1, round(0.3 * n)))):
        method = vlmprune.get_method(name, **kwargs)
        with method(model), torch.no_grad():
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        (sel,) = method.last_selection
        assert sel.kept.numel() == expect(sel.num_tokens)


@pytest.mark.parametrize("policy", ["compact", "original"])
def test_two_stage_sppruner_forward_and_generate(family, policy):
    """SPpruner's progressive option: a pre-LLM stage then an in-LLM pass, through forward and generate."""
    if policy == "compact" and family.startswith("qwen"):
        pytest.skip("Qwen supports original positions only")
    model, proc = cached_model(family)
    inputs = batch_inputs(family, proc)
    method = vlmprune.SPPruner(budget=24, llm_layer=2, llm_keep=0.5, positions=policy)
    with method(model), torch.no_grad():
        out = model(**inputs)
        gen = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
    assert gen.shape[1] == inputs["input_ids"].shape[1] + NEW
    pruned_any = any(sel.num_tokens > 24 for sel in method.last_selection)
    assert (out.logits.shape[1] < inputs["input_ids"].shape[1]) == pruned_any
    for sel in method.last_selection:
        assert sel.stage == "in_llm"
        if sel.num_tokens > 24:  # focus tokens stay, half of the context tokens go
            focus = round(0.75 * 24)
            assert focus <= sel.kept.numel() < 24
        else:  # budget >= N: every token is focus, nothing to drop
            assert sel.kept.numel() == sel.num_tokens
