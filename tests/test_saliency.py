"""The recomputed attention signals equal eager attention (foundation, methods.md "Saliency")."""

import pytest
import torch
from conftest import batch_inputs, cached_model

from vlmprune.adapters import get_adapter
from vlmprune.adapters.base import decoder_last_token_attention as last_token_attention


def signal_families(signal: str) -> list[str]:
    """Registered families whose default saliency is ``signal``."""
    from vlmprune.adapters import families

    return [c.family for c in families() if c.default_saliency == signal]


@pytest.mark.parametrize("family", signal_families("cls_attention"))
def test_cls_attention_equals_eager(family):
    model, proc = cached_model(family, "eager")
    adapter = get_adapter(model)
    inputs = batch_inputs(family, proc)
    record = {}
    hooks = adapter.vision_hooks(lambda: type("R", (), {"raw": record})(), {"saliency"})
    tower = model.model.vision_tower
    pixels = inputs["pixel_values"]
    if pixels.dim() == 5:  # LLaVA-NeXT: (images, crops, C, H, W) -> crops
        pixels = pixels.flatten(0, 1)
    try:
        with torch.no_grad():
            out = tower(pixels, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    eager = out.attentions[adapter.saliency_layer][:, :, 0].mean(1)  # (V, H, T, T) -> (V, T)
    ratio = getattr(model.config, "downsample_ratio", None)
    if ratio is not None:  # InternVL: CLS dropped, summed over each 2x2 group of the pixel shuffle
        v, side = eager.shape[0], int((eager.shape[1] - 1) ** 0.5)
        grid = eager[:, 1:].reshape(v, side, side, 1)
        eager = model.model.pixel_shuffle(grid, scale_factor=ratio).sum(-1).reshape(v, -1)
    torch.testing.assert_close(record["saliency"][0], eager, atol=1e-5, rtol=1e-5)
    layers = model.config.vision_config.num_hidden_layers
    feature = model.config.vision_feature_layer  # hidden_states index: the layer before it produced it
    assert adapter.saliency_layer == (feature if feature >= 0 else feature + layers + 1) - 1


@pytest.mark.parametrize("family", signal_families("attention_received"))
def test_attention_received_equals_eager(family):
    model, proc = cached_model(family, "eager")
    adapter = get_adapter(model)
    inputs = batch_inputs(family, proc)
    if not hasattr(model.model, "visual"):  # a tower run per crop (SigLIP): its eager attentions
        record = {}
        hooks = adapter.vision_hooks(lambda: type("R", (), {"raw": record})(), {"saliency"})
        pixels = inputs["pixel_values"].flatten(0, 1)  # (images, crops, C, H, W) -> crops
        try:
            with torch.no_grad():
                out = model.model.vision_tower(pixels, output_attentions=True)
        finally:
            for h in hooks:
                h.remove()
        eager = out.attentions[adapter.saliency_layer].mean(dim=(1, 2))  # (V, H, N, N) -> (V, N)
        torch.testing.assert_close(record["saliency"][0], eager, atol=1e-5, rtol=1e-5)
        return
    block = adapter._full_attention_block()
    attn = model.model.visual.blocks[block].attn
    captured = {}

    def grab(module, args, kwargs, output):
        captured["w"] = output[1] if isinstance(output, tuple) else None

    # eager reference: the probabilities the stock eager kernel computes, per image segment
    import transformers.integrations.sdpa_attention  # noqa: F401
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    probs = []
    mod = __import__(type(attn).__module__, fromlist=["eager_attention_forward"])
    original = mod.eager_attention_forward

    def spy(module, q, k, v, attention_mask, **kw):
        out, w = original(module, q, k, v, attention_mask, **kw)
        if module is attn:
            probs.append(w)
        return out, w

    mod.eager_attention_forward = spy
    record = {}
    hooks = adapter.vision_hooks(lambda: type("R", (), {"raw": record})(), {"saliency"})
    try:
        with torch.no_grad():
            model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    finally:
        mod.eager_attention_forward = original
        for h in hooks:
            h.remove()
    assert ALL_ATTENTION_FUNCTIONS is not None
    expected = torch.cat([w[0].mean(0).mean(0) for w in probs])  # (1, H, S_i, S_i) -> (S_i,) per image
    torch.testing.assert_close(record["received"], expected, atol=1e-5, rtol=1e-5)


def test_last_token_attention_equals_eager(family):
    model, proc = cached_model(family, "eager")
    inputs = batch_inputs(family, proc)
    lm = model.model.language_model
    grabbed = {}

    def grab(module, args, kwargs):
        grabbed["h"] = args[0] if args else kwargs["hidden_states"]
        grabbed["pe"] = kwargs["position_embeddings"]

    grabbed_mask = {}

    def grab_lm(module, args, kwargs):
        grabbed_mask["m"] = kwargs.get("attention_mask")

    weights = {}

    def grab_weights(module, args, kwargs, output):
        weights["w"] = output[1]  # eager attention's probabilities (B, H, L, L)

    h1 = lm.layers[1].register_forward_pre_hook(grab, with_kwargs=True)
    h2 = lm.register_forward_pre_hook(grab_lm, with_kwargs=True)
    h3 = lm.layers[1].self_attn.register_forward_hook(grab_weights, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs, output_attentions=True)
    finally:
        h1.remove()
        h2.remove()
        h3.remove()
    eager = weights["w"][:, :, -1].mean(1)  # (B, H, L, L) -> (B, L)
    got, _ = last_token_attention(lm.layers[1], grabbed["h"], grabbed["pe"], grabbed_mask["m"])
    torch.testing.assert_close(got, eager, atol=1e-5, rtol=1e-5)
