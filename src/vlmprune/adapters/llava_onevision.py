"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): a SigLIP tower without CLS, a
Qwen2 language model and anyres-max tiling.

One image in the LLM sequence, as the model's own ``pack_image_features`` lays it out: the base
view (``s x s`` tokens: the image squashed to the tower's square), then the high-resolution grid
(the tiles stitched, padding rows and columns removed, shrunk bilinearly when it holds more than
``anyres_max_M`` tiles' worth of tokens) with one ``image_newline`` after each row. The base view
and the high-resolution grid are the image's two regions; the newlines are dropped when a pre-LLM
stage prunes (as on LLaVA-NeXT).

Signals follow the same packing: each tile's per-patch saliency and pre-projector features are
packed by ``pack_image_features`` itself, interpolation included, so each content token carries
the signal of the features it holds. Saliency: the attention each patch receives in the SigLIP
layer that produced the features (``vision_feature_layer``), mean over heads and queries (there
is no CLS token), or ``feature_norm``. Positions: 1-D RoPE, ``"compact"`` (default) or
``"original"``. Videos: one budget per video, its frames (``p x p`` pooled tokens) the regions,
the trailing newline dropped when a pre-LLM stage prunes.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from vlmprune.adapters.base import (
    Adapter,
    ImageLayout,
    ImagesOnlyProcessor,
    InstanceAttributeHook,
    TokenGeometry,
    edges_to_boxes,
    feature_layer,
    placeholder_runs,
    projector_input_hook,
    register_adapter,
)
from vlmprune.adapters.llava import clip_vision_shape
from vlmprune.adapters.signals import on_attention_calls, received
from vlmprune.core.errors import UnsupportedModelError
from vlmprune.core.flops import VisionShape
from vlmprune.core.types import Region

ONEVISION_SPECIAL = ("<pad>", "<s>", "</s>", "<unk>", "<image>", "<video>")


def attention_received(attn, hidden: torch.Tensor, calls=()) -> torch.Tensor:
    """(B, N, D) input of a SigLIP attention module -> (B, N): the attention each patch receives,
    softmax(q k^T * scale) averaged over heads and queries (float32), in fused attention passes
    (:mod:`vlmprune.adapters.signals`). ``calls``: the module's own attention call recorded with
    its log-sum-exp (one fused pass then), else ``q``/``k`` are recomputed in float32."""
    b, n, _ = hidden.shape
    if len(calls) == 1 and tuple(calls[0][0].shape[:3]) == (b, attn.num_heads, n):
        q, k, scale, lse = calls[0]
        return received(q, k, scale, lse).sum(1) / (attn.num_heads * n)  # (B, H, N) -> (B, N)
    x = hidden.float()

    def proj(lin):  # (B, N, D) -> (B, H, N, hd)
        y = torch.nn.functional.linear(x, lin.weight.float(), None if lin.bias is None else lin.bias.float())
        return y.view(b, n, attn.num_heads, -1).transpose(1, 2)

    return received(proj(attn.q_proj), proj(attn.k_proj), attn.scale).sum(1) / (attn.num_heads * n)


def _grid_tokens(image_size, pinpoints, tile: int, side: int, aspect: str) -> tuple[int, int]:
    """(rows, cols) of the high-resolution grid of an image of ``image_size`` (H, W), as the model
    packs it (stitch, unpad, shrink past ``anyres_max_M``)."""
    from transformers.models.llava_onevision.modeling_llava_onevision import (
        get_anyres_image_grid_shape,
        unpad_image,
    )

    nph, npw = get_anyres_image_grid_shape(tuple(int(v) for v in image_size), pinpoints, tile)
    rows, cols = unpad_image(torch.zeros(1, nph * side, npw * side), torch.as_tensor(image_size)).shape[1:]
    ratio = math.sqrt(rows * cols / (int(aspect.removeprefix("anyres_max_")) * side**2))
    if ratio > 1.1:
        rows, cols = int(rows // ratio), int(cols // ratio)
    return int(rows), int(cols)


def packed_layout(packed: torch.Tensor, side: int) -> ImageLayout:
    """The layout of one image from its packing of ones with a newline of -1 ((P,) float): the
    base view's ``side x side`` tokens, then the high-resolution grid's rows, each row's newline
    (the -1 entries) left out of the content."""
    n = side * side
    content = torch.nonzero(packed > -0.5).flatten().cpu()
    regions = [Region(torch.arange(n), (side, side))]
    rows = int((packed < -0.5).sum())
    hi = content.numel() - n
    if hi > 0:
        regions.append(Region(torch.arange(n, n + hi), (rows, hi // rows)))
    return ImageLayout(int(packed.numel()), content, regions, (side, side))


def frames_layout(frames: int, pooled: int) -> ImageLayout:
    """The layout of one video of ``frames`` frames of ``pooled x pooled`` tokens: frame-major,
    then one newline (not content); each frame is a region."""
    per = pooled * pooled
    regions = [Region(torch.arange(f * per, (f + 1) * per), (pooled, pooled)) for f in range(frames)]
    return ImageLayout(
        frames * per + 1, torch.arange(frames * per), regions, (frames, pooled, pooled), "video"
    )


@dataclass(kw_only=True)
class OnevisionImageProcessor(ImagesOnlyProcessor):
    """A LLaVA-OneVision processor for images without torchvision: the stock PIL image processor,
    then ``<image>`` once per token (base view, high-resolution grid, newlines), as the stock one."""

    pinpoints: list
    side: int  # tokens per tile side
    patch: int  # pixels per token side
    aspect: str = "anyres_max_9"
    image_token: ClassVar[str] = "<image>"

    def count(self, image_size) -> int:
        """Placeholders of one image of ``image_size`` (H, W)."""
        rows, cols = _grid_tokens(image_size, self.pinpoints, self.side * self.patch, self.side, self.aspect)
        return self.side * self.side + rows * (cols + 1)

    def encode(self, images):
        img = self.image_processor(images, return_tensors="pt")
        counts = [self.count(size) for size in img["image_sizes"].tolist()]
        return {"pixel_values": img["pixel_values"], "image_sizes": img["image_sizes"]}, counts


@register_adapter
class LlavaOnevisionAdapter(Adapter):
    family = "llava_onevision"
    label = "LLaVA-OneVision"
    model_types = ("llava_onevision",)
    model_class = "LlavaOnevisionForConditionalGeneration"
    config_class = "LlavaOnevisionConfig"
    archs = ("llava-onevision-7b",)
    tiny_name = "tiny-llava-onevision"
    image_token = "<image>"
    special_tokens = {"<image>": "image_token_id", "<video>": "video_token_id"}
    tiny_special = ONEVISION_SPECIAL
    default_positions = "compact"
    supports_compact = True
    default_saliency = "attention_received"
    saliency_signals = ("attention_received", "feature_norm")
    saliency_doc = "attention received per patch in the SigLIP feature layer (no CLS), or `feature_norm`"
    prunes_video = True
    demo_size = {"image_size": 112}
    bench_size = {"image_size": 168}
    bench_image = (336, 336)
    bench_budgets = (729, (192, 128, 64))

    def __init__(self, model, saliency="auto"):
        super().__init__(model, saliency)
        cfg, vcfg = self.config, self.config.vision_config
        if getattr(vcfg, "model_type", "") != "siglip_vision_model":
            raise UnsupportedModelError(
                f"{self.family}: only SigLIP towers are supported, got {vcfg.model_type!r}"
            )
        self.saliency_layer = feature_layer(cfg, "full", self.family)
        self.side = vcfg.image_size // vcfg.patch_size

    # -- vision capture ----------------------------------------------------------------------
    def vision_module(self):
        return self.base.vision_tower

    def vision_hooks(self, on_record, needs):
        handles = []
        if "saliency" in needs and self.saliency == "attention_received":
            tower = self.base.vision_tower
            tower = getattr(tower, "vision_model", tower)
            attn = tower.encoder.layers[self.saliency_layer].self_attn

            def grab_received(args, kwargs, calls):
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                with torch.no_grad():
                    on_record().raw.setdefault("saliency", []).append(attention_received(attn, hidden, calls))

            handles += on_attention_calls(attn, grab_received)
        if "pre_features" in needs:
            handles.append(projector_input_hook(self.base.multi_modal_projector, on_record))
        original = self.base.get_image_features  # generate() passes mm_encoder_outputs without sizes

        @functools.wraps(original)  # generate() inspects this signature to route pixel_values
        def get_image_features(*args, **kwargs):
            sizes = kwargs.get("image_sizes", args[1] if len(args) > 1 else None)
            out = original(*args, **kwargs)
            if on_record() is not None and sizes is not None:
                on_record().raw["image_sizes"] = torch.as_tensor(sizes).detach().cpu()
            return out

        handles.append(InstanceAttributeHook(self.base, "get_image_features", get_image_features))
        original_video = self.base.get_video_features

        @functools.wraps(original_video)
        def get_video_features(*args, **kwargs):
            pixels = kwargs.get("pixel_values_videos", args[0] if args else None)
            out = original_video(*args, **kwargs)
            if on_record() is not None and pixels is not None:
                on_record().raw["video_frames"] = (int(pixels.shape[0]), int(pixels.shape[1]))
            return out

        handles.append(InstanceAttributeHook(self.base, "get_video_features", get_video_features))
        return handles

    # -- layout -------------------------------------------------------------------------------
    def media_tokens(self) -> dict[str, int]:
        return {"image": self.image_token_id, "video": int(self.config.video_token_id)}

    def media_layouts(self, kind, call, record):
        return self.image_layouts(call, record) if kind == "image" else self.video_layouts(call, record)

    def video_layouts(self, call, record):
        """One layout per video: ``F`` frames of ``p x p`` tokens (the tower's grid, pooled 2x2 by the
        model), frame-major, then one newline; each frame is a region. ``F`` is read from the
        video's placeholder run (``F p² + 1`` tokens)."""
        ids = call.get("input_ids")
        if ids is None:
            raise ValueError("llava_onevision: `input_ids` are required to prune videos")
        p = -(-self.side // 2)  # ceil: the model's pooling
        per = p * p
        run = record.runs[-1] if record is not None and record.runs else {}
        known = run.get("video_frames")
        total = known[0] * (known[1] * per + 1) if known else None
        return [
            frames_layout((n - 1) // per, p)
            for n in placeholder_runs(ids, int(self.config.video_token_id), total)
        ]

    def _num_crops(self, size) -> int:
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        tile = self.config.vision_config.image_size
        return int(image_size_to_num_patches(size, self.config.image_grid_pinpoints, tile))

    def _pack(self, per_crop: torch.Tensor, size, newline=None) -> torch.Tensor:
        """(C, N, ch) per-crop values of one image -> (P, ch) as the model packs them."""
        packed, _ = self.base.pack_image_features(
            [per_crop], torch.as_tensor(size)[None], newline, self.config.vision_aspect_ratio
        )
        return packed[0]

    def _layout(self, size) -> ImageLayout:
        n = self.side * self.side
        ones = torch.ones(self._num_crops(size), n, 1, dtype=torch.float64)
        return packed_layout(
            self._pack(ones, size, torch.tensor([-1.0], dtype=torch.float64))[:, 0], self.side
        )

    def image_layouts(self, call, record):
        sizes = call.get("image_sizes")
        if sizes is None and record is not None and record.runs:
            sizes = record.runs[0].get("image_sizes")
        if sizes is None:
            raise ValueError("llava_onevision: `image_sizes` is required to prune images")
        self._sizes = [tuple(int(v) for v in size) for size in torch.as_tensor(sizes).cpu().tolist()]
        return [self._layout(size) for size in self._sizes]

    def _video_signals(self, run, index, layout) -> dict:
        """Video ``index``'s frames' signals, pooled 2x2 as the model pools the frames' features."""
        frames = len(layout.regions)
        out = {}
        for key in ("saliency", "pre_features"):
            if run.get(key):
                per_frame = torch.cat(run[key])[index * frames : (index + 1) * frames]  # (F, N[, Dv])
                values = per_frame.unsqueeze(-1) if key == "saliency" else per_frame
                pooled = self.base.apply_pooling(values.float())  # (F, p*p, ch)
                out[key] = pooled.reshape(-1) if key == "saliency" else pooled.reshape(-1, pooled.shape[-1])
        return out

    def image_signals(self, record, index, layout):
        if layout.kind == "video":
            return self._video_signals(
                record.runs[-1] if record is not None and record.runs else {}, index, layout
            )
        start = sum(self._num_crops(size) for size in self._sizes[:index])
        n_crops = self._num_crops(self._sizes[index])
        out = {}
        run = record.runs[0] if record is not None and record.runs else {}  # images are encoded before videos
        for key in ("saliency", "pre_features"):
            got = run.get(key)
            if got:
                per_crop = torch.cat(got)[start : start + n_crops]  # (C, N) or (C, N, Dv)
                values = per_crop.unsqueeze(-1) if key == "saliency" else per_crop
                packed = self._pack(values.float(), self._sizes[index])  # (N_content, ch)
                out[key] = packed[:, 0] if key == "saliency" else packed
        return out

    # -- geometry ------------------------------------------------------------------------------
    def token_geometry(self, image_size, processor, selection=None) -> TokenGeometry:
        """Base view: the image squashed to the tower's square. High-resolution grid: the canvas
        rows and columns the model keeps after unpadding (found by unpadding an index map with the
        model's own ``unpad_image``), split evenly into the (possibly shrunk) grid, mapped back
        through the processor's resize-and-paste onto the pinpoint canvas."""
        from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
        from transformers.models.llava_onevision.modeling_llava_onevision import unpad_image

        width, height = image_size
        layout = self._layout((height, width))
        g = self.side
        base = edges_to_boxes(np.arange(g + 1) * width / g, np.arange(g + 1) * height / g, width, height)
        boxes, grids = [base], [(g, g)]
        if len(layout.regions) > 1:
            rows, cols = layout.regions[1].grid
            pins = [tuple(p) for p in self.config.image_grid_pinpoints]
            best_h, best_w = select_best_resolution((height, width), pins)
            new_h, new_w = get_patch_output_size(
                np.zeros((height, width, 1), np.uint8), (best_h, best_w), "channels_last"
            )
            cell = self.config.vision_config.image_size / g  # canvas px per feature cell
            fh, fw = round(best_h / cell), round(best_w / cell)
            index = torch.arange(fh * fw, dtype=torch.float64).view(1, fh, fw)
            kept = unpad_image(index, torch.tensor([height, width]))[0]  # the cells the model keeps
            r0, c0 = int(kept[0, 0]) // fw, int(kept[0, 0]) % fw
            y = (r0 + np.arange(rows + 1) * kept.shape[0] / rows) * cell - (best_h - new_h) // 2
            x = (c0 + np.arange(cols + 1) * kept.shape[1] / cols) * cell - (best_w - new_w) // 2
            boxes.append(edges_to_boxes(x * width / new_w, y * height / new_h, width, height))
            grids.append((rows, cols))
        view = np.concatenate([np.full(len(b), i, np.int64) for i, b in enumerate(boxes)])
        text = f"{self.label}: base view {g}x{g} tokens (image squashed to the tower's square)"
        if len(grids) > 1:
            text += f" + high-res grid {grids[1][0]}x{grids[1][1]} tokens (tiles stitched, padding removed)"
        views = ("base", "high-res")[: len(grids)]
        return TokenGeometry(
            np.concatenate(boxes).astype(np.float64), view, views, tuple(grids), (width, height), text
        )

    # -- the family, for tools -------------------------------------------------------------------
    @classmethod
    def prompt(cls, question: str, n_images: int = 1) -> str:
        img = "<image>\n" * n_images
        return f"<|im_start|>user {img}{question}<|im_end|><|im_start|>assistant\n"

    @classmethod
    def tiny_prompt(cls, question: str, n_images: int = 1) -> str:
        return "USER: " + "<image>\n" * n_images + f"{question} ASSISTANT:"

    @classmethod
    def tiny_video(cls, processor, videos: int, frames: int, seed: int = 0):
        """``(placeholder text, tensors)`` of ``videos`` random videos of ``frames`` frames at the
        tower's size: ``pixel_values_videos`` (videos, frames, 3, s, s), ``<video>`` once per pooled
        token and once for the newline."""
        s = processor.side * processor.patch
        pooled = -(-processor.side // 2)
        g = torch.Generator().manual_seed(seed)
        tensors = {"pixel_values_videos": torch.randn(videos, frames, 3, s, s, generator=g)}
        return "<video>" * (frames * pooled * pooled + 1), tensors

    @classmethod
    def vision_shape(cls, config) -> VisionShape:
        return clip_vision_shape(config, cls_token=False)  # SigLIP: no CLS

    @classmethod
    def vision_grids(cls, config, inputs) -> dict:
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        tile = int(config.vision_config.image_size)
        crops = [
            image_size_to_num_patches(s, config.image_grid_pinpoints, tile)
            for s in inputs["image_sizes"].tolist()
        ]
        return {"num_crops": int(sum(crops))}

    @classmethod
    def tiny_config(cls, tok, text: dict, attn: str, image_size: int = 56):
        """SigLIP tower (2 layers, patch 14, no pooling head), Qwen2 decoder, pinpoints up to 2x2
        tiles, ``anyres_max_2`` so that the 2x2 grid is shrunk (the bilinear path is exercised)."""
        from transformers import LlavaOnevisionConfig

        s = image_size
        vision = dict(
            model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2
        )
        vision.update(num_attention_heads=4, image_size=s, patch_size=14, vision_use_head=False)
        return LlavaOnevisionConfig(
            vision_config=vision,
            text_config={**text, "model_type": "qwen2"},
            image_token_id=tok.convert_tokens_to_ids("<image>"),
            video_token_id=tok.convert_tokens_to_ids("<video>"),
            image_grid_pinpoints=[[s, 2 * s], [2 * s, s], [2 * s, 2 * s]],
            vision_aspect_ratio="anyres_max_2",
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            attn_implementation=attn,
        )

    @classmethod
    def tiny_init(cls, model) -> None:
        with torch.no_grad():  # the stock init leaves image_newline at zero: give it a value so it matters
            model.model.image_newline.normal_()

    @classmethod
    def tiny_processor(cls, tok, image_size: int = 56, pinpoints=None, chat_template: str | None = None):
        from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
            LlavaOnevisionImageProcessorPil,
        )

        s = image_size
        pins = pinpoints or [[s, 2 * s], [2 * s, s], [2 * s, 2 * s]]
        ip = LlavaOnevisionImageProcessorPil(size={"height": s, "width": s}, image_grid_pinpoints=pins)
        return OnevisionImageProcessor(
            image_processor=ip,
            tokenizer=tok,
            pinpoints=pins,
            side=s // 14,
            patch=14,
            aspect="anyres_max_2",
            chat_template=chat_template,
        )

    @classmethod
    def fallback_processor(cls, path, config, tokenizer, chat_template):
        """The processor of a checkpoint directory when the stock one cannot be built (no torchvision)."""
        from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
            LlavaOnevisionImageProcessorPil,
        )

        ip = LlavaOnevisionImageProcessorPil.from_pretrained(path, local_files_only=True)
        v = config.vision_config
        side, patch = int(v.image_size) // int(v.patch_size), int(v.patch_size)
        pins = [list(p) for p in config.image_grid_pinpoints]
        aspect = config.vision_aspect_ratio
        return OnevisionImageProcessor(
            image_processor=ip,
            tokenizer=tokenizer,
            pinpoints=pins,
            side=side,
            patch=patch,
            aspect=aspect,
            chat_template=chat_template,
        )

    @classmethod
    def processor_size(cls, config, image_size=None) -> dict:
        return {"image_size": 56 if config is None else int(config.vision_config.image_size)}

    @classmethod
    def default_bench_image(cls, config) -> tuple[int, int]:
        crop = int(config.vision_config.image_size)
        return 2 * crop, 2 * crop

    @classmethod
    def bench_vision(cls) -> dict:
        return {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4}

    @classmethod
    def shrink_arch(cls, d: dict) -> None:
        """Shrink a real-size config dict in place for CPU smoke tests (same classes, feature layer
        and strategy, SigLIP patch 14 without CLS, anyres-max tiling, the real vocabulary)."""
        scale = 56 / d["vision_config"]["image_size"]
        siglip = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_hidden_layers": 3,
        }
        d["vision_config"].update(siglip, image_size=56, patch_size=14)
        text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4}
        d["text_config"].update(text, num_key_value_heads=2)
        d["image_grid_pinpoints"] = [
            [round(h * scale), round(w * scale)] for h, w in d["image_grid_pinpoints"]
        ]
