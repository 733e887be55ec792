"""LLaVA-OneVision under vLLM: vLLM's own ``LlavaOnevisionForConditionalGeneration`` with pruned
images and videos.

An image is laid out as the model packs it (the HF adapter's geometry): the base view's ``s x s``
tokens, then the high-resolution grid (tiles stitched, padding rows or columns cut, shrunk
bilinearly past ``anyres_max_9``) with one ``image_newline`` after each row; the base view and
the grid are its two regions. Found by packing ones with the model's own
``_merge_image_patch_embeddings``, so the plugin's layout is vLLM's. A video is its frames'
``p x p`` pooled tokens, frame-major, then one newline; each frame is a region, one budget per
video. Selection runs over the content tokens; a pruned image (video) keeps K content rows and
drops its newlines, one that keeps every token stays as stock, newlines included (as in the HF
session).

Saliency is the attention each patch receives in the SigLIP layer that produced the features,
mean over heads and queries (no CLS token), recomputed from that layer's input with vLLM's fused
``qkv_proj``; packed per image like the features (interpolation included), pooled per video
frame like the frames' features. VisPruner's pre-projector features come from the projector's
input, packed and pooled the same way. Positions are compact: the Qwen2 LLM's 1-D RoPE numbers
tokens by their slot in vLLM's sequence, as with ``positions="compact"`` (the family's default)
in the HF session.

vLLM 0.32 packs every image with ``anyres_max_9`` (and counts its placeholders so), whatever the
checkpoint's ``vision_aspect_ratio``; the released checkpoints use ``anyres_max_9``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers.models.llava_onevision.modeling_llava_onevision import get_anyres_image_grid_shape
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.parse import ImageProcessorItems

from vlmprune.adapters.base import feature_layer
from vlmprune.adapters.llava_onevision import frames_layout, packed_layout
from vlmprune.adapters.signals import received
from vlmprune.integrations.vllm.common import FIELDS, PruningModel, PruningProcessor, all_heads, hooks
from vlmprune.integrations.vllm.config import decode
from vlmprune.integrations.vllm.llava import clip_tower_names
from vlmprune.integrations.vllm.video import VideoProcessorMixin


class PrunedLlavaOnevisionProcessingInfo(LlavaOnevisionProcessingInfo):
    def get_mm_max_tokens_per_item(self, seq_len, mm_counts):
        # the unpruned counts: the encoder cache must fit a request that keeps every token
        return {"image": self.get_max_image_tokens(), "video": self.get_max_video_tokens(seq_len, mm_counts)}


class PrunedLlavaOnevisionProcessor(VideoProcessorMixin, PruningProcessor, LlavaOnevisionMultiModalProcessor):
    positions = ("compact",)

    def _vlmprune_image_id(self) -> int:
        return int(self.info.get_hf_config().image_token_index)

    def _vlmprune_video_id(self) -> int:
        return int(self.info.get_hf_config().video_token_index)

    def _vlmprune_media_ids(self) -> list[int]:
        return [self._vlmprune_image_id(), self._vlmprune_video_id()]

    def _vlmprune_num_images(self, out) -> int:
        pv = out.get("pixel_values")
        return 0 if pv is None else len(pv)

    def _vlmprune_num_videos(self, out) -> int:
        pv = out.get("pixel_values_videos")
        return 0 if pv is None else len(pv)

    def _vlmprune_newlines(self, mm_items, item_idx: int) -> int:
        """Newlines in image ``item_idx``'s placeholder run: one per high-resolution row, as the
        stock count has them."""
        size = mm_items.get_items("image", ImageProcessorItems).get_image_size(item_idx)
        enc = self.info.get_vision_encoder_info()
        pinpoints = self.info.get_hf_config().image_grid_pinpoints
        nph, npw = get_anyres_image_grid_shape((size.height, size.width), pinpoints, enc.get_image_size())
        _, rows = self.info._get_num_unpadded_features(
            original_height=size.height,
            original_width=size.width,
            npatches=enc.get_patch_grid_length(),
            num_patch_height=nph,
            num_patch_width=npw,
        )
        return int(rows)

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        """The stock updates, each pruned image's (video's) run of N placeholders cut to its K
        kept content tokens (newlines dropped); a run that keeps every content token stays whole."""
        from dataclasses import replace

        self._vlmprune_refuse_embeddings(mm_items, hf_processor_mm_kwargs)
        updates = list(
            super(PruningProcessor, self)._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        )
        for u, update in enumerate(updates):
            if update.modality not in self.modalities:
                continue
            stock, modality = update.replacement, update.modality

            def kept(item_idx: int, stock=stock, modality=modality):
                tokens = list(stock(item_idx) if callable(stock) else stock)
                item = out_mm_kwargs[modality][item_idx]
                field = FIELDS[modality][0]
                spec = decode(item[field].data) if field in item else None
                if spec is None:
                    return tokens
                separators = 1 if modality == "video" else self._vlmprune_newlines(mm_items, item_idx)
                content = len(tokens) - separators
                k = spec.keep_count(content)
                return tokens if k >= content else tokens[:k]  # one placeholder token repeated

            updates[u] = replace(update, replacement=kept)
        return updates


def siglip_received(attn, hidden: torch.Tensor) -> torch.Tensor:
    """(B, N, D) input of a vLLM ``SiglipAttention`` -> (B, N): the attention each patch receives
    (:func:`~vlmprune.adapters.signals.received`), averaged over every head and the N queries
    (float32); with tensor parallelism each rank holds some heads and the sums are all-reduced."""
    b, n, _ = hidden.shape
    heads, hd = attn.num_heads_per_partition, attn.head_dim
    qkv, _ = attn.qkv_proj(hidden)
    q, k, _ = qkv.float().chunk(3, dim=-1)  # each (B, N, heads * hd)
    q, k = (t.reshape(b, n, heads, hd).transpose(1, 2) for t in (q, k))  # (B, heads, N, hd)
    got = received(q, k, attn.scale).sum(1) / (attn.num_heads * n)  # (B, heads, N) -> (B, N)
    return all_heads(got, heads, attn.num_heads)


def _per_item(pixels) -> list[int]:
    """Crops (frames) of each image (video) in a batch: a (B, C, 3, H, W) tensor or a list."""
    if torch.is_tensor(pixels):
        return [int(pixels.shape[1])] * int(pixels.shape[0])
    return [int(p.shape[0]) for p in pixels]


@MULTIMODAL_REGISTRY.register_processor(
    PrunedLlavaOnevisionProcessor,
    info=PrunedLlavaOnevisionProcessingInfo,
    dummy_inputs=LlavaOnevisionDummyInputsBuilder,
)
class PrunedLlavaOnevisionForConditionalGeneration(PruningModel, LlavaOnevisionForConditionalGeneration):
    """vLLM's LLaVA-OneVision with vlmprune's pre-LLM methods on images and videos (SigLIP towers)."""

    vlmprune_modalities = ("image", "video")

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = self.config
        vision = config.vision_config
        self._vlmprune_side = int(vision.image_size) // int(vision.patch_size)
        self._vlmprune_layer = None  # the saliency layer: SigLIP towers reading one layer ("full")
        if getattr(vision, "model_type", "") == "siglip_vision_model":
            try:
                self._vlmprune_layer = feature_layer(config, "full", "llava_onevision")
            except ValueError:
                pass

    def load_weights(self, weights):
        return super().load_weights(clip_tower_names(weights))

    @contextmanager
    def _vlmprune_capture(self, needs: set[str]):
        record: dict = {}
        handles = []
        if "saliency" in needs:
            if self._vlmprune_layer is None:
                raise ValueError(
                    "vlmprune: saliency needs a SigLIP tower read at one layer with strategy 'full'; "
                    "use saliency='feature_norm'"
                )
            attn = self.vision_tower.vision_model.encoder.layers[self._vlmprune_layer].self_attn

            def grab(module, args, kwargs):
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                with torch.no_grad():
                    record["saliency"] = siglip_received(module, hidden)

            handles.append(attn.register_forward_pre_hook(grab, with_kwargs=True))
        if "pre_features" in needs:

            def grab_pre(module, args):  # per call: all crops at once, or one image's
                record.setdefault("pre_features", []).append(args[0].detach())

            handles.append(self.multi_modal_projector.register_forward_pre_hook(grab_pre))
        with hooks(handles):
            yield record

    def _vlmprune_signals(self, record) -> dict:
        """Captured per-crop (per-frame) signals -> {key: (C, N, ch)} over the batch's crops."""
        out = {}
        if "saliency" in record:
            out["saliency"] = record["saliency"].unsqueeze(-1)  # (C, N) -> (C, N, 1)
        if "pre_features" in record:
            out["pre_features"] = torch.cat(record["pre_features"]).float()  # (C, N, Dv)
        return out

    def _vlmprune_images(self, kwargs, record, embeds) -> list[dict]:
        if kwargs.get("pixel_values") is None:  # image embeddings: never pruned (no configuration)
            return [{} for _ in embeds]
        sizes = kwargs.get("image_sizes")
        signals, start, out = self._vlmprune_signals(record), 0, []
        tile = int(self.config.vision_config.image_size)  # the stock default size
        for i, crops in enumerate(_per_item(kwargs["pixel_values"])):
            size = torch.as_tensor(sizes[i]) if sizes is not None else torch.tensor([tile, tile])
            info = self._vlmprune_image_layout(size, crops)
            for key, values in signals.items():
                packed = self._vlmprune_pack_crops(values[start : start + crops], size)  # (N_content, ch)
                info[key] = packed[:, 0] if key == "saliency" else packed
            start += crops
            out.append(info)
        return out

    def _vlmprune_pack_crops(self, values: torch.Tensor, size, newline=None) -> torch.Tensor:
        """(C, N, ch) per-crop values of one image -> (P, ch), packed as the model packs features."""
        if values.shape[0] == 1:  # the base view only: the model appends its own newline
            return values[0] if newline is None else torch.cat([values[0], newline[None]])
        return self._merge_image_patch_embeddings(
            size.cpu(), values, image_newline=newline, strategy="spatial_unpad"
        )

    def _vlmprune_image_layout(self, size: torch.Tensor, crops: int) -> dict:
        n = self._vlmprune_side**2
        ones = torch.ones(crops, n, 1, dtype=torch.float64)
        packed = self._vlmprune_pack_crops(ones, size, torch.tensor([-1.0], dtype=torch.float64))[:, 0]
        layout = packed_layout(packed, self._vlmprune_side)  # (P,) -> content, regions
        return {"regions": layout.regions, "grid": layout.grid, "content": layout.content}

    def _vlmprune_videos(self, kwargs, record, embeds) -> list[dict]:
        pooled = -(-self._vlmprune_side // 2)  # ceil: the model's 2x2 pooling
        signals, start, out = self._vlmprune_signals(record), 0, []
        for frames in _per_item(kwargs["pixel_values_videos"]):
            layout = frames_layout(frames, pooled)
            info = {
                "regions": layout.regions,
                "grid": layout.grid,
                "content": layout.content,
                "kind": "video",
            }
            for key, values in signals.items():
                got = self.apply_pooling(values[start : start + frames])  # (F, N, ch) -> (F, p*p, ch)
                info[key] = got.reshape(-1) if key == "saliency" else got.reshape(-1, got.shape[-1])
            start += frames
            out.append(info)
        return out

    def _vlmprune_select_one(self, emb: torch.Tensor, info: dict, spec, text):
        """Selection over the content rows (newlines left out); keeping every one keeps the run whole."""
        content = info.get("content")
        if spec is None or content is None or spec.keep_count(content.numel()) >= content.numel():
            return emb
        return super()._vlmprune_select_one(emb[content.to(emb.device)], info, spec, text)
