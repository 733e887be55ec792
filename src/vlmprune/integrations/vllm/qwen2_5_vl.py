"""Qwen2.5-VL under vLLM: vLLM's own ``Qwen2_5_VLForConditionalGeneration`` with pruned images and videos.

Saliency is the attention each patch receives in the last full-attention vision block (mean over
heads and over its image's queries, summed over each 2x2 merge group), as the HF adapter's; it
is computed from the rotated queries and keys that block's attention receives, and put back in
raster order with the tower's own window index. VisPruner's pre-merger features come from the
merger's input. Positions: the original M-RoPE positions (:mod:`vlmprune.integrations.vllm.mrope`).
Videos: one budget per video, its frames the regions; a kept token's temporal position is its
frame's (``second_per_grid_ts * tokens_per_second`` apart, as the stock model numbers them).
"""

from __future__ import annotations

from contextlib import contextmanager

from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from vlmprune.integrations.vllm.common import PruningProcessor, hooks
from vlmprune.integrations.vllm.mrope import MRopePruningModel, grab_merger_input, grab_received
from vlmprune.integrations.vllm.video import VideoProcessorMixin


class QwenProcessorMixin(PruningProcessor):
    """The Qwen families' processor side: ``<|image_pad|>`` runs, images counted by their grids."""

    positions = ("original",)

    def _vlmprune_image_id(self) -> int:
        return int(self.info.get_hf_config().image_token_id)

    def _vlmprune_media_ids(self) -> list[int]:
        config = self.info.get_hf_config()
        return [int(config.image_token_id), int(config.video_token_id)]

    def _vlmprune_video_id(self) -> int:
        return int(self.info.get_hf_config().video_token_id)

    def _vlmprune_num_images(self, out) -> int:
        grid = out.get("image_grid_thw")
        return 0 if grid is None else len(grid)

    def _vlmprune_num_videos(self, out) -> int:
        grid = out.get("video_grid_thw")
        return 0 if grid is None else len(grid)


class PrunedQwen2_5_VLProcessor(VideoProcessorMixin, QwenProcessorMixin, Qwen2_5_VLMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    PrunedQwen2_5_VLProcessor, info=Qwen2_5_VLProcessingInfo, dummy_inputs=Qwen2_5_VLDummyInputsBuilder
)
class PrunedQwen2_5_VLForConditionalGeneration(MRopePruningModel, Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL with vlmprune's pre-LLM methods on images and videos."""

    @contextmanager
    def _vlmprune_capture(self, needs: set[str]):
        visual = self.visual
        record: dict = {}

        def with_metadata(module, args, kwargs):  # the tower's own window order, kept for later
            grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
            if kwargs.get("encoder_metadata") is None and grid is not None:
                kwargs = {**kwargs, "encoder_metadata": module.prepare_encoder_metadata(grid)}
            if kwargs.get("encoder_metadata") is not None:
                record["window_index"] = kwargs["encoder_metadata"]["window_index"]
            return args, kwargs

        handles = [visual.register_forward_pre_hook(with_metadata, with_kwargs=True)]
        if "saliency" in needs:
            block = visual.blocks[int(self.config.vision_config.fullatt_block_indexes[-1])]
            handles += grab_received(block.attn.attn, record, int(self.config.vision_config.num_heads))
        if "pre_features" in needs:
            # the merger's input, read at its first norm: vLLM wraps the merger's own call in its
            # compile decorator, which runs the forward without the module's hooks
            handles.append(grab_merger_input(visual.merger, record))
        with hooks(handles):
            yield record
