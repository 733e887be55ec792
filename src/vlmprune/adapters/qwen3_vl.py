"""Qwen3-VL (``Qwen3VLForConditionalGeneration``): full-attention tower without CLS, DeepStack, M-RoPE.

As Qwen2-VL for the tokens, the layout and the saliency (attention received in the last vision
block, summed per 2x2 merge group; the tower has no window attention), with one addition:
**DeepStack**. The tower also returns features of some of its layers (``deepstack_visual_indexes``),
which the language model adds to the hidden states of the visual positions after its first
decoder layers (``visual_pos_masks``, ``deepstack_visual_embeds``). Pruning keeps those additions
consistent with the kept set: the kept tokens keep their own DeepStack rows, in the same order,
before the LLM (:meth:`shorten_lm_inputs`) and again at an in-LLM stage (:meth:`lm_hooks` remaps
the additions of the layers after it). Positions: ``"original"`` (interleaved M-RoPE).
"""

from __future__ import annotations

import torch

from vlmprune.adapters.base import Adapter, InstanceAttributeHook, register_adapter
from vlmprune.adapters.qwen2_vl import QwenVisionMixin
from vlmprune.core.flops import VisionShape


def visual_rows(masks: torch.Tensor, index: torch.Tensor, valid: torch.Tensor):
    """``visual_pos_masks`` (B, L) restricted to the positions ``index`` (B, L') keeps, and the
    rows (n',) of the DeepStack tensors (one row per True position of ``masks``, row-major) that
    the kept visual positions read, in the order the language model reads them."""
    rank = (masks.reshape(-1).long().cumsum(0) - 1).view_as(masks)  # (B, L) row of each visual position
    kept = masks.gather(1, index) & valid  # (B, L')
    return kept, rank.gather(1, index)[kept]  # (B, L'), (n',)


def qwen3_vision_shape(config) -> VisionShape:
    """The Qwen3-VL-style tower (full attention, learned position grid, 2x2 merger, one more
    merger per DeepStack layer, if any)."""
    v = config.vision_config
    return VisionShape(
        num_layers=int(v.depth),
        hidden=int(v.hidden_size),
        intermediate=int(v.intermediate_size),
        num_heads=int(v.num_heads),
        patch_size=int(v.patch_size),
        in_channels=int(v.in_channels),
        temporal_patch_size=int(v.temporal_patch_size),
        spatial_merge_size=int(v.spatial_merge_size),
        connector_hidden=int(v.hidden_size) * int(v.spatial_merge_size) ** 2,
        connector_out=int(v.out_hidden_size),
        connectors=1 + len(getattr(v, "deepstack_visual_indexes", None) or ()),
    )


@register_adapter
class Qwen3VLAdapter(QwenVisionMixin, Adapter):
    family = "qwen3_vl"
    label = "Qwen3-VL"
    model_types = ("qwen3_vl",)
    model_class = "Qwen3VLForConditionalGeneration"
    config_class = "Qwen3VLConfig"
    archs = ("qwen3-vl-8b",)
    tiny_name = "tiny-qwen3-vl"
    saliency_doc = "attention received in the last vision block (no CLS, no windows), or `feature_norm`"
    video_timestamps = True

    def lm_hooks(self) -> list:
        self._layer_index, self._layer_rows = None, None
        original = self.language_model._deepstack_process

        def deepstack_process(hidden_states, visual_pos_masks, visual_embeds):
            if self._layer_index is not None and visual_pos_masks.shape[1] != hidden_states.shape[1]:
                if self._layer_rows is None:  # one remap per call, shared by the DeepStack levels
                    self._layer_rows = visual_rows(visual_pos_masks, *self._layer_index)
                masks, rows = self._layer_rows
                return original(hidden_states, masks, visual_embeds[rows.to(visual_embeds.device)])
            return original(hidden_states, visual_pos_masks, visual_embeds)

        return [InstanceAttributeHook(self.language_model, "_deepstack_process", deepstack_process)]

    def shorten_lm_inputs(self, kwargs, index, valid) -> None:
        masks, embeds = kwargs.get("visual_pos_masks"), kwargs.get("deepstack_visual_embeds")
        if masks is None or embeds is None:
            return
        kept, rows = visual_rows(masks, index, valid)
        kwargs["visual_pos_masks"] = kept
        kwargs["deepstack_visual_embeds"] = [e[rows.to(e.device)] for e in embeds]

    def on_layer_prune(self, index, valid) -> None:
        self._layer_index = None if index is None else (index, valid)
        self._layer_rows = None

    # -- the family, for tools -------------------------------------------------------------------
    @classmethod
    def vision_shape(cls, config) -> VisionShape:
        return qwen3_vision_shape(config)

    @classmethod
    def tiny_text(cls) -> dict:
        rope = {
            "rope_type": "default",
            "mrope_section": [2, 3, 3],
            "mrope_interleaved": True,
            "rope_theta": 10000.0,
        }
        return {"head_dim": 16, "rope_parameters": rope}

    @classmethod
    def tiny_config(cls, tok, text: dict, attn: str, max_pixels: int = 168 * 168):
        """Four vision blocks, DeepStack from blocks 1-3 into the first three decoder layers."""
        from transformers import Qwen3VLConfig

        vc = dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64)
        vc.update(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64)
        vc.update(deepstack_visual_indexes=[1, 2, 3])
        return Qwen3VLConfig(
            text_config=text, vision_config=vc, attn_implementation=attn, **cls.tiny_ids(tok)
        )

    @classmethod
    def bench_vision(cls) -> dict:
        vision = {"depth": 4, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4}
        return {**vision, "out_hidden_size": 256, "deepstack_visual_indexes": [1, 2, 3]}

    @classmethod
    def bench_text(cls) -> dict:
        rope = {"mrope_section": [8, 12, 12]}
        return {"num_key_value_heads": 2, "head_dim": 64, "rope_parameters": rope}

    @classmethod
    def tiny_arch_vision(cls) -> dict:
        vision = {"depth": 4, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2}
        return {**vision, "out_hidden_size": 64, "deepstack_visual_indexes": [1, 2, 3]}

    @classmethod
    def shrink_arch(cls, d: dict) -> None:
        super().shrink_arch(d)
        d["text_config"]["head_dim"] = 16
        d["text_config"].pop("max_window_layers", None)
