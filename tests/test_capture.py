"""One vision-tower run for several methods (vlmprune.session.capture_vision) gives exactly what a
full run of each method gives: the same selections, logits and greedy tokens, every family."""

import pytest
import torch
from conftest import batch_inputs, cached_model

import vlmprune
from vlmprune.session import capture_vision

METHODS = vlmprune.list_methods()


@pytest.mark.parametrize("name", METHODS)
def test_capture_equals_a_full_run(name, family):
    model, proc = cached_model(family)
    inputs = batch_inputs(family, proc)
    capture = capture_vision(model, inputs)
    assert not any(k.startswith("pixel_values") for k in capture.inputs)
    method = vlmprune.get_method(name, budget=5)
    with torch.no_grad():
        with method(model) as full:
            ref_gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
            ref_logits = model(**inputs).logits
        with method(model, vision=capture) as reused:
            got_gen = model.generate(**capture.inputs, max_new_tokens=3, do_sample=False)
            got_logits = model(**capture.inputs).logits
    assert torch.equal(got_gen, ref_gen)
    torch.testing.assert_close(got_logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert len(reused.selections) == len(full.selections) == 3
    for a, b in zip(reused.selections, full.selections):
        assert torch.equal(a.kept, b.kept) and a.grid == b.grid


def test_capture_serves_the_unpruned_model_and_mismatched_saliency_is_refused(family):
    model, proc = cached_model(family)
    inputs = batch_inputs(family, proc)
    capture = capture_vision(model, inputs)
    with torch.no_grad():
        ref = model.generate(
            **inputs, max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
        got = model.generate(
            **capture.inputs,
            max_new_tokens=3,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
        ref_logits, got_logits = model(**inputs).logits, model(**capture.inputs).logits
    assert torch.equal(got.sequences, ref.sequences)
    for a, b in zip(got.scores, ref.scores):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_logits, ref_logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="saliency"):
        vlmprune.PromPrune(budget=4)(model, saliency="feature_norm", vision=capture)
