"""Qwen3.5 under vLLM: vLLM's own ``Qwen3_5ForConditionalGeneration`` with pruned images and videos.

vLLM's Qwen3.5 is its Qwen3-VL model with a hybrid decoder (Gated DeltaNet linear-attention
layers between full-attention layers) and a tower without DeepStack: images and timestamped
videos are pruned as on Qwen3-VL (:mod:`vlmprune.integrations.vllm.qwen3_vl`), the same signals
(attention received in the last vision block, the merger's input) and the original M-RoPE
positions. The engine drops the pruned tokens from the sequence, so no dropped token enters a
linear-attention layer's recurrent state: the HF session's rule for this family (it drops them
too; masking would not be the same there).
"""

from __future__ import annotations

from vllm.model_executor.models.qwen3_5 import Qwen3_5ForConditionalGeneration, Qwen3_5ProcessingInfo
from vllm.model_executor.models.qwen3_vl import Qwen3VLDummyInputsBuilder
from vllm.multimodal import MULTIMODAL_REGISTRY

from vlmprune.integrations.vllm.qwen3_vl import PrunedQwen3VLProcessor, Qwen3VLPruningModel


@MULTIMODAL_REGISTRY.register_processor(
    PrunedQwen3VLProcessor, info=Qwen3_5ProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class PrunedQwen3_5ForConditionalGeneration(Qwen3VLPruningModel, Qwen3_5ForConditionalGeneration):
    """vLLM's Qwen3.5 with vlmprune's pre-LLM methods on images and videos."""
