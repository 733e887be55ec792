"""The session under the mistakes users make: each case gives the stock-equivalent result or one
line naming the problem before anything runs; invariants over the method x family registries."""

from __future__ import annotations

import pytest
import torch
from conftest import batch_inputs, cached_model

import vlmprune
from vlmprune.core.errors import UnsupportedFeatureError
from vlmprune.session import capture_vision
from vlmprune.testing import make_inputs, random_image

METHODS = vlmprune.list_methods()
NEW = 3


def gen(model, inputs, **kw):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=kw.pop("new", NEW), do_sample=False, **kw)


def single(family):
    model, proc = cached_model(family)
    return model, proc, batch_inputs(family, proc, "single")


@pytest.mark.parametrize("name", METHODS)
def test_uncached_generation_equals_cached(family, name):
    """``use_cache=False`` runs the whole sequence at each step: the selection is made once for
    the prompt and reused, so the tokens are the cached run's."""
    model, _, inputs = single(family)
    method = vlmprune.get_method(name, budget=5)
    with method(model):
        cached = gen(model, inputs)
        kept = [s.kept for s in method.last_selection]
        uncached = gen(model, inputs, use_cache=False)
        again = [s.kept for s in method.last_selection]
    assert torch.equal(cached, uncached)
    assert len(kept) == len(again) and all(torch.equal(a, b) for a, b in zip(kept, again))


@pytest.mark.parametrize("name", METHODS)
def test_continuing_from_own_cache_is_exact_or_refused(family, name):
    """One long ``generate`` against a ``generate`` continued from its own cache: a cache whose
    prompt the pre-LLM stage shortened is refused in one line before the LLM runs; a cache that
    kept every prompt token at its first layers (keep-all, in-LLM pruning) continues exactly."""
    model, _, inputs = single(family)
    for budget, pruned in ((5, True), (10_000, False)):
        method = vlmprune.get_method(name, budget=budget)
        with method(model), torch.no_grad():
            long = gen(model, inputs, new=4)
            first = model.generate(**inputs, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)

            def go(first=first):
                return model.generate(
                    input_ids=first.sequences, past_key_values=first.past_key_values,
                    max_new_tokens=2, do_sample=False,
                )  # fmt: skip

            if pruned and method.pre_llm:
                with pytest.raises(UnsupportedFeatureError, match="own `past_key_values`") as err:
                    go()
                assert "\n" not in str(err.value)
            else:
                assert torch.equal(go(), long)


def test_cache_made_outside_the_block_is_refused(family):
    model, _, inputs = single(family)
    with torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
    with vlmprune.Pool(budget=4)(model), pytest.raises(UnsupportedFeatureError, match="made outside"):
        model.generate(input_ids=first.sequences, past_key_values=first.past_key_values, max_new_tokens=2)


def padded(family, proc, questions, images, side):
    tok = proc.tokenizer
    old, tok.padding_side = tok.padding_side, side
    try:
        return make_inputs(family, proc, questions, images)
    finally:
        tok.padding_side = old


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_row_equals_prompt_alone(family, name, side):
    """Text-conditioned and last-token signals read each row's own tokens under either padding."""
    if name == "random":
        pytest.skip("random draws image i of a call with seed + i: a batch row differs from its prompt alone")
    model, proc = cached_model(family)
    questions = [
        "What is in the image?",
        "Describe the picture in detail please, how many objects are there?",
    ]
    images = [[random_image(1)], [random_image(2)]]
    inputs = padded(family, proc, questions, images, side)
    mask = inputs["attention_mask"]
    assert not mask.all() and bool(mask[0, -1] == 0) == (side == "right")  # the short row is padded
    method = vlmprune.get_method(name, budget=5)
    with method(model), torch.no_grad():
        model(**inputs)
        batch = [s.kept for s in method.last_selection]
        alone = []
        for q, ims in zip(questions, images):
            model(**padded(family, proc, [q], [ims], side))
            alone += [s.kept for s in method.last_selection]
    assert len(batch) == len(alone) == 2
    for a, b in zip(batch, alone):
        assert torch.equal(a, b)


def test_inputs_embeds_with_images_is_refused(family):
    model, _, inputs = single(family)
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    rest = {k: v for k, v in inputs.items() if k != "input_ids"}
    with vlmprune.Pool(budget=4)(model), torch.no_grad():
        with pytest.raises(UnsupportedFeatureError, match="`inputs_embeds` with `pixel_values"):
            model(inputs_embeds=embeds, **rest)


def test_captures_are_bound_to_their_model_and_read_only():
    model, proc, inputs = single("llava")
    other, _ = cached_model("llava", "eager")  # same family, another model
    qwen, _ = cached_model("qwen2_vl")
    capture = capture_vision(model, inputs)
    runs = [dict(r) for r in capture.record.runs]
    for target in (other, qwen):
        with pytest.raises(ValueError, match="this capture belongs to another model"):
            vlmprune.Pool(budget=4)(target, vision=capture)
    method = vlmprune.Pool(budget=4)
    with method(model, vision=capture), torch.no_grad():
        ref = model(**capture.inputs).logits
        with pytest.raises(ValueError, match="capture.inputs"):
            model(**inputs)  # raw pixels: the tower would run again and alter the capture
        assert torch.equal(model(**capture.inputs).logits, ref)  # the capture replays unchanged
    with pytest.raises(TypeError):
        capture.inputs["input_ids"] = None  # read-only
    assert [dict(r) for r in capture.record.runs] == runs  # the record was not touched


def test_pruned_logits_and_kept_positions(family):
    """``model(**inputs)`` inside the block returns the pruned sequence's logits; the session's
    ``kept_positions`` maps each of their rows back to its input position."""
    model, proc = cached_model(family)
    inputs = batch_inputs(family, proc)
    with torch.no_grad():
        stock = model(**inputs).logits
        with vlmprune.Pool(budget=10_000)(model) as session:  # keep-all: same rows, same logits
            full = model(**inputs).logits
            assert torch.equal(session.kept_positions[0], torch.arange(stock.shape[1]))
        with vlmprune.Pool(budget=3)(model) as session:
            logits = model(**inputs).logits
            pos = session.kept_positions
    torch.testing.assert_close(full, stock)
    assert logits.shape[:2] == pos.shape and logits.shape[1] < inputs["input_ids"].shape[1]
    ids = inputs["input_ids"]
    for b in range(ids.shape[0]):
        real = pos[b][pos[b] >= 0]
        assert torch.equal(real, real.sort().values)  # kept in order
        # every text token survives, at the same rank: the last rows are the prompt's last tokens
        assert int(real[-1]) == ids.shape[1] - 1
