"""LLaVA-NeXT under vLLM: vLLM's own ``LlavaNextForConditionalGeneration`` with pruned images.

Each image reaches the LLM as vLLM packs it: the base crop, then the high-resolution tiles
stitched into one grid, unpadded to the image's aspect ratio, with ``image_newline`` after each
row. The layout (content tokens, their source crop and patch, the regions: the base crop, then
each tile's part of the unpadded grid) is the HF adapter's (:func:`~vlmprune.adapters.llava_next.
anyres_layout`), so both engines select among the same N content tokens with the same signals:
the CLS query's attention and the keys of the CLIP feature layer per crop, the projector's input.

Keeping every content token leaves the image as stock (newlines included); otherwise the LLM
receives the K kept content tokens in packed order and no newline, as the HF session does.
Positions are compact: the 1-D RoPE numbers tokens by their slot in vLLM's sequence, as with
``positions="compact"`` (the family's default) in the HF session.
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.llava import LlavaDummyInputsBuilder
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from vlmprune.adapters.llava_next import anyres_layout, crop_signals
from vlmprune.integrations.vllm.common import SPEC_FIELD, PruningModel, PruningProcessor
from vlmprune.integrations.vllm.config import ConfigError, decode
from vlmprune.integrations.vllm.llava import ClipCapture, LlavaProcessorMixin

FAMILY = "llava_next"


def _layout(config, cache: dict, size) -> tuple:
    """:func:`anyres_layout` of an image of ``size`` (H, W), computed once per size in ``cache``."""
    key = tuple(int(v) for v in torch.as_tensor(size).tolist())
    if key not in cache:
        cache[key] = anyres_layout(config, key)
    return cache[key]


def _prunable(config) -> bool:
    """Whether the HF adapter prunes this model: a CLIP tower read at one layer, ``"default"``
    strategy (the processor refuses a configuration for any other; the model then runs stock)."""
    tower = getattr(config.vision_config, "model_type", None)
    strategy = config.vision_feature_select_strategy
    return (tower, strategy) == ("clip_vision_model", "default") and isinstance(
        config.vision_feature_layer, int
    )


class PrunedLlavaNextProcessor(LlavaProcessorMixin, LlavaNextMultiModalProcessor):
    def _vlmprune_spec(self, hf_kwargs):
        """As :class:`PruningProcessor`'s, refused (``ConfigError``) where the HF adapter refuses
        the model: a tower other than CLIP read at one layer with the ``"default"`` strategy."""
        spec = super()._vlmprune_spec(hf_kwargs)
        config = self.info.get_hf_config()
        if spec is not None and not _prunable(config):
            tower = getattr(config.vision_config, "model_type", None)
            raise ConfigError(
                f"vlmprune: {FAMILY} prunes CLIP towers read at one layer with the 'default' strategy, not "
                f"{tower!r} with vision_feature_layer={config.vision_feature_layer!r}, "
                f"strategy {config.vision_feature_select_strategy!r}"
            )
        return spec

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        """The stock updates, with each pruned image's run of P placeholders (N content tokens and
        the newlines) cut to its kept count K; an image that keeps all N stays stock."""
        from dataclasses import replace

        self._vlmprune_refuse_embeddings(mm_items, hf_processor_mm_kwargs)
        # the stock counts: PruningProcessor's cut would count the newlines among the N tokens
        stock = super(PruningProcessor, self)._get_prompt_updates(
            mm_items, hf_processor_mm_kwargs, out_mm_kwargs
        )
        config, cache = self.info.get_hf_config(), {}

        def wrap(update):
            def kept(item_idx: int):
                tokens = list(update.replacement(item_idx))  # one placeholder token repeated P times
                item = out_mm_kwargs["image"][item_idx]
                spec = decode(item[SPEC_FIELD].data) if SPEC_FIELD in item else None
                if spec is None:
                    return tokens
                n = int(_layout(config, cache, item["image_sizes"].data)[0].content.numel())
                k = spec.keep_count(n)
                return tokens if k >= n else tokens[:k]

            return replace(update, replacement=kept)

        return [wrap(u) if u.modality == "image" else u for u in stock]


class PrunedLlavaNextProcessingInfo(LlavaNextProcessingInfo):
    def get_mm_max_tokens_per_item(self, seq_len, mm_counts):
        # the unpruned count: the encoder cache must fit a request that keeps every token
        return {"image": self.get_max_image_tokens()}


@MULTIMODAL_REGISTRY.register_processor(
    PrunedLlavaNextProcessor, info=PrunedLlavaNextProcessingInfo, dummy_inputs=LlavaDummyInputsBuilder
)
class PrunedLlavaNextForConditionalGeneration(ClipCapture, PruningModel, LlavaNextForConditionalGeneration):
    """vLLM's LLaVA-NeXT with vlmprune's pre-LLM methods (CLIP towers, ``"default"`` strategy)."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._vlmprune_clip = False  # a model the HF adapter refuses runs stock
        if _prunable(self.config):
            self._vlmprune_clip_init(FAMILY)
        self._vlmprune_layouts: dict = {}

    def _vlmprune_images(self, kwargs, record, embeds) -> list[dict]:
        """Per image: its layout (``content`` (N,) among its P packed rows, regions, grid) and its
        content tokens' signals, read from its crops' rows of the one tower run (the crops as vLLM
        batched them, padding crops included)."""
        pixels, sizes = kwargs.get("pixel_values"), kwargs.get("image_sizes")
        if pixels is None or sizes is None:
            return [{} for _ in embeds]  # image embeddings: never pruned (the processor refuses)
        views = {k: record.get(k) for k in ("saliency", "keys", "pre_features")}
        out, start = [], 0
        for i, emb in enumerate(embeds):
            layout, source, n_crops = _layout(self.config, self._vlmprune_layouts, sizes[i])
            if layout.n_placeholders != emb.shape[0]:
                raise RuntimeError(
                    f"vlmprune: llava_next: image {i} has {emb.shape[0]} rows, its layout {layout.n_placeholders}"
                )
            info = {"regions": layout.regions, "grid": layout.grid, "content": layout.content}
            info.update(crop_signals(views, start, n_crops, source))
            out.append(info)
            start += int(pixels[i].shape[0])  # (crops, 3, h, w): this image's rows in the tower run
        return out

    def _vlmprune_select_one(self, emb: torch.Tensor, info: dict, spec, text):
        """(P, D) packed rows -> the stock rows when every content token is kept, else the K kept
        content rows (K, D), newlines dropped."""
        if spec is None:
            return emb
        content = info["content"].to(emb.device)
        n = content.numel()
        if spec.keep_count(n) >= n:
            return emb
        return super()._vlmprune_select_one(emb[content], info, spec, text)
