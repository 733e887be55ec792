"""InternVL (``InternVLForConditionalGeneration``, InternVL3 / 3.5) under vLLM: vLLM's own model for
that architecture (``InternS1ForConditionalGeneration``) with pruned images.

The geometry is the HF adapter's (:mod:`vlmprune.adapters.internvl`): an image is ``T`` tiles
(the dynamic tiles in raster order, then the thumbnail when ``T > 1``) of ``g x g`` tokens after
the 2x pixel shuffle; each tile is a region. Saliency is the CLS query's attention in the feature
layer (the InternViT layer whose output the projector reads), mean over heads, summed over each
pixel-shuffled 2x2 group; VisPruner's pre-projector features are the projector's input. The
prompt keeps ``<img>`` and ``</img>`` around the K kept ``<IMG_CONTEXT>`` placeholders, as the HF
session does. Positions are compact (1-D RoPE, numbered by slot in vLLM's sequence), the
family's default. Videos pass through unpruned, as in the HF session.
"""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager

import torch
from vllm.model_executor.models.interns1 import (
    InternS1DummyInputsBuilder,
    InternS1ForConditionalGeneration,
    InternS1MultiModalProcessor,
    InternS1ProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from vlmprune.adapters.base import feature_layer
from vlmprune.adapters.internvl import cls_attention, shuffled_sum
from vlmprune.core.errors import UnsupportedModelError
from vlmprune.core.types import Region
from vlmprune.integrations.vllm.common import SPEC_FIELD, PruningModel, PruningProcessor, hooks
from vlmprune.integrations.vllm.config import decode


class PrunedInternVLProcessingInfo(InternS1ProcessingInfo):
    def get_mm_max_tokens_per_item(self, seq_len, mm_counts):
        # the unpruned counts: the encoder cache must fit a request that keeps every token
        frames = self.get_num_frames_with_most_features(seq_len, mm_counts)
        per_frame = self.get_hf_processor().image_seq_length
        return {"image": self.get_max_image_tokens(), "video": frames * per_frame}


_FRAMES = threading.local()  # per processing call: the frame count of each video processed


class _FrameCounts(InternS1MultiModalProcessor):
    """Records each processed video's frame count, which the text of the images before it needs."""

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        out = super()._apply_hf_processor_main(mm_items, hf_kwargs)
        frames = out.get("video_num_patches")
        _FRAMES.counts = [] if frames is None else [int(f) for f in frames]
        return out


class PrunedInternVLProcessor(PruningProcessor, _FrameCounts):
    positions = ("compact",)

    def _vlmprune_ids(self) -> tuple[int, int, int]:
        """(``<IMG_CONTEXT>``, ``<img>``, ``</img>``) token ids."""
        hf = self.info.get_hf_processor()
        return int(hf.image_token_id), int(hf.start_image_token_id), int(hf.end_image_token_id)

    def _vlmprune_image_id(self) -> int:
        return self._vlmprune_ids()[0]

    def _vlmprune_media_ids(self) -> list[int]:
        video = self.info.get_hf_processor().video_token
        return [self._vlmprune_image_id(), int(self.info.get_tokenizer().convert_tokens_to_ids(video))]

    def _vlmprune_num_images(self, out) -> int:
        counts = out.get("image_num_patches")
        return 0 if counts is None else len(counts)

    def _vlmprune_texts(self, prompt, n_images: int, modality: str = "image", out=None) -> list[torch.Tensor]:
        """Per image (``out`` unused): the text token ids the HF session sees after its placeholders, i.e. the
        prompt with every ``<IMG_CONTEXT>`` written as ``<img></img>`` and every video as its
        ``Frame1: <img></img>`` lines (the placeholder runs left out), from that image's
        ``</img>`` on (all of it when the image has no mark)."""
        tokenizer = self.info.get_tokenizer()
        ids = list(prompt) if not isinstance(prompt, str) else tokenizer.encode(prompt)
        image, start, end = self._vlmprune_ids()
        video = self._vlmprune_media_ids()[1]
        frames = iter(getattr(_FRAMES, "counts", None) or [])
        text, marks = [], []
        for t in ids:
            if t == image:
                text.append(start)
                marks.append(len(text))  # where this image's run ends: its </img> follows
                text.append(end)
            elif t == video:
                lines = (f"Frame{i + 1}: <img></img>" for i in range(next(frames, 0)))
                text += tokenizer.encode("\n".join(lines), add_special_tokens=False)
            else:
                text.append(t)
        out = []
        for j in range(n_images):
            after = text[marks[j] :] if j < len(marks) else []
            out.append(torch.tensor(after or text, dtype=torch.long))
        return out

    def _get_mm_hashes(self, inputs):
        """With a text-reading method, every image's and video's cache key names all the prompt's
        items: an image's text holds the frame lines of the videos after it, so the items are
        processed (and cached) together."""
        hashes = super()._get_mm_hashes(inputs)
        spec = self._vlmprune_spec(inputs.hf_processor_mm_kwargs)
        if spec is None or not spec.method.needs_text or not {"image", "video"} <= set(hashes):
            return hashes
        digest = hashlib.sha256(repr(sorted(hashes.items())).encode()).hexdigest()[:16]
        return {m: [f"{h}-{digest}" for h in hs] for m, hs in hashes.items()}

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        """The stock updates, with each image's run of N ``<IMG_CONTEXT>`` cut to its kept count K
        (``<img>`` and ``</img>`` stay)."""
        self._vlmprune_refuse_embeddings(mm_items, hf_processor_mm_kwargs)
        stock = InternS1MultiModalProcessor._get_prompt_updates(
            self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs
        )
        image = self._vlmprune_image_id()
        return [_with_kept_run(u, out_mm_kwargs, image) if u.modality == "image" else u for u in stock]


def _with_kept_run(update, out_mm_kwargs, token: int):
    from dataclasses import replace

    from vllm.multimodal.processing import PromptUpdateDetails

    stock = update.replacement

    def kept(item_idx: int):
        details = stock(item_idx)
        item = out_mm_kwargs["image"][item_idx]
        spec = decode(item[SPEC_FIELD].data) if SPEC_FIELD in item else None
        full = list(details.full)
        n = full.count(token)  # one run: <img> <IMG_CONTEXT> x N </img>
        if spec is None or n == 0:
            return details
        first = full.index(token)
        cut = full[: first + spec.keep_count(n)] + full[first + n :]
        return PromptUpdateDetails.select_token_id(cut, token)

    return replace(update, replacement=kept)


@MULTIMODAL_REGISTRY.register_processor(
    PrunedInternVLProcessor, info=PrunedInternVLProcessingInfo, dummy_inputs=InternS1DummyInputsBuilder
)
class PrunedInternVLForConditionalGeneration(PruningModel, InternS1ForConditionalGeneration):
    """vLLM's InternVL (HF format) with vlmprune's pre-LLM methods on images."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        config = self.config
        if config.vision_feature_layer != -1:  # vLLM's model reads the last layer whatever the config says
            raise UnsupportedModelError(
                f"internvl: vision_feature_layer={config.vision_feature_layer!r} is not supported under vLLM "
                "(its InternVL model reads the tower's last layer); run with VLLM_PLUGINS not naming vlmprune"
            )
        self._vlmprune_layer = feature_layer(config, "default", "internvl")
        vision = config.vision_config
        self._vlmprune_patches = int(vision.image_size[0]) // int(vision.patch_size[0])  # per tile side
        self._vlmprune_side = int(self._vlmprune_patches * config.downsample_ratio)  # g: tokens per tile side

    @contextmanager
    def _vlmprune_capture(self, needs: set[str]):
        """Hooks on the tower's feature layer (CLS attention, (V, g*g) per batch of V tiles) and
        the projector's input (pre-features, (V, g*g, 4 Dv))."""
        record: dict = {}
        handles = []
        if "saliency" in needs:
            attn = self.vision_tower.encoder.layer[self._vlmprune_layer].attention

            def grab(module, args):
                with torch.no_grad():
                    sal = cls_attention(module, args[0])[:, 1:]  # (V, T) -> (V, P*P), CLS dropped
                    record["saliency"] = shuffled_sum(
                        sal, self._vlmprune_patches, self.pixel_shuffle, self.downsample_ratio
                    )

            handles.append(attn.register_forward_pre_hook(grab))
        if "pre_features" in needs:

            def grab_pre(module, args):
                record["pre_features"] = args[0].detach()

            handles.append(self.multi_modal_projector.register_forward_pre_hook(grab_pre))
        with hooks(handles):
            yield record

    def _vlmprune_images(self, kwargs, record, embeds) -> list[dict]:
        """Per image (N = T g² rows): its T tiles as regions, and its tiles' signals."""
        g = self._vlmprune_side
        per_tile = g * g
        out, start = [], 0
        for emb in embeds:
            n = int(emb.shape[0])
            tiles = n // per_tile
            regions = [Region(torch.arange(i * per_tile, (i + 1) * per_tile), (g, g)) for i in range(tiles)]
            info = {"regions": regions, "grid": (g, g)}
            for key in ("saliency", "pre_features"):
                if key in record:
                    rows = record[key][start : start + tiles]  # (T, g*g) or (T, g*g, Dv)
                    info[key] = rows.reshape(-1, *rows.shape[2:])
            out.append(info)
            start += tiles
        return out
