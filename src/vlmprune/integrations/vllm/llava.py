"""LLaVA-1.5 under vLLM: vLLM's own ``LlavaForConditionalGeneration`` with pruned images.

Saliency is the CLS query's attention in the CLIP layer that produced the features (as the HF
adapter's), recomputed from that layer's input with vLLM's fused ``qkv_proj``; keys are that
layer's head-averaged keys; VisPruner's pre-projector features come from the projector's input.
Positions are compact: LLaVA's 1-D RoPE numbers tokens by their slot in vLLM's sequence, so the
K kept tokens sit at K consecutive positions, as with ``positions="compact"`` (the family's
default) in the HF session.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
    _build_llava_or_pixtral_hf_info,
    _build_llava_or_pixtral_hf_processor,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from vlmprune.adapters.base import feature_layer
from vlmprune.adapters.signals import cls_attention
from vlmprune.integrations.vllm.common import PruningModel, PruningProcessor, heads_mean, hooks, whole


class LlavaProcessorMixin(PruningProcessor):
    """The LLaVA families' processor side: one ``<image>`` token repeated, images counted by
    their pixel values, compact positions."""

    positions = ("compact",)

    def _vlmprune_image_id(self) -> int:
        return int(self.info.get_hf_config().image_token_index)

    def _vlmprune_media_ids(self) -> list[int]:
        return [self._vlmprune_image_id()]

    def _vlmprune_num_images(self, out) -> int:
        pv = out.get("pixel_values")
        return 0 if pv is None else len(pv)


class PrunedLlavaProcessor(LlavaProcessorMixin, LlavaMultiModalProcessor):
    pass


class PrunedLlavaProcessingInfo(LlavaProcessingInfo):
    def get_mm_max_tokens_per_item(self, seq_len, mm_counts):
        # the unpruned count: the encoder cache must fit a request that keeps every token
        return {"image": self.get_max_image_tokens()}


def _info(ctx):
    info = _build_llava_or_pixtral_hf_info(ctx)
    return PrunedLlavaProcessingInfo(ctx) if type(info) is LlavaProcessingInfo else info


def _processor(info, dummy_inputs):
    if isinstance(info, PrunedLlavaProcessingInfo):
        return PrunedLlavaProcessor(info, dummy_inputs)
    return _build_llava_or_pixtral_hf_processor(info, dummy_inputs)  # Pixtral towers: stock


def clip_cls_attention(attn, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS-query attention of a vLLM ``CLIPAttention`` from its input ``hidden`` (V, T, Dv).

    Returns saliency (V, T) (the CLS query's attention row, mean over heads) and keys (V, T, hd)
    (mean over heads); with tensor parallelism each rank holds some heads and the means are
    all-reduced."""
    n_views, t, _ = hidden.shape
    heads, hd = attn.num_heads_per_partition, attn.head_dim
    qkv, _ = attn.qkv_proj(hidden)
    q, k, _ = qkv.float().chunk(3, dim=-1)  # each (V, T, heads * hd)
    q = q[:, :1].reshape(n_views, 1, heads, hd).transpose(1, 2)  # (V, H, 1, hd)
    k = k.reshape(n_views, t, heads, hd).transpose(1, 2)  # (V, H, T, hd)
    sal, keys = cls_attention(q, k, attn.scale)  # this rank's heads: (V, T), (V, T, hd)
    return heads_mean(sal, heads, attn.num_heads), heads_mean(keys, heads, attn.num_heads)


def clip_tower_names(weights):
    """``weights`` (name, tensor) with the CLIP tower keys of checkpoints saved by transformers
    5.x, which have no ``vision_model.`` level (``vision_tower.encoder...``), as vLLM 0.32's
    LLaVA-style models load them (``vision_tower.vision_model.encoder...``)."""
    for name, tensor in weights:
        head, sep, rest = name.partition("vision_tower.")
        if sep and not head.strip(".").replace("model", "") and not rest.startswith("vision_model."):
            name = f"{head}vision_tower.vision_model.{rest}"
        yield name, tensor


class ClipCapture:
    """Mixed in before :class:`PruningModel` by the LLaVA-style families whose vLLM model holds a
    ``vision_tower`` (CLIP: its signals are captured) and a ``multi_modal_projector``."""

    def _vlmprune_clip_init(self, family: str) -> None:
        config = self.config
        self._vlmprune_clip = getattr(config.vision_config, "model_type", "") == "clip_vision_model"
        if self._vlmprune_clip:
            self._vlmprune_layer = feature_layer(config, "default", family)
            self._vlmprune_side = config.vision_config.image_size // config.vision_config.patch_size

    def load_weights(self, weights):
        """Stock loading, also of checkpoints saved by transformers 5.x (:func:`clip_tower_names`)."""
        return super().load_weights(clip_tower_names(weights))

    @contextmanager
    def _vlmprune_capture(self, needs: set[str]):
        """Saliency (V, T) and keys (V, T, hd) of the feature layer's CLS query per tower view, and
        the projector's input (V, N, Dv), of the one tower run inside."""
        record: dict = {}
        handles = []
        if self._vlmprune_clip and needs & {"saliency", "keys"}:
            attn = self.vision_tower.vision_model.encoder.layers[self._vlmprune_layer].self_attn

            def grab(module, args, kwargs):
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                with torch.no_grad():
                    record["saliency"], record["keys"] = clip_cls_attention(module, hidden)

            handles.append(attn.register_forward_pre_hook(grab, with_kwargs=True))
        if self._vlmprune_clip and "pre_features" in needs:

            def grab_pre(module, args):
                record["pre_features"] = args[0].detach()

            handles.append(self.multi_modal_projector.register_forward_pre_hook(grab_pre))
        with hooks(handles):
            yield record


@MULTIMODAL_REGISTRY.register_processor(_processor, info=_info, dummy_inputs=LlavaDummyInputsBuilder)
class PrunedLlavaForConditionalGeneration(ClipCapture, PruningModel, LlavaForConditionalGeneration):
    """vLLM's LLaVA with vlmprune's pre-LLM methods (CLIP towers, ``"default"`` strategy)."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._vlmprune_clip_init("llava")

    def _vlmprune_images(self, kwargs, record, embeds) -> list[dict]:
        out = []
        for i, emb in enumerate(embeds):
            n = emb.shape[0]
            side = getattr(self, "_vlmprune_side", 0)
            grid = (side, side) if side * side == n else (1, n)
            info = {"regions": whole(n, grid), "grid": grid}
            if "saliency" in record:
                info["saliency"] = record["saliency"][i, 1:]  # drop the CLS column: (T,) -> (N,)
                info["keys"] = record["keys"][i, 1:]
            if "pre_features" in record:
                info["pre_features"] = record["pre_features"][i]
            out.append(info)
        return out
