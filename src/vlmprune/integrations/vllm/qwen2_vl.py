"""Qwen2-VL under vLLM: vLLM's own ``Qwen2VLForConditionalGeneration`` with pruned images and videos.

As Qwen2.5-VL (:mod:`vlmprune.integrations.vllm.qwen2_5_vl`), with the tower's layout: full
attention in every block (saliency from the last one, as the HF adapter's; no window order).
Videos: one budget per video, its frames the regions (``temporal`` compares them); their kept
tokens keep their original M-RoPE positions (t the frame, as the stock model numbers it).
"""

from __future__ import annotations

from contextlib import contextmanager

from vllm.model_executor.models.qwen2_vl import (
    Qwen2VLDummyInputsBuilder,
    Qwen2VLForConditionalGeneration,
    Qwen2VLMultiModalProcessor,
    Qwen2VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from vlmprune.integrations.vllm.common import hooks
from vlmprune.integrations.vllm.mrope import MRopePruningModel, grab_merger_input, grab_received
from vlmprune.integrations.vllm.qwen2_5_vl import QwenProcessorMixin
from vlmprune.integrations.vllm.video import VideoProcessorMixin


class PrunedQwen2VLProcessor(VideoProcessorMixin, QwenProcessorMixin, Qwen2VLMultiModalProcessor):
    pass


@contextmanager
def last_block_capture(visual, num_heads: int, needs: set[str]):
    """Signal hooks on a Qwen tower with full attention in every block: attention received in
    the last block, the merger's input."""
    record: dict = {}
    handles = []
    if "saliency" in needs:
        handles += grab_received(visual.blocks[len(visual.blocks) - 1].attn.attn, record, num_heads)
    if "pre_features" in needs:
        handles.append(grab_merger_input(visual.merger, record))
    with hooks(handles):
        yield record


@MULTIMODAL_REGISTRY.register_processor(
    PrunedQwen2VLProcessor, info=Qwen2VLProcessingInfo, dummy_inputs=Qwen2VLDummyInputsBuilder
)
class PrunedQwen2VLForConditionalGeneration(MRopePruningModel, Qwen2VLForConditionalGeneration):
    """vLLM's Qwen2-VL with vlmprune's pre-LLM methods on images and videos."""

    def _vlmprune_capture(self, needs: set[str]):
        return last_block_capture(self.visual, int(self.config.vision_config.num_heads), needs)
