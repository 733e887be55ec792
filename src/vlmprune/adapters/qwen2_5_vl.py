"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): windowed vision tower, M-RoPE.

As Qwen2-VL (see :mod:`vlmprune.adapters.qwen2_vl`), with two differences the adapter handles:
window attention everywhere except ``fullatt_block_indexes`` (the saliency block is
``fullatt_block_indexes[-1]``), and the tower's hidden states are in window order: merged tokens
are put back in raster order with the inverse of ``get_vision_window_index``.
"""

from __future__ import annotations

from vlmprune.adapters.base import Adapter, register_adapter
from vlmprune.adapters.qwen2_vl import QwenVisionMixin
from vlmprune.core.flops import VisionShape


@register_adapter
class Qwen2_5_VLAdapter(QwenVisionMixin, Adapter):
    family = "qwen2_5_vl"
    label = "Qwen2.5-VL"
    model_types = ("qwen2_5_vl",)
    model_class = "Qwen2_5_VLForConditionalGeneration"
    config_class = "Qwen2_5_VLConfig"
    archs = ("qwen2.5-vl-7b",)
    tiny_name = "tiny-qwen2.5-vl"

    def _full_attention_block(self) -> int:
        return int(self.config.vision_config.fullatt_block_indexes[-1])

    def _window_index(self, grid_thw):
        from transformers.vision_utils import get_vision_window_index

        v = self.config.vision_config
        window_index, _ = get_vision_window_index(
            grid_thw,
            spatial_merge_size=v.spatial_merge_size,
            window_size=v.window_size,
            patch_size=v.patch_size,
        )
        return window_index

    @classmethod
    def vision_shape(cls, config) -> VisionShape:
        v = config.vision_config
        return VisionShape(
            num_layers=int(v.depth),
            hidden=int(v.hidden_size),
            intermediate=int(v.intermediate_size),
            num_heads=int(v.num_heads),
            patch_size=int(v.patch_size),
            in_channels=int(v.in_channels),
            gated_mlp=True,
            temporal_patch_size=int(v.temporal_patch_size),
            spatial_merge_size=int(v.spatial_merge_size),
            window_size=int(v.window_size),
            fullatt_block_indexes=tuple(int(i) for i in v.fullatt_block_indexes),
            connector_hidden=int(v.hidden_size) * int(v.spatial_merge_size) ** 2,
            connector_out=int(v.out_hidden_size),
        )

    @classmethod
    def tiny_config(cls, tok, text: dict, attn: str, max_pixels: int = 168 * 168):
        """Windowed vision tower (full attention at blocks 1 and 3), 2x2 merger, M-RoPE."""
        from transformers import Qwen2_5_VLConfig

        vc = dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64)
        vc.update(patch_size=14, window_size=56, fullatt_block_indexes=[1, 3])
        vc.update(spatial_merge_size=2, temporal_patch_size=2)
        return Qwen2_5_VLConfig(
            text_config=text, vision_config=vc, attn_implementation=attn, **cls.tiny_ids(tok)
        )

    @classmethod
    def bench_vision(cls) -> dict:
        vision = {"depth": 4, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4}
        return {**vision, "window_size": 112, "out_hidden_size": 256}

    @classmethod
    def tiny_arch_vision(cls) -> dict:
        vision = {"depth": 4, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2}
        return {**vision, "out_hidden_size": 64, "fullatt_block_indexes": [1, 3]}
