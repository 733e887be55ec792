"""Session behaviour: batches, sampling, hooks, attention implementations, errors (foundation)."""

import pytest
import torch
from conftest import batch_inputs, cached_model
from transformers import LlamaConfig, LlamaForCausalLM

import vlmprune
from vlmprune.adapters import get_adapter
from vlmprune.testing import make_inputs, random_image

NEW = 4


def n_hooks(model) -> int:
    return sum(
        len(m._forward_pre_hooks) + len(m._forward_hooks) + len(m._forward_pre_hooks_with_kwargs)
        for m in model.modules()
    )


def gen(model, inputs, **kw):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=NEW, **kw)


@pytest.mark.parametrize("name", ["pool", "fastv"])
def test_batch_rows_equal_single_prompts(family, name):
    """Different lengths, different images, left padding: row b of the batch == prompt b alone."""
    model, proc = cached_model(family)
    questions = [
        "What is in the image?",
        "Describe the picture in detail please, how many objects?",
        "Is there a cat?",
    ]
    images = [[random_image(1)], [random_image(2, (100, 70)), random_image(3)], [random_image(4, (70, 90))]]
    method = vlmprune.get_method(name, budget=5)
    with method(model):
        batch = gen(model, make_inputs(family, proc, questions, images))
        batch_sel = [s.kept for s in method.last_selection]
        singles, single_sel = [], []
        for q, ims in zip(questions, images):
            inp = make_inputs(family, proc, [q], [ims])
            singles.append(gen(model, inp)[0, -NEW:])
            single_sel += [s.kept for s in method.last_selection]
    assert len(batch_sel) == 4  # the two-image prompt prunes each image to its own budget
    assert all(k.numel() == 5 for k in batch_sel)
    for a, b in zip(batch_sel, single_sel):
        assert torch.equal(a, b)
    for b, single in enumerate(singles):
        assert torch.equal(batch[b, -NEW:], single)


def test_generate_shapes_and_sampling(family):
    model, proc = cached_model(family)
    inputs = batch_inputs(family, proc)
    length = inputs["input_ids"].shape[1]
    with vlmprune.RandomPrune(budget=3)(model):
        out = gen(model, inputs)
        torch.manual_seed(0)
        sampled = gen(model, inputs, do_sample=True, top_k=5)
        no_cache = gen(model, inputs, use_cache=False)
        fwd = model(**inputs)
    assert out.shape == (2, length + NEW) and sampled.shape == (2, length + NEW)
    assert torch.equal(out[:, :length], inputs["input_ids"]) and torch.equal(
        sampled[:, :length], inputs["input_ids"]
    )
    assert torch.equal(no_cache, out)  # recomputing the pruned prompt each step == decoding with the cache
    assert fwd.logits.shape[1] < length  # forward returns fewer positions
    # sampling with keep-all equals the stock model under the same seed
    torch.manual_seed(0)
    ref = gen(model, inputs, do_sample=True, top_k=5)
    with vlmprune.RandomPrune(budget=10_000)(model):
        torch.manual_seed(0)
        got = gen(model, inputs, do_sample=True, top_k=5)
    assert torch.equal(got, ref)


def test_hooks_removed_after_exit_and_after_errors(family):
    model, proc = cached_model(family)
    inputs = batch_inputs(family, proc)
    with torch.no_grad():
        ref = model(**inputs).logits  # transformers installs its own output-capture hooks on first use
    before = n_hooks(model)
    method = vlmprune.Pool(budget=4)
    with method(model):
        assert n_hooks(model) > before
    assert n_hooks(model) == before

    class Exploding(vlmprune.Pool):  # raises inside the hooked forward, mid-call
        def select_images(self, images):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with Exploding(budget=4)(model):
            model(**inputs)
    assert n_hooks(model) == before
    with pytest.raises(ValueError, match="not close"):  # an error raised by user code in the block
        with method(model):
            raise ValueError("not close")
    assert n_hooks(model) == before
    assert not hasattr(model, "_vlmprune_session")
    assert "get_image_features" not in vars(model.model)
    with torch.no_grad():
        after = model(**inputs).logits
    torch.testing.assert_close(after, ref, atol=0, rtol=0)


def test_nested_use_is_refused(family):
    model, _ = cached_model(family)
    with vlmprune.Pool(budget=4)(model):
        with pytest.raises(RuntimeError, match="already applied"):
            with vlmprune.Pool(budget=4)(model):
                pass
    assert not hasattr(model, "_vlmprune_session")


@pytest.mark.parametrize("name", ["random", "fastv"])
def test_sdpa_and_eager_agree(family, name):
    sdpa, proc = cached_model(family, "sdpa")
    eager, _ = cached_model(family, "eager")
    eager.load_state_dict(sdpa.state_dict())
    inputs = batch_inputs(family, proc)
    outs, sels = [], []
    for model in (sdpa, eager):
        method = vlmprune.get_method(name, budget=5)
        with method(model), torch.no_grad():
            outs.append((model(**inputs).logits, gen(model, inputs)))
        sels.append([s.kept for s in method.last_selection])
        assert model.config._attn_implementation == ("sdpa" if model is sdpa else "eager")  # untouched
    assert all(torch.equal(a, b) for a, b in zip(*sels))
    # the last tokens are real text in every row (left padding): padding rows carry no output
    torch.testing.assert_close(outs[0][0][:, -6:], outs[1][0][:, -6:], atol=1e-4, rtol=1e-4)
    assert torch.equal(outs[0][1], outs[1][1])


def test_text_only_prompt_is_a_noop(family):
    model, proc = cached_model(family)
    inputs = make_inputs(family, proc, ["Is there a cat?"], [[]])
    ref = gen(model, inputs)
    method = vlmprune.Pool(budget=2)
    with method(model):
        got = gen(model, inputs)
    assert torch.equal(got, ref)
    assert method.last_selection == []


def test_selection_record(family):
    model, proc = cached_model(family)
    method = vlmprune.Pool(budget=6)
    with method(model), torch.no_grad():
        model(**batch_inputs(family, proc))
    assert len(method.last_selection) == 3
    for sel in method.last_selection:
        assert sel.kept.dtype == torch.long and sel.kept.dim() == 1 and sel.kept.numel() == 6
        assert torch.all(sel.kept[1:] > sel.kept[:-1]) and int(sel.kept.max()) < sel.num_tokens
        assert sel.assignment is not None and sel.assignment.shape == (sel.num_tokens,)
        n_grid = 1
        for g in sel.grid:
            n_grid *= g
        if len(sel.regions) <= 1:  # multi-crop images: the grid is the base view's
            assert n_grid == sel.num_tokens
        assert sum(r.indices.numel() for r in sel.regions) == sel.num_tokens


def test_bad_arguments():
    with pytest.raises(ValueError, match="budget"):
        vlmprune.Pool()
    with pytest.raises(ValueError, match="budget"):
        vlmprune.Pool(budget=4, ratio=0.5)
    with pytest.raises(ValueError, match="budget"):
        vlmprune.Pool(budget=0)
    with pytest.raises(ValueError, match="ratio"):
        vlmprune.Pool(ratio=1.5)
    with pytest.raises(ValueError, match="ratio"):
        vlmprune.Pool(ratio=0.0)
    with pytest.raises(ValueError, match="positions"):
        vlmprune.Pool(budget=4, positions="sideways")
    with pytest.raises(ValueError, match="layer"):
        vlmprune.FastV(budget=4, layer=0)
    with pytest.raises(KeyError, match="promprune"):
        vlmprune.get_method("nope", budget=4)


def test_layer_beyond_model_depth_is_refused():
    model, _ = cached_model("llava")
    with pytest.raises(ValueError, match="layer"):
        vlmprune.FastV(budget=4, layer=99)(model)


def test_ratio_budget(family):
    model, proc = cached_model(family)
    method = vlmprune.Pool(ratio=0.25)
    with method(model), torch.no_grad():
        model(**batch_inputs(family, proc))
    for sel in method.last_selection:
        assert sel.kept.numel() == max(1, round(0.25 * sel.num_tokens))


def test_unsupported_model():
    cfg = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=50
    )
    with pytest.raises(vlmprune.UnsupportedModelError, match="llava"):
        vlmprune.Pool(budget=4)(LlamaForCausalLM(cfg))


@pytest.mark.parametrize("name", ["promprune", "fastv", "random"])
def test_beam_search_and_multiple_returns(family, name):
    """generate expands rows after the vision tower ran once per image: both must line up."""
    model, proc = cached_model(family)
    inputs = batch_inputs(family, proc)
    with torch.no_grad():
        ref = model.generate(**inputs, max_new_tokens=NEW, num_beams=2, num_return_sequences=2)
    keep_all = vlmprune.get_method(name, budget=100_000)
    with keep_all(model), torch.no_grad():
        got = model.generate(**inputs, max_new_tokens=NEW, num_beams=2, num_return_sequences=2)
    assert torch.equal(got, ref)
    method = vlmprune.get_method(name, budget=4)
    with method(model), torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW, num_beams=2)
        single = method.last_selection
    assert out.shape == (2, inputs["input_ids"].shape[1] + NEW)
    assert len(single) == 6  # 3 images, each row repeated for 2 beams
    for a, b in zip(single[0::2][:1], single[1::2][:1]):
        assert torch.equal(a.kept, b.kept)


def test_saliency_signal_is_pluggable(family):
    model, proc = cached_model(family)
    inputs = batch_inputs(family, proc, "single")
    picks = {}
    for signal in ("auto", "feature_norm"):
        method = vlmprune.get_method("promprune", budget=4)
        with method(model, saliency=signal), torch.no_grad():
            model(**inputs)
        picks[signal] = method.last_selection[0].kept
    assert all(k.numel() == 4 for k in picks.values())
    signals = get_adapter(model).saliency_signals
    wrong = next(s for s in ("cls_attention", "attention_received") if s not in signals)
    with pytest.raises(ValueError, match="saliency"):
        vlmprune.get_method("promprune", budget=4)(model, saliency=wrong)


def test_pruned_llava_prefill_adds_only_the_reads_that_locate_the_images():
    """The session's prefill hook reads `input_ids` on the host to find the images (5 reads on
    LLaVA: media present, kinds, image count, placeholder positions, span order); the compaction
    after the selection reads nothing (its length is counted on the host)."""
    from test_dispatch import Counter

    model, processor = cached_model("llava")[:2]
    inputs = batch_inputs("llava", processor, "single")
    with torch.no_grad(), Counter() as stock:
        model(**inputs)
    with torch.no_grad(), vlmprune.get_method("random", budget=4)(model), Counter() as pruned:
        model(**inputs)
    assert pruned.syncs - stock.syncs <= 5, (stock.syncs, pruned.syncs)


@pytest.mark.parametrize(
    "name", [n for n in vlmprune.list_methods() if vlmprune.get_method(n, budget=4).pre_llm]
)
def test_each_selection_adds_at_most_two_host_syncs_with_its_inputs(name):
    """A method's selection, with the session's gathering of its inputs (the prompt's text for
    the text-conditioned ones, the captured signals), adds at most two host syncs to a pruned
    prefill (``random``'s: the reads that locate the images)."""
    from test_dispatch import SYNCS, Counter

    model, processor = cached_model("llava")[:2]
    inputs = batch_inputs("llava", processor, "single")
    counts = {}
    for method in ("random", name):
        with torch.no_grad(), vlmprune.get_method(method, budget=4)(model):
            model(**inputs)  # warm-up: lazy initialisation is not the steady state
            with Counter() as c:
                model(**inputs)
        counts[method] = c.syncs
    assert counts[name] - counts["random"] <= SYNCS, counts
