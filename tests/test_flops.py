"""FLOPs accounting (vlmprune.core.flops) and the bundled real-size architecture configs (vlmprune.apps.archs).

The analytic "exact" count is checked against torch.utils.flop_counter.FlopCounterMode on tiny
stock transformers models built from the bundled configs. FlopCounterMode counts matmuls
(mm/addmm/bmm), convolutions and the SDPA kernels it has formulas for, as 2 FLOPs per
multiply-accumulate, so the comparisons use ``macs=False``. Eager attention is used for the
equality checks: on CPU, SDPA dispatches to ``aten._scaled_dot_product_flash_attention_for_cpu``,
which torch 2.13's FlopCounterMode has no formula for, so under SDPA it silently misses exactly
the attention term ``2·n²·(h·hd)`` MACs (checked in ``test_flop_counter_misses_cpu_sdpa``).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from vlmprune.adapters import adapter_class
from vlmprune.apps.archs import arch_info, build_model, list_archs, load_config, tiny_variant
from vlmprune.apps.flops_table import format_reduction_table
from vlmprune.core.flops import (
    FlopsReport,
    LLMShape,
    VisionShape,
    _window_lengths,
    equivalent_tokens,
    layer_flops,
    prefill_flops,
    reduction,
    text_tokens_for_reduction,
    token_schedule,
    vision_flops,
)


def vision_shape(config):
    """The family adapter's vision-tower FLOPs shape for ``config``."""
    return adapter_class(config).vision_shape(config)


ARCHS = [
    "internvl3-8b",
    "llava-1.5-7b",
    "llava-next-7b",
    "llava-onevision-7b",
    "qwen2-vl-7b",
    "qwen2.5-vl-7b",
    "qwen3-vl-8b",
    "qwen3.5-9b",
]


def _per_module(fc: FlopCounterMode) -> dict[str, int]:
    return {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}


def _layer_counts(fc: FlopCounterMode, prefix: str, num_layers: int) -> list[int]:
    counts = _per_module(fc)
    return [counts[f"{prefix}.layers.{i}"] for i in range(num_layers)]


# ---------------------------------------------------------------------------------------------
# Formulas
# ---------------------------------------------------------------------------------------------


def test_layer_flops_formulas_and_units():
    n, d, m = 7, 12, 30
    assert layer_flops(n, d, m, "fastv") == 4 * n * d * d + 2 * n * n * d + 2 * n * d * m
    assert layer_flops(n, d, m, "swiglu") == 4 * n * d * d + 2 * n * n * d + 3 * n * d * m
    # exact == swiglu for multi-head attention with heads * head_dim == d
    assert layer_flops(n, d, m, "exact") == layer_flops(n, d, m, "swiglu")
    # GQA: k, v projections are narrower
    gqa = layer_flops(n, d, m, "exact", attn_dim=d, kv_dim=4)
    assert gqa == 2 * n * d * d + 2 * n * d * 4 + 2 * n * n * d + 3 * n * d * m
    for conv in ("fastv", "swiglu", "exact"):
        assert layer_flops(n, d, m, conv, macs=False) == 2 * layer_flops(n, d, m, conv)
    try:
        layer_flops(n, d, m, "bogus")
    except ValueError as e:
        assert "convention" in str(e)
    else:
        raise AssertionError("unknown convention accepted")


def test_llm_shapes_from_real_configs():
    llava = LLMShape.from_config(load_config("llava-1.5-7b"))
    assert llava == LLMShape(
        d=4096, m=11008, num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128, vocab=32064
    )
    assert LLMShape.from_config(load_config("llava-next-7b")) == llava
    qwen = LLMShape.from_config(load_config("qwen2.5-vl-7b"))
    assert qwen == LLMShape(
        d=3584, m=18944, num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128, vocab=152064
    )
    assert LLMShape.from_config(load_config("qwen2-vl-7b")) == qwen
    assert qwen.kv_dim == 512 and qwen.attn_dim == 3584


# ---------------------------------------------------------------------------------------------
# Headline numbers
# ---------------------------------------------------------------------------------------------


def test_llava15_headline_reductions_fastv():
    """60.8 / 70.7 / 80.5% at 192 / 128 / 64 of 576 visual tokens, 64 text tokens, FastV convention
    (pre-LLM pruning: every layer shortened). 64 is the only text length that reproduces all three."""
    shape = LLMShape.from_config(load_config("llava-1.5-7b"))
    full = prefill_flops(shape, token_schedule(32, 64, 576), "fastv")
    for kept, published in ((192, 60.8), (128, 70.7), (64, 80.5)):
        pruned = prefill_flops(shape, token_schedule(32, 64, 576, kept), "fastv")
        assert round(100 * reduction(full, pruned), 1) == published
        assert text_tokens_for_reduction(shape, 576, kept, published, "fastv", max_text=300) == [64]


def test_llava_next_headline_reduction_fastv():
    """2880 -> 320 visual tokens gives 88.5% under the FastV convention with 64 text tokens (the
    same prompt length as the LLaVA-1.5 numbers); any of 61..64 text tokens rounds to 88.5%."""
    shape = LLMShape.from_config(load_config("llava-next-7b"))
    full = prefill_flops(shape, token_schedule(32, 64, 2880), "fastv")
    pruned = prefill_flops(shape, token_schedule(32, 64, 2880, 320), "fastv")
    assert round(100 * reduction(full, pruned), 1) == 88.5
    assert text_tokens_for_reduction(shape, 2880, 320, 88.5, "fastv", max_text=300) == [61, 62, 63, 64]
    # The SwiGLU convention gives a slightly smaller saving (the MLP term, linear in n, weighs more).
    full_s = prefill_flops(shape, token_schedule(32, 64, 2880), "swiglu")
    pruned_s = prefill_flops(shape, token_schedule(32, 64, 2880, 320), "swiglu")
    assert round(100 * reduction(full_s, pruned_s), 1) == 88.2


def test_pre_llm_vs_in_llm_schedules():
    pre = token_schedule(32, 64, 576, 64)
    assert pre == [128] * 32
    fastv = token_schedule(32, 64, 576, 64, layer=2)
    assert fastv == [640, 640] + [128] * 30
    assert equivalent_tokens(pre, 64) == 64
    # FastV K=2 keeping 64 of 576 averages (2*576 + 30*64) / 32 = 96 visual tokens per layer
    assert equivalent_tokens(fastv, 64) == 96
    assert equivalent_tokens(token_schedule(32, 64, 576, 192, layer=2), 64) == 216
    assert token_schedule(4, 10, 100) == [110] * 4
    assert token_schedule(5, 1, 100, stages={1: 50, 3: 20}) == [101, 51, 51, 21, 21]
    shape = LLMShape.from_config(load_config("llava-1.5-7b"))
    full = prefill_flops(shape, token_schedule(32, 64, 576))
    in_llm = prefill_flops(shape, fastv)
    pre_llm = prefill_flops(shape, pre)
    assert pre_llm < in_llm < full
    assert round(100 * reduction(full, in_llm), 1) == 75.5
    # the layer sum is literally the sum of per-layer costs
    assert in_llm == 2 * layer_flops(640, 4096, 11008) + 30 * layer_flops(128, 4096, 11008)


def test_flops_report_to_dict():
    shape = LLMShape.from_config(load_config("llava-1.5-7b"))
    vshape = vision_shape(load_config("llava-1.5-7b"))
    rep = FlopsReport.compute(
        shape,
        token_schedule(32, 64, 576, 64, layer=2),
        token_schedule(32, 64, 576),
        "swiglu",
        vision_flops=vision_flops(vshape),
    )
    d = rep.to_dict()
    assert set(d) >= {"flops", "full_flops", "convention", "tokens_per_layer", "vision_flops", "reduction"}
    assert d["convention"] == "swiglu" and d["macs"] is True
    assert d["equivalent_tokens"] == 64 + 96
    assert 0 < d["reduction"] < 1 and d["flops"] < d["full_flops"]
    assert FlopsReport.compute(shape, [128] * 32, [640] * 32, macs=False).flops == 2 * prefill_flops(
        shape, [128] * 32
    )


def test_reduction_table_prints(capsys):
    text = format_reduction_table()
    for needle in ("60.8%", "70.7%", "80.5%", "88.5%", "LLaVA-NeXT-7B", "SwiGLU"):
        assert needle in text
    from vlmprune.apps.flops_table import print_reduction_table

    print_reduction_table()
    assert "88.5%" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# FlopCounterMode cross-checks on tiny stock models
# ---------------------------------------------------------------------------------------------


def test_exact_matches_flop_counter_llama_text():
    """Tiny LlamaForCausalLM with the LLaVA text-config structure (MHA, SwiGLU), eager attention:
    every decoder layer equals the analytic exact count; the whole forward = layers + LM head
    (n·d·vocab) exactly (embedding lookup, norms and RoPE contribute no matmul FLOPs)."""
    from transformers import LlamaForCausalLM

    cfg = tiny_variant("llava-1.5-7b").text_config
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="eager").eval()
    shape = LLMShape.from_config(cfg)
    n = 23
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(input_ids=torch.randint(0, 1000, (1, n)))
    per_layer = layer_flops(
        n, shape.d, shape.m, "exact", macs=False, attn_dim=shape.attn_dim, kv_dim=shape.kv_dim
    )
    assert _layer_counts(fc, "LlamaForCausalLM.model", shape.num_layers) == [per_layer] * shape.num_layers
    expected = prefill_flops(shape, [n] * shape.num_layers, "exact", macs=False, lm_head_tokens=n)
    assert fc.get_total_flops() == expected


def test_exact_matches_flop_counter_qwen25_text_gqa():
    """Tiny Qwen2.5-VL text model (GQA 4 query / 2 KV heads, biased q/k/v, M-RoPE), eager: exact."""
    from transformers import Qwen2_5_VLTextModel

    cfg = tiny_variant("qwen2.5-vl-7b").text_config
    model = Qwen2_5_VLTextModel._from_config(cfg, attn_implementation="eager").eval()
    shape = LLMShape.from_config(cfg)
    assert shape.num_kv_heads < shape.num_heads
    n = 19
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(input_ids=torch.randint(0, 1000, (1, n)))
    per_layer = layer_flops(
        n, shape.d, shape.m, "exact", macs=False, attn_dim=shape.attn_dim, kv_dim=shape.kv_dim
    )
    assert _layer_counts(fc, "Qwen2_5_VLTextModel", shape.num_layers) == [per_layer] * shape.num_layers
    assert fc.get_total_flops() == prefill_flops(shape, [n] * shape.num_layers, "exact", macs=False)


def test_flop_counter_misses_cpu_sdpa():
    """Under SDPA on CPU, FlopCounterMode sees the projections and MLP but not the attention matmuls
    (no formula for the CPU flash kernel): the count is the exact count minus 2·2n²·attn_dim."""
    from transformers import LlamaForCausalLM

    cfg = tiny_variant("llava-1.5-7b").text_config
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa").eval()
    shape = LLMShape.from_config(cfg)
    n = 23
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(input_ids=torch.randint(0, 1000, (1, n)))
    exact = layer_flops(
        n, shape.d, shape.m, "exact", macs=False, attn_dim=shape.attn_dim, kv_dim=shape.kv_dim
    )
    attention = 2 * (2 * n * n * shape.attn_dim)
    assert (
        _layer_counts(fc, "LlamaForCausalLM.model", shape.num_layers)
        == [exact - attention] * shape.num_layers
    )


def test_exact_matches_flop_counter_in_llm_schedule():
    """FastV-style in-LLM pruning at K=2, run through the stock decoder layers: layers < K on the full
    sequence, layers >= K on the kept rows. FlopCounterMode equals prefill_flops of the schedule."""
    from transformers import LlamaModel

    cfg = tiny_variant("llava-1.5-7b").text_config
    model = LlamaModel._from_config(cfg, attn_implementation="eager").eval()
    shape = LLMShape.from_config(cfg)
    prefix, visual, suffix, kept, K = 3, 16, 3, 5, 2
    n = prefix + visual + suffix
    keep = torch.cat(
        [torch.arange(prefix), prefix + torch.arange(0, visual, 3)[:kept], torch.arange(prefix + visual, n)]
    )
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        h = model.embed_tokens(torch.randint(0, 1000, (1, n)))
        pos = torch.arange(n)[None]
        cos, sin = model.rotary_emb(h, pos)
        for i, layer in enumerate(model.layers):
            if i == K:
                h, pos, cos, sin = h[:, keep], pos[:, keep], cos[:, keep], sin[:, keep]
            h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin))
    schedule = token_schedule(shape.num_layers, prefix + suffix, visual, kept, layer=K)
    assert schedule == [22, 22, 11, 11]
    assert fc.get_total_flops() == prefill_flops(shape, schedule, "exact", macs=False)


def test_vision_flops_clip_matches_flop_counter():
    """Tiny LLaVA: CLIP tower (patch conv, all layers incl. the one after the feature layer, as stock
    runs them) + projector on the 16 patch tokens (CLS dropped) equals FlopCounterMode exactly."""
    model = build_model("llava-1.5-7b", tiny=True, attn_implementation="eager")
    vshape = vision_shape(model.config)
    assert vshape.tokens == 17 and vshape.patches_per_crop == 16
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.model.get_image_features(
            pixel_values=torch.randn(1, 3, 56, 56),
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
    assert fc.get_total_flops() == vision_flops(vshape, macs=False)
    assert vision_flops(vshape, truncate_at_feature_layer=True) < vision_flops(vshape)


def test_vision_flops_qwen_matches_flop_counter():
    """Tiny Qwen2.5-VL tower (window attention with partial edge windows on a 12x12-patch frame,
    full attention in blocks 1 and 3, SwiGLU, merger) and tiny Qwen2-VL tower (full attention,
    QuickGELU MLP): analytic == FlopCounterMode, for one frame and for two frames (t=2)."""
    for name, grid in (
        ("qwen2.5-vl-7b", (1, 12, 12)),
        ("qwen2.5-vl-7b", (2, 8, 12)),
        ("qwen2-vl-7b", (1, 12, 12)),
        ("qwen3-vl-8b", (1, 12, 12)),
        ("qwen3-vl-8b", (2, 8, 12)),
    ):
        model = build_model(name, tiny=True, attn_implementation="eager")
        vshape = vision_shape(model.config)
        t, h, w = grid
        pixels = torch.randn(t * h * w, 3 * vshape.temporal_patch_size * vshape.patch_size**2)
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model.model.visual(pixels, grid_thw=torch.tensor([list(grid)]))
        assert fc.get_total_flops() == vision_flops(vshape, grid_thw=grid, macs=False), (name, grid)
    # windowing matters: 12x12 patches -> merged 6x6 -> 4x4-unit windows of 64, 32, 32, 16 patches
    assert _window_lengths(12, 12, 2, 4) == [64, 32, 32, 16]


def test_vision_shapes_real_size():
    llava = vision_shape(load_config("llava-1.5-7b"))
    assert (llava.num_layers, llava.hidden, llava.intermediate, llava.tokens) == (24, 1024, 4096, 577)
    assert llava.connector_out == 4096 and llava.feature_layer == -2
    # LLaVA-NeXT at 672x672: 5 crops, 5x the tower cost of LLaVA-1.5
    next_v = vision_shape(load_config("llava-next-7b"))
    assert vision_flops(next_v, num_crops=5) == 5 * vision_flops(llava)
    q25 = vision_shape(load_config("qwen2.5-vl-7b"))
    assert q25.fullatt_block_indexes == (7, 15, 23, 31) and q25.gated_mlp and q25.connector_out == 3584
    assert q25.window_size // q25.spatial_merge_size // q25.patch_size == 4
    q2 = vision_shape(load_config("qwen2-vl-7b"))
    assert (q2.hidden, q2.intermediate, q2.gated_mlp, q2.connector_out) == (1280, 5120, False, 3584)
    # a 28x28-patch (392 px) image: windows cover every patch once; windowed blocks are cheaper
    assert sum(_window_lengths(28, 28, 2, 4)) == 28 * 28
    all_full = VisionShape(**{**q25.__dict__, "fullatt_block_indexes": tuple(range(32))})
    assert vision_flops(q25, grid_thw=(1, 28, 28)) < vision_flops(all_full, grid_thw=(1, 28, 28))


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def test_configs_load_offline_into_stock_classes(monkeypatch):
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert list_archs() == sorted(ARCHS)
    expected_cls = {
        "llava-1.5-7b": transformers.LlavaConfig,
        "internvl3-8b": transformers.InternVLConfig,
        "llava-next-7b": transformers.LlavaNextConfig,
        "llava-onevision-7b": transformers.LlavaOnevisionConfig,
        "qwen2-vl-7b": transformers.Qwen2VLConfig,
        "qwen2.5-vl-7b": transformers.Qwen2_5_VLConfig,
        "qwen3-vl-8b": transformers.Qwen3VLConfig,
        "qwen3.5-9b": transformers.Qwen3_5Config,
    }
    for name in ARCHS:
        cfg = load_config(name)
        assert type(cfg) is expected_cls[name], name
        assert arch_info(name)["_source"]
    llava = load_config("llava-1.5-7b")
    assert llava.image_token_id == 32000 and llava.vision_feature_layer == -2
    assert llava.vision_feature_select_strategy == "default" and llava.projector_hidden_act == "gelu"
    assert (llava.vision_config.image_size, llava.vision_config.patch_size) == (336, 14)
    assert llava.text_config.rope_parameters["rope_theta"] == 10000.0
    nxt = load_config("llava-next-7b")
    assert nxt.image_grid_pinpoints == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    for name in ("qwen2-vl-7b", "qwen2.5-vl-7b"):
        cfg = load_config(name)
        rope = cfg.text_config.rope_parameters
        assert rope["mrope_section"] == [16, 24, 24] and rope["rope_theta"] == 1e6
        assert cfg.image_token_id == 151655 and cfg.vision_start_token_id == 151652
        assert cfg.vision_config.spatial_merge_size == 2 and cfg.vision_config.temporal_patch_size == 2
    q25 = load_config("qwen2.5-vl-7b").vision_config
    assert (q25.depth, q25.hidden_size, q25.intermediate_size, q25.num_heads) == (32, 1280, 3420, 16)
    assert (q25.window_size, q25.out_hidden_size, q25.tokens_per_second) == (112, 3584, 2)
    assert list(q25.fullatt_block_indexes) == [7, 15, 23, 31]


def test_real_size_parameter_counts():
    """Instantiated on the meta device (test only; build_model never uses it), the real-size configs
    give the published parameter totals of the checkpoints' safetensors: llava-hf/llava-1.5-7b-hf
    7,063,427,072; Qwen/Qwen2.5-VL-7B-Instruct 8,292,166,656; Qwen/Qwen2-VL-7B-Instruct
    8,291,375,616; Qwen/Qwen3-VL-8B-Instruct 8,767,123,696 (8.77B as its model card states). LLaVA-NeXT-7B =
    LLaVA-1.5-7B + the 4096-wide image_newline vector."""
    from vlmprune.apps.archs import model_class

    published = {
        "llava-1.5-7b": 7_063_427_072,
        "llava-next-7b": 7_063_427_072 + 4096,
        "qwen2.5-vl-7b": 8_292_166_656,
        "qwen2-vl-7b": 8_291_375_616,
        "qwen3-vl-8b": 8_767_123_696,
    }
    with torch.device("meta"):  # llava-hf/llava-onevision-qwen2-7b-ov-hf: 8.03B on its model card
        ov = model_class("llava-onevision-7b")(load_config("llava-onevision-7b"))
    assert round(sum(p.numel() for p in ov.parameters()) / 1e7) == 803
    for name, count in published.items():
        with torch.device("meta"):
            model = model_class(name)(load_config(name))
        assert sum(p.numel() for p in model.parameters()) == count, name


def test_qwen3_5_parameter_count_and_linear_layers():
    """Qwen/Qwen3.5-9B's checkpoint holds 9.653B parameters, its multi-token-prediction layer
    included, which the stock class does not build: one gated softmax-attention decoder layer
    (q+gate 4096x8192, k and v 4096x1024, o 4096x4096, SwiGLU 3x4096x12288, two norms, q/k norms),
    the 8192->4096 fusion projection and two input norms, 243,286,528 in all."""
    from vlmprune.adapters import family
    from vlmprune.apps.archs import model_class
    from vlmprune.core.flops import linear_layer_flops

    config = load_config("qwen3.5-9b")
    with torch.device("meta"):
        model = model_class("qwen3.5-9b")(config)
    d = 4096
    mtp = d * 8192 + 2 * d * 1024 + 4096 * d + 3 * d * 12288 + 2 * d + 2 * 256 + 2 * d * d + 2 * d
    assert round((sum(p.numel() for p in model.parameters()) + mtp) / 1e6) == 9653
    shape = family("qwen3_5").llm_shape(config)
    assert shape.linear_layers == tuple(i for i in range(32) if i % 4 != 3) and shape.attn_gate
    # a linear-attention layer is linear in n; a softmax layer is not
    assert linear_layer_flops(2000, shape) == 2 * linear_layer_flops(1000, shape)
    softmax_only = LLMShape.from_config(config)
    # wider projections than the softmax layers', no n² term: dearer at 1k tokens, cheaper at 32k
    assert prefill_flops(shape, [1000] * 32, "exact") > prefill_flops(softmax_only, [1000] * 32, "exact")
    assert prefill_flops(shape, [32768] * 32, "exact") < prefill_flops(softmax_only, [32768] * 32, "exact")


def test_tiny_variants_forward():
    """Each tiny variant instantiates (random weights, CPU, SDPA) and runs a multimodal forward pass."""
    torch.manual_seed(0)
    for name in ARCHS:
        model = build_model(name, tiny=True)
        cfg = model.config
        assert type(cfg) is type(load_config(name))
        vocab = cfg.get_text_config().vocab_size
        if cfg.model_type == "llava":
            n_img = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
            ids = torch.tensor([[1, 5, 6] + [cfg.image_token_id] * n_img + [7, 8]])
            out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 56, 56))
        elif cfg.model_type == "llava_next":
            pixels, sizes = torch.randn(1, 5, 3, 56, 56), torch.tensor([[112, 112]])
            feats = model.model.get_image_features(
                pixel_values=pixels,
                image_sizes=sizes,
                vision_feature_layer=-2,
                vision_feature_select_strategy="default",
            ).pooler_output
            n_img = sum(f.shape[0] for f in feats)
            assert n_img == 16 + 64 + 8  # base crop + unpadded 8x8 grid of 4 tiles + 8 row newlines
            ids = torch.tensor([[1, 5, 6] + [cfg.image_token_id] * n_img + [7, 8]])
            out = model(input_ids=ids, pixel_values=pixels, image_sizes=sizes)
        elif cfg.model_type == "internvl":  # one 56-px tile: 4x4 patches, pixel-shuffled to 2x2 tokens
            ids = torch.tensor([[1, 5, 6] + [cfg.image_token_id] * 4 + [7, 8]])
            out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 56, 56))
        elif cfg.model_type == "llava_onevision":
            pixels, sizes = torch.randn(1, 2, 3, 56, 56), torch.tensor([[56, 56]])
            n_img = 16 + 4 * (4 + 1)  # base view + one tile's 4x4 grid with a newline per row
            ids = torch.tensor([[1, 5, 6] + [cfg.image_token_id] * n_img + [7, 8]])
            out = model(input_ids=ids, pixel_values=pixels, image_sizes=sizes)
        else:
            ids = torch.tensor(
                [
                    [1, 5, cfg.vision_start_token_id]
                    + [cfg.image_token_id] * 4
                    + [cfg.vision_end_token_id, 7, 8]
                ]
            )
            types = (ids == cfg.image_token_id).long()
            v = cfg.vision_config
            out = model(
                input_ids=ids,
                pixel_values=torch.randn(16, v.in_channels * v.temporal_patch_size * v.patch_size**2),
                image_grid_thw=torch.tensor([[1, 4, 4]]),
                mm_token_type_ids=types,
            )
        assert out.logits.shape == (1, ids.shape[1], vocab), name
        assert torch.isfinite(out.logits).all(), name


def test_every_family_counts_its_vision_tower():
    """Each family describes the images of its processor's inputs for the vision FLOPs."""
    from vlmprune.testing import FAMILIES, make_inputs, random_image, tiny_model

    for name in FAMILIES:
        model, proc = tiny_model(name)
        inputs = make_inputs(name, proc, ["What is shown?"], [[random_image(0)]])
        cls = adapter_class(model.config)
        assert vision_flops(cls.vision_shape(model.config), **cls.vision_grids(model.config, inputs)) > 0, (
            name
        )
