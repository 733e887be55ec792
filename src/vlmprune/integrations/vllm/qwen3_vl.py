"""Qwen3-VL under vLLM: vLLM's own ``Qwen3VLForConditionalGeneration`` with pruned images.

As Qwen2.5-VL (:mod:`vlmprune.integrations.vllm.qwen2_5_vl`), with the tower's layout: full
attention in every block (saliency from the last one, no window order) and DeepStack. vLLM packs
each visual token's DeepStack features beside its embedding in one row, so a kept row keeps its
own DeepStack features, as in the HF session. Videos are not pruned.
"""

from __future__ import annotations

from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from vlmprune.integrations.vllm.mrope import MRopePruningModel
from vlmprune.integrations.vllm.qwen2_5_vl import QwenProcessorMixin
from vlmprune.integrations.vllm.qwen2_vl import last_block_capture


class PrunedQwen3VLProcessor(QwenProcessorMixin, Qwen3VLMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    PrunedQwen3VLProcessor, info=Qwen3VLProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class PrunedQwen3VLForConditionalGeneration(MRopePruningModel, Qwen3VLForConditionalGeneration):
    """vLLM's Qwen3-VL with vlmprune's pre-LLM methods on images."""

    def _vlmprune_embed_width(self) -> int:
        return int(self.visual_dim + (self.multiscale_dim if self.use_deepstack else 0))

    def _vlmprune_main_width(self) -> int:
        return int(self.visual_dim)  # the methods see the LLM input; DeepStack columns follow their token

    def _vlmprune_capture(self, needs: set[str]):
        return last_block_capture(self.visual, int(self.config.vision_config.num_heads), needs)
