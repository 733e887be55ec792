"""Qwen3.5 (``Qwen3_5ForConditionalGeneration``): a hybrid decoder of Gated DeltaNet linear-attention
layers and softmax-attention layers, behind a Qwen3-VL-style vision tower (no DeepStack).

Tokens, layout and saliency are Qwen3-VL's (attention received in the last vision block, summed
per 2x2 merge group); positions ``"original"`` (interleaved M-RoPE with partial rotary).

**The reference is the stock model fed only the kept tokens**, not the masked model: a masked
token still moves a linear-attention layer's recurrent state (its gate decays the state), so
dropping tokens is not the same as masking them there. The session drops them, so the pruned run
is the stock language model on the kept sequence with the unpruned positions gathered. An in-LLM
stage at layer K runs layers before K on the whole sequence and layers from K on the kept
subsequence, their linear-attention layers included (a dropped token never enters their
recurrence from K on); it reads the attention of layer K - 1, which must be a softmax-attention
layer (:meth:`check_llm_layer`). Decoding uses the stock hybrid cache (conv and recurrent states).
"""

from __future__ import annotations

from vlmprune.adapters.base import Adapter, register_adapter
from vlmprune.adapters.qwen2_vl import QwenVisionMixin
from vlmprune.adapters.qwen3_vl import qwen3_vision_shape
from vlmprune.core.flops import LinearAttentionShape, LLMShape, VisionShape

LINEAR = "linear_attention"


@register_adapter
class Qwen3_5Adapter(QwenVisionMixin, Adapter):
    family = "qwen3_5"
    label = "Qwen3.5"
    model_types = ("qwen3_5",)
    model_class = "Qwen3_5ForConditionalGeneration"
    config_class = "Qwen3_5Config"
    archs = ("qwen3.5-9b",)
    tiny_name = "tiny-qwen3.5"
    saliency_doc = "attention received in the last vision block (no CLS, no windows), or `feature_norm`"
    video_timestamps = True
    masking_is_dropping = False

    # -- the language model ----------------------------------------------------------------------
    def layer_kind(self, layer: int) -> str:
        return self.text_config.layer_types[layer]

    def layer_mask(self, hidden, mask2d, cache, layer: int):
        if self.layer_kind(layer) != LINEAR:
            return super().layer_mask(hidden, mask2d, cache, layer)
        from transformers.masking_utils import create_recurrent_attention_mask

        return create_recurrent_attention_mask(
            config=self.language_model.config,
            inputs_embeds=hidden,
            attention_mask=mask2d,
            past_key_values=cache,
        )

    def check_llm_layer(self, layer: int) -> None:
        if self.layer_kind(layer - 1) == LINEAR:
            ok = [i + 1 for i, kind in enumerate(self.text_config.layer_types[:-1]) if kind != LINEAR]
            raise ValueError(
                f"`layer`={layer}: an in-LLM stage reads the attention of layer {layer - 1}, a linear-attention "
                f"layer of this model; choose a layer right after a softmax-attention layer: {ok}"
            )

    # -- the family, for tools -------------------------------------------------------------------
    @classmethod
    def llm_shape(cls, config) -> LLMShape:
        text = config.get_text_config()
        base = LLMShape.from_config(text)
        linear = LinearAttentionShape(
            key_heads=int(text.linear_num_key_heads),
            key_dim=int(text.linear_key_head_dim),
            value_heads=int(text.linear_num_value_heads),
            value_dim=int(text.linear_value_head_dim),
            conv_kernel=int(text.linear_conv_kernel_dim),
        )
        layers = tuple(i for i, kind in enumerate(text.layer_types) if kind == LINEAR)
        return LLMShape(**{**base.__dict__, "linear_layers": layers, "linear": linear, "attn_gate": True})

    @classmethod
    def vision_shape(cls, config) -> VisionShape:
        return qwen3_vision_shape(config)  # Qwen3-VL's tower without DeepStack

    @classmethod
    def tiny_text(cls) -> dict:
        rope = {"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True}
        rope.update(rope_theta=10000.0, partial_rotary_factor=0.5)
        text = {"head_dim": 16, "rope_parameters": rope}
        text.update(
            linear_num_key_heads=2, linear_key_head_dim=16, linear_num_value_heads=4, linear_value_head_dim=16
        )
        return text

    @classmethod
    def tiny_config(cls, tok, text: dict, attn: str, max_pixels: int = 168 * 168):
        """Linear attention at decoder layers 0 and 2, softmax attention at 1 and 3; partial rotary."""
        from transformers import Qwen3_5Config

        pattern = [LINEAR, "full_attention"]  # softmax attention right before layer 2 (FastV's default)
        text = {**text, "layer_types": [pattern[i % 2] for i in range(text["num_hidden_layers"])]}
        vc = dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64)
        vc.update(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64)
        return Qwen3_5Config(
            text_config=text, vision_config=vc, attn_implementation=attn, **cls.tiny_ids(tok)
        )

    @classmethod
    def bench_vision(cls) -> dict:
        return {
            "depth": 4,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 4,
            "out_hidden_size": 256,
        }

    @classmethod
    def bench_text(cls) -> dict:
        rope = {"mrope_section": [4, 6, 6]}  # 32 of the 64 head dims rotate (partial_rotary_factor 0.5)
        layer_types = [LINEAR, "full_attention"] * 4
        linear = {"linear_num_key_heads": 4, "linear_key_head_dim": 64, "linear_num_value_heads": 8}
        return {
            "num_key_value_heads": 2,
            "head_dim": 64,
            "rope_parameters": rope,
            "layer_types": layer_types,
            **linear,
        }

    @classmethod
    def tiny_arch_vision(cls) -> dict:
        return {"depth": 4, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64}

    @classmethod
    def shrink_arch(cls, d: dict) -> None:
        super().shrink_arch(d)
        text = d["text_config"]
        text.update(head_dim=16, layer_types=[LINEAR, "full_attention", LINEAR, "full_attention"])
        text.update(
            linear_num_key_heads=2, linear_key_head_dim=16, linear_num_value_heads=4, linear_value_head_dim=16
        )
        rope = dict(text.get("rope_parameters") or {})
        text["rope_parameters"] = {**rope, "mrope_section": [1, 1, 0], "partial_rotary_factor": 0.25}
        text.pop("max_window_layers", None)
