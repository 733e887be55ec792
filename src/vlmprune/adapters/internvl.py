"""InternVL (``InternVLForConditionalGeneration``: InternVL3 / 3.5): an InternViT tower with a CLS
token, a 2x pixel shuffle (each LLM token is a 2x2 group of patches) and dynamic tiling.

An image is ``T`` tiles of the image resized to a grid of ``rows x cols`` tiles, in raster order,
followed by a thumbnail (the whole image resized to one tile) when ``T > 1``; each tile is
``g x g`` tokens (``g`` = patches per side / 2) between ``<img>`` and ``</img>``. The tiles and the
thumbnail are the image's regions. The number of tiles of each image is read from its
placeholder run (``T = run length / g²``), so no processor metadata is needed.

Saliency: the CLS token's attention in the layer that produced the features
(``vision_feature_layer``), mean over heads, summed over each shuffled 2x2 group by the model's own
``pixel_shuffle``; or ``feature_norm``. Pre-connector features: the projector's input. Positions:
1-D RoPE, ``"compact"`` (default) or ``"original"``. Videos have no budget of their own:
transformers' ``InternVLProcessor`` writes each frame as one ``<IMG_CONTEXT>`` run, so the session
sees each frame as a one-tile image and prunes it under the image budget (the vLLM plugin leaves
videos unpruned: the two agree where the budget keeps whole frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from vlmprune.adapters.base import (
    Adapter,
    ImageLayout,
    ImagesOnlyProcessor,
    TokenGeometry,
    edges_to_boxes,
    feature_layer,
    placeholder_runs,
    projector_input_hook,
    register_adapter,
)
from vlmprune.adapters.llava import clip_vision_shape
from vlmprune.core.flops import VisionShape
from vlmprune.core.types import Region

INTERNVL_SPECIAL = ("<pad>", "<s>", "</s>", "<unk>", "<IMG_CONTEXT>", "<img>", "</img>", "<video>")


def cls_attention(attn, hidden: torch.Tensor) -> torch.Tensor:
    """(B, T, D) input of an InternViT attention module -> (B, T) attention of the CLS query
    (position 0) over every token, mean over heads (q/k norms applied as the module does).

    ``attn``: transformers' module or vLLM's (whose q/k norms are absent without QK-norm)."""
    x = hidden.float()
    b, t, _ = x.shape

    def proj(lin, norm, rows):  # (B, rows, D) -> (B, H, rows, hd)
        w, bias = lin.weight.float(), None if lin.bias is None else lin.bias.float()
        y = torch.nn.functional.linear(rows, w, bias).to(hidden.dtype)
        y = (y if norm is None else norm(y)).float()
        return y.view(b, rows.shape[1], attn.num_heads, -1).transpose(1, 2)

    q = proj(attn.q_proj, getattr(attn, "q_norm", None), x[:, :1])  # (B, H, 1, hd)
    k = proj(attn.k_proj, getattr(attn, "k_norm", None), x)  # (B, H, T, hd)
    probs = torch.softmax((q @ k.transpose(-1, -2)) * attn.scale, dim=-1)  # (B, H, 1, T)
    return probs[:, :, 0].mean(1)  # (B, H, T) -> (B, T)


def shuffled_sum(per_patch: torch.Tensor, patches: int, pixel_shuffle, ratio: float) -> torch.Tensor:
    """(V, P) per-patch values of ``patches`` x ``patches`` tiles -> (V, g*g) summed over each
    group the model's ``pixel_shuffle`` merges into one token (g = patches * ratio)."""
    v = per_patch.shape[0]
    grid = per_patch.reshape(v, patches, patches, 1)
    return pixel_shuffle(grid, scale_factor=ratio).sum(-1).reshape(v, -1)


def tile_grid(image_size, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(rows, cols) of the tiled canvas the stock processor picks for an image of (H, W)."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    cols, rows = get_optimal_tiled_canvas(
        tuple(int(v) for v in image_size), (tile, tile), min_tiles, max_tiles
    )
    return int(rows), int(cols)


@dataclass(kw_only=True)
class InternVLImageProcessor(ImagesOnlyProcessor):
    """An InternVL processor for images without torchvision: the stock PIL image processor
    (dynamic tiling with a thumbnail), then ``<img>`` + ``<IMG_CONTEXT>`` x tokens per tile x
    tiles + ``</img>``, as the stock one."""

    tokens_per_tile: int
    image_token: ClassVar[str] = "<IMG_CONTEXT>"

    def encode(self, images):
        img = self.image_processor(images, return_tensors="pt")
        return {"pixel_values": img["pixel_values"]}, [
            int(n) * self.tokens_per_tile for n in img["num_patches"]
        ]

    def placeholder(self, count: int) -> str:
        return f"<img>{self.image_token * count}</img>"


@register_adapter
class InternVLAdapter(Adapter):
    family = "internvl"
    label = "InternVL"
    model_types = ("internvl",)
    model_class = "InternVLForConditionalGeneration"
    config_class = "InternVLConfig"
    archs = ("internvl3-8b",)
    tiny_name = "tiny-internvl"
    image_token = "<IMG_CONTEXT>"
    special_tokens = {"<IMG_CONTEXT>": "image_token_id"}
    tiny_special = INTERNVL_SPECIAL
    default_positions = "compact"
    supports_compact = True
    saliency_doc = "CLS attention of the feature layer, summed over each pixel-shuffled 2x2 group"
    demo_size = {"image_size": 112}
    bench_size = {"image_size": 168}
    bench_image = (336, 336)
    bench_budgets = (256, (128, 64, 32))

    def __init__(self, model, saliency="auto"):
        super().__init__(model, saliency)
        cfg, vcfg = self.config, self.config.vision_config
        self.saliency_layer = feature_layer(cfg, "default", self.family)
        self.patches = int(vcfg.image_size[0]) // int(vcfg.patch_size[0])  # per tile side
        self.side = int(self.patches * cfg.downsample_ratio)  # LLM tokens per tile side
        self.per_tile = self.side * self.side

    # -- vision capture ----------------------------------------------------------------------
    def vision_module(self):
        return self.base.vision_tower

    def _shuffled(self, per_patch: torch.Tensor) -> torch.Tensor:
        """(V, P) per-patch values -> (V, g*g) summed over each group the pixel shuffle merges."""
        return shuffled_sum(per_patch, self.patches, self.base.pixel_shuffle, self.config.downsample_ratio)

    def vision_hooks(self, on_record, needs):
        handles = []
        if "saliency" in needs and self.saliency == "cls_attention":
            attn = self.base.vision_tower.encoder.layer[self.saliency_layer].attention

            def grab_cls(module, args, kwargs):
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                with torch.no_grad():
                    sal = self._shuffled(cls_attention(module, hidden)[:, 1:])  # drop CLS, group
                on_record().raw.setdefault("saliency", []).append(sal)

            handles.append(attn.register_forward_pre_hook(grab_cls, with_kwargs=True))
        if "pre_features" in needs:
            handles.append(projector_input_hook(self.base.multi_modal_projector, on_record))
        return handles

    # -- layout -------------------------------------------------------------------------------
    def image_layouts(self, call, record):
        ids = call.get("input_ids")
        if ids is None:
            raise ValueError("internvl: `input_ids` are required to prune images")
        run = record.runs[0] if record is not None and record.runs else {}
        seen = run.get("encoded")  # tiles the tower saw (generate may repeat rows after it ran)
        runs = placeholder_runs(ids, self.image_token_id, None if seen is None else seen * self.per_tile)
        layouts, self._tiles = [], []
        for n in runs:
            tiles = n // self.per_tile
            regions = [
                Region(torch.arange(i * self.per_tile, (i + 1) * self.per_tile), (self.side,) * 2)
                for i in range(tiles)
            ]
            layouts.append(ImageLayout(n, torch.arange(n), regions, (self.side, self.side)))
            self._tiles.append(tiles)
        return layouts

    def image_signals(self, record, index, layout):
        start, tiles = sum(self._tiles[:index]), self._tiles[index]
        run = record.runs[0] if record is not None and record.runs else {}
        out = {}
        for key in ("saliency", "pre_features"):
            got = run.get(key)
            if got:
                per_tile = torch.cat(got)[start : start + tiles]  # (T, g*g) or (T, g*g, Dv)
                out[key] = per_tile.reshape(-1, *per_tile.shape[2:])
        return out

    # -- geometry ------------------------------------------------------------------------------
    def token_geometry(self, image_size, processor, selection=None) -> TokenGeometry:
        """Tiles: the image resized to rows x cols tiles, g x g tokens each, tile by tile; then the
        thumbnail (the whole image squashed to one tile) when there is more than one tile."""
        width, height = image_size
        ip = getattr(processor, "image_processor", processor)
        tile = int(self.config.vision_config.image_size[0])
        rows, cols = tile_grid((height, width), tile, ip.min_patches, ip.max_patches)
        g = self.side
        xs, ys = np.arange(cols * g + 1) * width / (cols * g), np.arange(rows * g + 1) * height / (rows * g)
        grid = edges_to_boxes(xs, ys, width, height).reshape(rows, g, cols, g, 4)
        tiles = grid.transpose(0, 2, 1, 3, 4).reshape(-1, 4)  # tile-major, each tile in raster order
        boxes, grids, names = [tiles], [(rows * g, cols * g)], ["tiles"]
        if rows * cols > 1:
            boxes.append(
                edges_to_boxes(np.arange(g + 1) * width / g, np.arange(g + 1) * height / g, width, height)
            )
            grids.append((g, g))
            names.append("thumbnail")
        view = np.concatenate([np.full(len(b), i, np.int64) for i, b in enumerate(boxes)])
        text = f"{self.label}: {rows}x{cols} tiles of {g}x{g} tokens (2x2 patches each)"
        text += " + a thumbnail tile" if rows * cols > 1 else ""
        return TokenGeometry(
            np.concatenate(boxes).astype(np.float64), view, tuple(names), tuple(grids), (width, height), text
        )

    # -- the family, for tools -------------------------------------------------------------------
    @classmethod
    def prompt(cls, question: str, n_images: int = 1) -> str:
        img = "<IMG_CONTEXT>\n" * n_images
        return f"<|im_start|>user\n{img}{question}<|im_end|>\n<|im_start|>assistant\n"

    @classmethod
    def tiny_prompt(cls, question: str, n_images: int = 1) -> str:
        return "USER: " + "<IMG_CONTEXT>\n" * n_images + f"{question} ASSISTANT:"

    @classmethod
    def vision_shape(cls, config) -> VisionShape:
        """InternViT with CLS. The projector (LayerNorm, 4C -> d, GELU, d -> d) runs once per 2x2
        patch group: per patch that is ``C d + d²/4`` MACs, written as a ``C -> d -> d/4`` connector."""
        return clip_vision_shape(config, connector_out=int(config.get_text_config().hidden_size) // 4)

    @classmethod
    def vision_grids(cls, config, inputs) -> dict:
        return {"num_crops": int(inputs["pixel_values"].shape[0])}

    @classmethod
    def tiny_config(cls, tok, text: dict, attn: str, image_size: int = 56):
        """InternViT (2 layers, patch 14, CLS), Qwen2 decoder, 2x pixel shuffle."""
        from transformers import InternVLConfig

        s = image_size
        vision = dict(model_type="internvl_vision", hidden_size=32, intermediate_size=64, num_hidden_layers=2)
        vision.update(num_attention_heads=4, image_size=[s, s], patch_size=[14, 14])
        return InternVLConfig(
            vision_config=vision,
            text_config={**text, "model_type": "qwen2"},
            image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
            downsample_ratio=0.5,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
            attn_implementation=attn,
        )

    @classmethod
    def tiny_processor(cls, tok, image_size: int = 56, chat_template: str | None = None):
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

        s = image_size
        ip = GotOcr2ImageProcessorPil(
            size={"height": s, "width": s}, crop_to_patches=True, min_patches=1, max_patches=4
        )
        return InternVLImageProcessor(
            image_processor=ip, tokenizer=tok, tokens_per_tile=(s // 28) ** 2, chat_template=chat_template
        )

    @classmethod
    def fallback_processor(cls, path, config, tokenizer, chat_template):
        """The processor of a checkpoint directory when the stock one cannot be built (no torchvision)."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

        ip = GotOcr2ImageProcessorPil.from_pretrained(path, local_files_only=True)
        v = config.vision_config
        per_tile = int(int(v.image_size[0]) // int(v.patch_size[0]) * config.downsample_ratio) ** 2
        return InternVLImageProcessor(
            image_processor=ip, tokenizer=tokenizer, tokens_per_tile=per_tile, chat_template=chat_template
        )

    @classmethod
    def processor_size(cls, config, image_size=None) -> dict:
        return {"image_size": 56 if config is None else int(config.vision_config.image_size[0])}

    @classmethod
    def default_bench_image(cls, config) -> tuple[int, int]:
        tile = int(config.vision_config.image_size[0])
        return 2 * tile, 2 * tile

    @classmethod
    def bench_vision(cls) -> dict:
        return {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4}

    @classmethod
    def shrink_arch(cls, d: dict) -> None:
        """Shrink a real-size config dict in place for CPU smoke tests (same classes, CLS tower,
        pixel shuffle, feature layer and strategy, the real vocabulary): 56-px tiles of 2x2 tokens."""
        vit = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3}
        d["vision_config"].update(vit, image_size=[56, 56], patch_size=[14, 14])
        text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4}
        d["text_config"].update(text, num_key_value_heads=2)
