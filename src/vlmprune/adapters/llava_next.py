"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): anyres crops, unpadding, ``image_newline``.

Each image is a base crop plus high-resolution tiles; ``pack_image_features`` puts the base crop
first (raster), then the tiles stitched into one grid, unpadded to the image's aspect ratio, with
``image_newline`` after each row. To learn that layout exactly, the adapter runs the model's own
``pack_image_features`` on a tensor of source indices (crop * N + patch) with a -1 "newline", so
the mapping from packed positions to (crop, patch) always follows the installed transformers; the
token geometry of the visualisations is drawn from the same source map.

Content tokens are the packed tokens without newlines (5 x 576 = 2880 at 672x672 before
unpadding); the newline tokens are dropped whenever a pre-LLM stage prunes (methods.md). Regions:
the base crop, then each tile's part of the unpadded grid.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from vlmprune.adapters.base import (
    Adapter,
    ImageLayout,
    InstanceAttributeHook,
    TokenGeometry,
    edges_to_boxes,
    register_adapter,
)
from vlmprune.adapters.llava import ClipTowerMixin, _crop_offset, _size, clip_processor, clip_tiny_vision
from vlmprune.core.types import Region


def num_crops(config, image_size) -> int:
    """Crops the tower encodes for one image of ``image_size`` (H, W): the base crop + the tiles."""
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    return int(
        image_size_to_num_patches(
            image_size=image_size,
            grid_pinpoints=config.image_grid_pinpoints,
            patch_size=config.vision_config.image_size,
        )
    )


def stock_packer(config):
    """transformers' ``LlavaNextModel.pack_image_features`` for ``config``, without a model (the
    packing reads only the configuration)."""
    from types import SimpleNamespace

    from transformers.models.llava_next.modeling_llava_next import LlavaNextModel

    return functools.partial(LlavaNextModel.pack_image_features, SimpleNamespace(config=config))


def pack_sources(config, image_size, n_crops: int, pack=None) -> torch.Tensor:
    """Packed sequence of one image as source indices (crop * N + patch), -1 for newlines: (P,).
    ``pack``: a ``pack_image_features`` (the model's; by default :func:`stock_packer`'s)."""
    side = config.vision_config.image_size // config.vision_config.patch_size
    pack = pack or stock_packer(config)
    src = torch.arange(n_crops * side * side, dtype=torch.float64).view(n_crops, side * side, 1)  # (C, N, 1)
    packed, _ = pack(
        [src],
        torch.as_tensor(image_size)[None],
        config.vision_feature_select_strategy,
        torch.tensor([-1.0], dtype=torch.float64),
    )
    return packed[0][:, 0].round().long()  # (P,)


def anyres_layout(config, size, pack=None) -> tuple[ImageLayout, torch.Tensor, int]:
    """One image's layout (``size`` (H, W)), its content tokens' sources (crop * N + patch) and
    its crop count; ``pack`` as :func:`pack_sources`'."""
    side = config.vision_config.image_size // config.vision_config.patch_size
    n = side * side
    n_crops = num_crops(config, size)
    packed = pack_sources(config, size, n_crops, pack)  # (P,)
    content = torch.nonzero(packed >= 0).flatten()  # (N_content,)
    source = packed[content]  # (N_content,) crop * N + patch
    crop = source // n
    regions = [Region(torch.nonzero(crop == 0).flatten(), (side, side))]
    if n_crops > 1:
        n_rows = int((packed < 0).sum())  # one newline per unpadded row
        hi = torch.nonzero(crop > 0).flatten()  # content offsets of the high-res grid
        width = hi.numel() // n_rows
        local = torch.arange(hi.numel())
        rows, cols = local // width, local % width
        for c in range(1, n_crops):
            sel = crop[hi] == c
            if sel.any():
                grid = (int(rows[sel].unique().numel()), int(cols[sel].unique().numel()))
                regions.append(Region(hi[sel], grid))
    layout = ImageLayout(int(packed.numel()), content, regions, (side, side))
    return layout, source, n_crops


def crop_signals(views: dict, start: int, n_crops: int, source: torch.Tensor) -> dict:
    """One image's signals per content token from the tower's per-crop ``views`` (``"saliency"``
    (V, T), ``"keys"`` (V, T, hd) with the CLS at 0, ``"pre_features"`` (V, N, Dv); None: not
    captured): its crops ``start:start + n_crops``, gathered at ``source`` (N_content,)."""
    out = {}
    for key in ("saliency", "keys", "pre_features"):
        got = views.get(key)
        if got is not None:
            per_patch = got[start : start + n_crops]
            per_patch = per_patch if key == "pre_features" else per_patch[:, 1:]  # (C, N, ...)
            out[key] = per_patch.reshape(-1, *per_patch.shape[2:])[source]
    return out


@register_adapter
class LlavaNextAdapter(ClipTowerMixin, Adapter):
    family = "llava_next"
    label = "LLaVA-NeXT"
    model_types = ("llava_next",)
    model_class = "LlavaNextForConditionalGeneration"
    config_class = "LlavaNextConfig"
    archs = ("llava-next-7b",)
    tiny_name = "tiny-llava-next"
    demo_size = {"image_size": 112}
    bench_size = {"image_size": 168}
    bench_image = (336, 336)
    bench_budgets = (2880, (640, 320))
    flops_table = (("llava-next-7b", "LLaVA-NeXT-7B", 2880, (640, 320, 160), 5),)  # 5 crops x 576 at 672x672

    def __init__(self, model, saliency="auto"):
        super().__init__(model, saliency)
        self._check_clip()

    def vision_hooks(self, on_record, needs):
        handles = super().vision_hooks(on_record, needs)
        # generate() runs get_image_features before the forward and then passes only
        # `mm_encoder_outputs`, without `image_sizes`: record the sizes where they are used.
        original = self.base.get_image_features

        @functools.wraps(original)  # generate() inspects this signature to route pixel_values
        def get_image_features(*args, **kwargs):
            sizes = kwargs.get("image_sizes", args[1] if len(args) > 1 else None)
            out = original(*args, **kwargs)
            record = on_record()  # created by the tower's pre-hook inside the call
            if record is not None and sizes is not None:
                record.raw["image_sizes"] = torch.as_tensor(sizes).detach().cpu()
            return out

        handles.append(InstanceAttributeHook(self.base, "get_image_features", get_image_features))
        return handles

    def _layout(self, size) -> tuple[ImageLayout, torch.Tensor, int]:
        """One image's layout, its content tokens' sources (crop * N + patch) and its crop count."""
        return anyres_layout(self.config, size, self.base.pack_image_features)

    def image_layouts(self, call, record):
        sizes = call.get("image_sizes")
        if sizes is None and record is not None:
            sizes = record.raw.get("image_sizes")
        if sizes is None:
            raise ValueError("llava_next: `image_sizes` is required to prune LLaVA-NeXT images")
        layouts = []
        self._sources, self._crops = [], []
        for size in torch.as_tensor(sizes).cpu():
            layout, source, n_crops = self._layout(size)
            layouts.append(layout)
            self._sources.append(source)
            self._crops.append(n_crops)
        return layouts

    def image_signals(self, record, index, layout):
        start = sum(self._crops[:index])  # crops of earlier images precede this one's in the tower
        views = {key: self._views(record, key) for key in ("saliency", "keys", "pre_features")}
        return crop_signals(views, start, self._crops[index], self._sources[index])

    # -- geometry ------------------------------------------------------------------------------
    def token_geometry(self, image_size, processor, selection=None) -> TokenGeometry:
        """Base view (the image squashed to the square crop) and the high-resolution view: each
        tile token's place on the pinpoint canvas comes from the model's own packing (the
        source map), the canvas -> image mapping from the stock processor helpers."""
        from transformers.image_processing_utils import get_patch_output_size, select_best_resolution

        width, height = image_size
        ip = getattr(processor, "image_processor", processor)
        layout, source, _ = self._layout(torch.tensor([height, width]))
        n, g = self.side * self.side, self.side
        crop, patch = source // n, source % n
        tile = _size(ip.crop_size)["height"]  # canvas px per tile
        cell = tile / g
        base = self._base_boxes(image_size, ip, g)
        best_h, best_w = select_best_resolution(
            (height, width), [tuple(p) for p in self.config.image_grid_pinpoints]
        )
        blank = np.zeros((height, width, 1), np.uint8)
        new_h, new_w = get_patch_output_size(blank, (best_h, best_w), "channels_last")
        paste_y, paste_x = (best_h - new_h) // 2, (best_w - new_w) // 2
        hi = (crop > 0).numpy()
        t_row, t_col = np.divmod(crop.numpy()[hi] - 1, best_w // tile)
        p_row, p_col = np.divmod(patch.numpy()[hi], g)
        y0 = (t_row * g + p_row) * cell - paste_y
        x0 = (t_col * g + p_col) * cell - paste_x
        sy, sx = height / new_h, width / new_w
        high = np.stack([x0 * sx, y0 * sy, (x0 + cell) * sx, (y0 + cell) * sy], axis=1)
        high[:, 0::2] = np.clip(high[:, 0::2], 0.0, float(width))
        high[:, 1::2] = np.clip(high[:, 1::2], 0.0, float(height))
        boxes = np.concatenate([base, high]).astype(np.float64)
        view = np.concatenate([np.zeros(len(base), np.int64), np.ones(len(high), np.int64)])
        rows = layout.n_placeholders - int(layout.content.numel())  # one newline per unpadded row
        grids = ((g, g), (rows, int(hi.sum()) // max(rows, 1)))
        text = (
            f"{self.label}: base view {g}x{g} tokens (image squashed to the square crop) + high-res view "
            f"{grids[1][0]}x{grids[1][1]} tokens (image fitted into the {best_w}x{best_h} pinpoint canvas, "
            "tiles, padding rows/cols removed)"
        )
        return TokenGeometry(boxes, view, ("base", "high-res"), grids, (width, height), text)

    @staticmethod
    def _base_boxes(image_size, ip, g: int) -> np.ndarray:
        """The base view: the image squashed to the processor's square ``size``, centre cropped."""
        width, height = image_size
        size = _size(ip.size)
        crop = _size(ip.crop_size)
        side = size.get("height", size.get("shortest_edge"))
        base_w = size.get("width", side)
        top, left = (
            (_crop_offset(side, crop["height"]), _crop_offset(base_w, crop["width"]))
            if getattr(ip, "do_center_crop", True)
            else (0, 0)
        )
        xs = (np.arange(g + 1) * crop["width"] / g + left) * (width / base_w)
        ys = (np.arange(g + 1) * crop["height"] / g + top) * (height / side)
        return edges_to_boxes(xs, ys, width, height)

    # -- the tiny test model ------------------------------------------------------------------
    @classmethod
    def tiny_config(cls, tok, text: dict, attn: str, image_size: int = 56):
        """Anyres with pinpoints up to 2x2 tiles of ``image_size`` (4x4 grid each)."""
        from transformers import LlavaNextConfig

        s = image_size
        return LlavaNextConfig(
            vision_config=clip_tiny_vision(s),
            text_config=text,
            image_token_id=tok.convert_tokens_to_ids("<image>"),
            image_grid_pinpoints=[[s, 2 * s], [2 * s, s], [2 * s, 2 * s]],
            attn_implementation=attn,
        )

    @classmethod
    def tiny_init(cls, model) -> None:
        with torch.no_grad():  # the stock init leaves image_newline at zero: give it a value so it matters
            model.model.image_newline.normal_()

    @classmethod
    def tiny_processor(cls, tok, image_size: int = 56, pinpoints=None, chat_template: str | None = None):
        from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

        s = image_size
        ip = LlavaNextImageProcessorPil(
            size={"shortest_edge": s},
            crop_size={"height": s, "width": s},
            image_grid_pinpoints=pinpoints or [[s, 2 * s], [2 * s, s], [2 * s, 2 * s]],
        )
        return clip_processor(LlavaNextProcessor, ip, tok, chat_template)

    @classmethod
    def processor_size(cls, config, image_size=None) -> dict:
        return {
            "image_size": int(config.vision_config.image_size),
            "pinpoints": [list(p) for p in config.image_grid_pinpoints],
        }

    @classmethod
    def shrink_arch(cls, d: dict) -> None:
        """As LLaVA's, with the anyres pinpoints scaled to the smaller crop."""
        scale = 56 / d["vision_config"]["image_size"]
        super().shrink_arch(d)
        d["image_grid_pinpoints"] = [
            [round(h * scale), round(w * scale)] for h, w in d["image_grid_pinpoints"]
        ]

    @classmethod
    def default_bench_image(cls, config) -> tuple[int, int]:
        crop = int(config.vision_config.image_size)
        return 2 * crop, 2 * crop
