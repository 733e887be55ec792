"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP tower, CLS dropped, MLP projector, Llama.

Visual tokens: ``(image_size // patch_size)**2`` per image (576 at 336 px / patch 14), raster
order, one contiguous ``<image>`` run each. Saliency: the CLS query's attention in the vision layer
that produced the selected features (methods.md), recomputed from that layer's input.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vlmprune.adapters.base import (
    Adapter,
    ImageLayout,
    VisionRecord,
    edges_to_boxes,
    projector_input_hook,
    register_adapter,
    single_view,
)
from vlmprune.adapters.signals import cls_attention as cls_query_attention
from vlmprune.core.errors import UnsupportedModelError
from vlmprune.core.flops import VisionShape
from vlmprune.core.types import Region

CLIP_SPECIAL = ("<pad>", "<s>", "</s>", "<unk>", "<image>")


def cls_attention(attn, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS-query attention of a CLIP attention module.

    ``hidden`` (V, T, Dv): the module's input (after ``layer_norm1``), CLS at position 0.
    Returns ``(saliency, keys)``: saliency (V, T) = softmax(q_cls k^T * scale) mean over heads
    (row 0 of the eager attention probabilities, all T columns), keys (V, T, hd) mean over heads.
    Cost O(V T Dv): one query row instead of T.
    """
    h = hidden.float()
    n_views, t, _ = h.shape
    heads, hd = attn.num_heads, attn.head_dim
    w_q, b_q = attn.q_proj.weight.float(), attn.q_proj.bias
    w_k, b_k = attn.k_proj.weight.float(), attn.k_proj.bias
    q = torch.nn.functional.linear(h[:, :1], w_q, None if b_q is None else b_q.float())  # (V, 1, Dv)
    k = torch.nn.functional.linear(h, w_k, None if b_k is None else b_k.float())  # (V, T, Dv)
    q = q.view(n_views, 1, heads, hd).transpose(1, 2)  # (V, H, 1, hd)
    k = k.view(n_views, t, heads, hd).transpose(1, 2)  # (V, H, T, hd)
    return cls_query_attention(q, k, attn.scale)  # (V, T), (V, T, hd)


def clip_vision_shape(config, cls_token: bool = True, connector_out: int | None = None) -> VisionShape:
    """FLOPs shape of a ViT tower (CLIP, SigLIP, InternViT: ``image_size`` and ``patch_size`` ints or
    ``[h, w]``) with its projector (hidden -> d -> ``connector_out``, d by default, per patch)."""
    vision = config.vision_config
    d = int(config.get_text_config().hidden_size)

    def first(x):
        return int(x[0]) if isinstance(x, (list, tuple)) else int(x)

    return VisionShape(
        num_layers=int(vision.num_hidden_layers),
        hidden=int(vision.hidden_size),
        intermediate=int(vision.intermediate_size),
        num_heads=int(vision.num_attention_heads),
        patch_size=first(vision.patch_size),
        in_channels=int(getattr(vision, "num_channels", 3)),
        image_size=first(vision.image_size),
        cls_token=cls_token,
        connector_hidden=d,
        connector_out=d if connector_out is None else connector_out,
        feature_layer=getattr(config, "vision_feature_layer", None),
    )


def clip_tiny_vision(image_size: int) -> dict:
    """CLIP vision tower of the tiny test models: 3 layers, d=32, patch 14, with CLS."""
    return dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=14,
        projection_dim=32,
    )


def clip_processor(cls, image_processor, tok, chat_template: str | None = None):
    """``cls`` (the family's stock processor class) for a CLIP tower with patch 14 and a CLS
    token (``"default"`` strategy), ``<image>`` placeholders."""
    return cls(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )


class ClipTowerMixin:
    """Hooks and family facts shared by the CLIP-tower families (LLaVA, LLaVA-NeXT)."""

    image_token = "<image>"
    special_tokens = {"<image>": "image_token_id"}
    tiny_special = CLIP_SPECIAL
    default_positions = "compact"
    supports_compact = True
    saliency_doc = "CLS attention of the feature layer (recomputed, = eager to 1e-5)"

    def _check_clip(self):
        vcfg = self.config.vision_config
        if getattr(vcfg, "model_type", "") != "clip_vision_model":
            raise UnsupportedModelError(
                f"{self.family}: only CLIP vision towers are supported, got {getattr(vcfg, 'model_type', None)!r}"
            )
        strategy = self.config.vision_feature_select_strategy
        if strategy != "default":
            raise UnsupportedModelError(
                f"{self.family}: vision_feature_select_strategy={strategy!r} is not supported (only 'default')"
            )
        layer = self.config.vision_feature_layer
        if not isinstance(layer, int):
            raise UnsupportedModelError(
                f"{self.family}: a list vision_feature_layer={layer!r} is not supported"
            )
        n_states = vcfg.num_hidden_layers + 1  # hidden_states: embeddings + one per layer
        self.saliency_layer = (layer if layer >= 0 else layer + n_states) - 1
        self.side = vcfg.image_size // vcfg.patch_size

    def vision_module(self):
        return self.base.vision_tower

    def vision_hooks(self, on_record, needs):
        handles = []
        if needs & {"saliency", "keys"} and self.saliency == "cls_attention":
            tower = self.base.vision_tower
            tower = getattr(tower, "vision_model", tower)  # 5.x CLIPVisionModel holds the encoder itself
            attn = tower.encoder.layers[self.saliency_layer].self_attn

            def grab_cls(module, args, kwargs):
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                with torch.no_grad():
                    sal, keys = cls_attention(module, hidden)
                rec = on_record().raw
                rec.setdefault("saliency", []).append(sal)
                rec.setdefault("keys", []).append(keys)

            handles.append(attn.register_forward_pre_hook(grab_cls, with_kwargs=True))
        if "pre_features" in needs:
            handles.append(projector_input_hook(self.base.multi_modal_projector, on_record))
        return handles

    def _views(self, record: VisionRecord, key: str):
        got = record.raw.get(key) if record is not None else None
        return None if not got else torch.cat(got, dim=0)

    @classmethod
    def prompt(cls, question: str, n_images: int = 1) -> str:
        return "USER: " + "<image>\n" * n_images + f"{question} ASSISTANT:"

    tiny_prompt = prompt

    @classmethod
    def vision_grids(cls, config, inputs) -> dict:
        """Crops the tower encodes: (B, C, H, W) single crops or (B, crops, C, H, W) anyres."""
        pv = inputs["pixel_values"]
        return {"num_crops": int(pv.shape[0] * (pv.shape[1] if pv.dim() == 5 else 1))}

    @classmethod
    def vision_shape(cls, config) -> VisionShape:
        return clip_vision_shape(config)

    @classmethod
    def bench_vision(cls) -> dict:
        return {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4}

    @classmethod
    def shrink_arch(cls, d: dict) -> None:
        """Shrink a real-size config dict in place for CPU smoke tests (same classes, feature layer,
        CLS + patch 14 tower, the real vocabulary)."""
        clip = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3}
        d["vision_config"].update(clip, image_size=56, patch_size=14, projection_dim=16)
        text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4}
        d["text_config"].update(text, num_key_value_heads=4, head_dim=16)


def _crop_offset(resized: int, crop: int) -> int:
    """Top (or left) of the stock centre crop; negative when the crop pads."""
    if resized >= crop:
        return (resized - crop) // 2
    return -math.ceil((crop - resized) / 2)


def _size(value) -> dict:
    """A transformers size (dict, SizeDict or int) as a plain dict without None values."""
    if value is None:
        return {}
    if isinstance(value, int):
        return {"shortest_edge": int(value)}
    if not isinstance(value, dict):
        value = {k: getattr(value, k, None) for k in ("height", "width", "shortest_edge", "longest_edge")}
    return {k: int(v) for k, v in value.items() if v is not None}


def _resized_hw(height: int, width: int, size: dict) -> tuple[int, int]:
    from transformers.image_transforms import get_resize_output_image_size

    if "height" in size and "width" in size:
        return size["height"], size["width"]
    if "shortest_edge" in size and "longest_edge" not in size:
        blank = np.zeros((height, width, 1), np.uint8)
        return tuple(
            get_resize_output_image_size(
                blank, size["shortest_edge"], default_to_square=False, input_data_format="channels_last"
            )
        )
    raise ValueError(f"unsupported image processor size {size!r} for CLIP crops")


def clip_crop_geometry(image_size, ip, patch: int):
    """LLaVA-1.5's single crop: optional pad to square, resize, centre crop (the stock CLIP image
    processor ``ip``), one token per ``patch`` px of the crop. Returns ``(boxes, (gh, gw), text)``."""
    width, height = image_size
    cw, ch, px, py = width, height, 0, 0  # canvas after the optional pad to square, image at (px, py)
    if getattr(ip, "do_pad", False) and width != height:
        side = max(width, height)
        px, py = (side - width) // 2, (side - height) // 2
        cw = ch = side
    rh, rw = _resized_hw(ch, cw, _size(ip.size)) if getattr(ip, "do_resize", True) else (ch, cw)
    crop = _size(getattr(ip, "crop_size", None))
    if getattr(ip, "do_center_crop", True) and crop:
        kh, kw = crop["height"], crop["width"]
        top, left = _crop_offset(rh, kh), _crop_offset(rw, kw)
    else:
        kh, kw, top, left = rh, rw, 0, 0
    gh, gw = kh // patch, kw // patch
    # crop pixel -> resized pixel (+ offset) -> canvas pixel (* canvas / resized) -> image (- pad)
    xs = (np.arange(gw + 1) * patch + left) * (cw / rw) - px
    ys = (np.arange(gh + 1) * patch + top) * (ch / rh) - py
    pad = "pad to square, " if px or py else ""
    text = f"{pad}resize to {rw}x{rh}, centre crop {kw}x{kh}, {gh}x{gw} tokens of {patch} px"
    return edges_to_boxes(xs, ys, width, height), (gh, gw), text


@register_adapter
class LlavaAdapter(ClipTowerMixin, Adapter):
    family = "llava"
    label = "LLaVA-1.5"
    model_types = ("llava",)
    model_class = "LlavaForConditionalGeneration"
    config_class = "LlavaConfig"
    archs = ("llava-1.5-7b",)
    tiny_name = "tiny-llava"
    test_image = (84, 84)
    #: the built-in random model's size: LLaVA-1.5's 336 px / 576 tokens
    demo_size = {"image_size": 336}
    bench_size = {"image_size": 336}
    bench_image = (336, 336)
    #: (reference visual tokens, budgets) of the bench defaults (the LLaVA-1.5 papers' budgets)
    bench_budgets = (576, (192, 128, 64))
    #: headline FLOPs table rows: (arch, label, visual tokens, budgets, crops)
    flops_table = (("llava-1.5-7b", "LLaVA-1.5-7B", 576, (192, 128, 64), 1),)

    def __init__(self, model, saliency="auto"):
        super().__init__(model, saliency)
        self._check_clip()

    def image_layouts(self, call, record):
        n = self.side * self.side
        ids = call["input_ids"]
        n_images = int((ids == self.image_token_id).sum()) // n
        if record is not None and "encoded" in record.raw:  # the tower's count (generate may repeat rows)
            n_images = record.raw["encoded"]
        region = Region(torch.arange(n), (self.side, self.side))
        return [ImageLayout(n, torch.arange(n), [region], (self.side, self.side)) for _ in range(n_images)]

    def image_signals(self, record, index, layout):
        out = {}
        for key in ("saliency", "keys"):
            views = self._views(record, key)
            if views is not None:
                out[key] = views[index, 1:]  # drop the CLS column/row: (T,) -> (N,)
        pre = self._views(record, "pre_features")
        if pre is not None:
            out["pre_features"] = pre[index]
        return out

    def token_geometry(self, image_size, processor, selection=None):
        ip = getattr(processor, "image_processor", processor)
        boxes, grid, text = clip_crop_geometry(image_size, ip, int(self.config.vision_config.patch_size))
        return single_view(boxes, grid, tuple(image_size), f"{self.label}: {text}")

    # -- the tiny test model ------------------------------------------------------------------
    @classmethod
    def tiny_config(cls, tok, text: dict, attn: str, image_size: int = 84):
        """``image_size=84`` gives a 6x6 = 36-token grid."""
        from transformers import LlavaConfig

        return LlavaConfig(
            vision_config=clip_tiny_vision(image_size),
            text_config=text,
            image_token_id=tok.convert_tokens_to_ids("<image>"),
            attn_implementation=attn,
        )

    @classmethod
    def tiny_processor(cls, tok, image_size: int = 84, chat_template: str | None = None):
        from transformers import CLIPImageProcessorPil, LlavaProcessor

        ip = CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
        return clip_processor(LlavaProcessor, ip, tok, chat_template)

    @classmethod
    def processor_size(cls, config, image_size=None) -> dict:
        """Tiny-processor arguments reproducing ``config``'s input size."""
        return {"image_size": int(config.vision_config.image_size)}
