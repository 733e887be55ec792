"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): windowed vision tower, M-RoPE.

As Qwen2-VL (see :mod:`vlmprune.adapters.qwen2_vl`), with two differences the adapter handles:
window attention everywhere except ``fullatt_block_indexes`` (the saliency block is
``fullatt_block_indexes[-1]``), and the tower's hidden states are in window order: merged tokens
are put back in raster order with the inverse of ``get_vision_window_index``.
"""

from __future__ import annotations

from vlmprune.adapters.base import Adapter, register_adapter
from vlmprune.adapters.qwen2_vl import QwenVisionMixin


@register_adapter
class Qwen2_5_VLAdapter(QwenVisionMixin, Adapter):
    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)

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
