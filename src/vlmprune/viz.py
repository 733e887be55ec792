"""Seeing what was kept: token geometry per model family, renderings and comparison grids.

Pure rendering on PIL and numpy (transformers is imported only by ``vlmprune compare``'s model
loading). Three layers, each usable on its own:

1. **Geometry** (:func:`token_boxes`, :func:`token_geometry`): where each visual token of one image
   came from, as a box ``(x0, y0, x1, y1)`` in *original-image* pixels, following the stock image
   processor exactly:

   * ``llava`` (CLIP processor): optional pad-to-square (``do_pad``), resize of the shortest edge
     (or to ``height x width``), centre crop; token ``(r, c)`` is the ``patch x patch`` square of
     the crop at row ``r``, column ``c``, mapped back through the crop offset and the resize.
   * ``llava_next`` (anyres): a *base* view (the image squashed to the square crop, one token per
     ``patch`` px) and a *high-res* view: the image resized into the best-fit pinpoint resolution,
     centred on a zero-padded canvas, cut into tiles; the model's ``unpad_image`` then removes the
     padded feature rows (or columns). Each token of the unpadded grid is mapped back to the
     original image (cells that straddle the padding are clipped to the image).
   * ``qwen2_5_vl`` / ``qwen2_vl``: ``smart_resize`` to multiples of ``patch * merge`` (28 px) and
     a squash resize; each merged token is a ``28 x 28`` px square of the resized image.

2. **Rendering** (:func:`render_selection`): the image with the kept tokens' pixels unchanged, the
   dropped ones blended ``dim`` (70%) toward dark grey, tokens folded into a kept token (merging
   methods' ``assignment``) tinted with that kept token's group colour and outlined, and pixels the
   model never saw (LLaVA's centre crop, LLaVA-NeXT's unpadding) hatched. LLaVA-NeXT renders two
   views side by side: base | high-res.

3. **Grids** (:func:`compare_grid`) and the ``vlmprune compare`` subcommand (:func:`main`).

Pixel rule: a token owns the pixels whose *centres* fall in its box (:func:`box_pixels`), so
adjacent boxes never share a pixel and tests can check renderings pixel by pixel.
"""

from __future__ import annotations

import argparse
import colorsys
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FAMILIES = ("llava", "llava_next", "qwen2_5_vl", "qwen2_vl")
DEFAULT_METHODS = ("promprune", "sppruner", "fastv", "divprune")
SKIMAGE_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")

# Colours of the renderings (RGB).
DROP_GREY = (40, 40, 40)  # dropped tokens are blended toward this
UNSEEN_DARK = (12, 12, 12)  # pixels no token saw
UNSEEN_HATCH = (110, 110, 110)
BACKGROUND = (255, 255, 255)
VIEW_GAP = 8  # px between the base and high-res views of a LLaVA-NeXT rendering

LEGEND = (
    "plain: kept tokens   dimmed: dropped   tinted + outlined: merged into the kept token of that colour   "
    "hatched: not seen by the model"
)


# =============================================================================================
# Geometry
# =============================================================================================


@dataclass(frozen=True)
class LayoutInfo:
    """What the geometry needs besides the image: the model ``family`` (one of :data:`FAMILIES`)
    and the processor/model numbers ``config`` (see :func:`processor_config`)."""

    family: str
    config: dict = field(default_factory=dict)


@dataclass
class TokenGeometry:
    """Where the N visual tokens of one image came from.

    ``boxes`` (N, 4) float64 ``x0, y0, x1, y1`` in original-image pixels, clipped to the image (a
    token that saw only padding has an empty box); ``view`` (N,) int64, the view each token belongs
    to (index into ``views``: LLaVA-NeXT 0 base, 1 high-res; otherwise 0); ``views`` view names;
    ``grids`` the token grid ``(rows, cols)`` of each view; ``image_size`` ``(W, H)``.
    """

    boxes: np.ndarray
    view: np.ndarray
    views: tuple[str, ...]
    grids: tuple[tuple[int, int], ...]
    image_size: tuple[int, int]

    @property
    def num_tokens(self) -> int:
        return int(self.boxes.shape[0])


def _get(cfg, key, default=None):
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _size(value) -> dict:
    """A transformers size (dict, SizeDict or int) as a plain dict without None values."""
    if value is None:
        return {}
    if isinstance(value, int):
        return {"shortest_edge": int(value)}
    if not isinstance(value, dict):
        value = {k: getattr(value, k, None) for k in ("height", "width", "shortest_edge", "longest_edge")}
    return {k: int(v) for k, v in value.items() if v is not None}


def resize_shortest_edge(height: int, width: int, size: int) -> tuple[int, int]:
    """``(h, w)`` after matching the shorter edge to ``size`` (transformers'
    ``get_resize_output_image_size(default_to_square=False)``: the long edge is truncated)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _resized_hw(height: int, width: int, size: dict) -> tuple[int, int]:
    if "height" in size and "width" in size:
        return size["height"], size["width"]
    if "shortest_edge" in size:
        if "longest_edge" in size:
            raise ValueError(
                "a size with both `shortest_edge` and `longest_edge` is not supported for CLIP crops"
            )
        return resize_shortest_edge(height, width, size["shortest_edge"])
    raise ValueError(f"unsupported image processor size {size!r}")


def _crop_offset(resized: int, crop: int) -> int:
    """Top (or left) of a centre crop: ``(resized - crop) // 2``; negative when the crop pads."""
    if resized >= crop:
        return (resized - crop) // 2
    return -math.ceil((crop - resized) / 2)


def _edges_to_boxes(xs: np.ndarray, ys: np.ndarray, width: int, height: int) -> np.ndarray:
    """(gw+1,) and (gh+1,) cell edges in original pixels -> (gh*gw, 4) raster boxes clipped to the image."""
    xs = np.clip(xs, 0.0, float(width))
    ys = np.clip(ys, 0.0, float(height))
    gh, gw = len(ys) - 1, len(xs) - 1
    x0 = np.broadcast_to(xs[None, :-1], (gh, gw))
    x1 = np.broadcast_to(xs[None, 1:], (gh, gw))
    y0 = np.broadcast_to(ys[:-1, None], (gh, gw))
    y1 = np.broadcast_to(ys[1:, None], (gh, gw))
    return np.stack([x0, y0, x1, y1], axis=-1).reshape(-1, 4).astype(np.float64)


def llava_geometry(image_size: tuple[int, int], cfg: dict) -> TokenGeometry:
    """LLaVA-1.5: (g*g,) tokens of the centre crop, g = crop // patch.

    ``cfg``: ``size`` ({"shortest_edge": 336} or {"height", "width"}), ``crop_size``
    ({"height", "width"}), ``patch_size`` (14), optional ``do_resize``/``do_center_crop``/``do_pad``
    (defaults True/True/False).
    """
    width, height = image_size
    patch = int(_get(cfg, "patch_size", 14))
    # 1. optional pad to square (LlavaImageProcessor do_pad): canvas (side, side), image at (px, py)
    cw, ch, px, py = width, height, 0, 0
    if _get(cfg, "do_pad", False) and width != height:
        side = max(width, height)
        px, py = (side - width) // 2, (side - height) // 2
        cw = ch = side
    # 2. resize
    if _get(cfg, "do_resize", True):
        rh, rw = _resized_hw(ch, cw, _size(_get(cfg, "size")))
    else:
        rh, rw = ch, cw
    # 3. centre crop
    crop = _size(_get(cfg, "crop_size"))
    if _get(cfg, "do_center_crop", True) and crop:
        kh, kw = crop["height"], crop["width"]
        top, left = _crop_offset(rh, kh), _crop_offset(rw, kw)
    else:
        kh, kw, top, left = rh, rw, 0, 0
    gh, gw = kh // patch, kw // patch
    # crop pixel -> resized pixel (+ offset) -> canvas pixel (* canvas / resized) -> image (- pad)
    xs = (np.arange(gw + 1) * patch + left) * (cw / rw) - px
    ys = (np.arange(gh + 1) * patch + top) * (ch / rh) - py
    boxes = _edges_to_boxes(xs, ys, width, height)
    return TokenGeometry(boxes, np.zeros(len(boxes), np.int64), ("image",), ((gh, gw),), (width, height))


def select_best_resolution(original_hw: tuple[int, int], pinpoints) -> tuple[int, int]:
    """LLaVA-NeXT's best-fit ``(h, w)`` among ``pinpoints`` (most effective pixels, then least waste);
    the same rule as ``transformers.image_processing_utils.select_best_resolution``."""
    oh, ow = original_hw
    best, best_eff, best_waste = None, 0, float("inf")
    for h, w in pinpoints:
        scale = min(w / ow, h / oh)
        dw, dh = int(ow * scale), int(oh * scale)
        eff = min(dw * dh, ow * oh)
        waste = w * h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (int(h), int(w)), eff, waste
    return best


def _patch_output_size(original_hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple[int, int]:
    """Size of the image inside the pinpoint canvas (``get_patch_output_size``: ceil, capped)."""
    oh, ow = original_hw
    th, tw = target_hw
    sw, sh = tw / ow, th / oh
    if sw < sh:
        return min(math.ceil(oh * sw), th), tw
    return th, min(math.ceil(ow * sh), tw)


def unpad_slices(feature_hw: tuple[int, int], original_hw: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of the padded high-res feature grid that ``unpad_image`` keeps."""
    cur_h, cur_w = feature_hw
    oh, ow = original_hw
    if ow / oh > cur_w / cur_h:
        new_h = int(round(oh * (cur_w / ow), 7))
        pad = (cur_h - new_h) // 2
        return slice(pad, cur_h - pad), slice(0, cur_w)
    new_w = int(round(ow * (cur_h / oh), 7))
    pad = (cur_w - new_w) // 2
    return slice(0, cur_h), slice(pad, cur_w - pad)


def llava_next_geometry(image_size: tuple[int, int], cfg: dict) -> TokenGeometry:
    """LLaVA-NeXT: base view (g*g tokens) then the unpadded high-res grid (rows*cols), raster each.

    ``cfg``: ``size``, ``crop_size``, ``image_grid_pinpoints`` (list of [h, w]), ``patch_size``
    (14), ``vision_image_size`` (the CLIP tower's input side, default the crop height).
    """
    width, height = image_size
    patch = int(_get(cfg, "patch_size", 14))
    size = _size(_get(cfg, "size"))
    crop = _size(_get(cfg, "crop_size")) or {"height": size.get("height", size.get("shortest_edge"))}
    crop.setdefault("width", crop["height"])
    tile_px = crop["height"]  # the processor cuts the canvas into crop-height tiles
    vision = int(_get(cfg, "vision_image_size", None) or tile_px)
    g = vision // patch  # feature rows/cols per tile (and in the base view)
    # base view: squash to (S, S), then the usual resize (a no-op on a square) and centre crop
    side = size.get("height", size.get("shortest_edge"))
    base_w = size.get("width", side)
    top, left = (
        (_crop_offset(side, crop["height"]), _crop_offset(base_w, crop["width"]))
        if _get(cfg, "do_center_crop", True)
        else (0, 0)
    )
    base_cell_y, base_cell_x = crop["height"] / g, crop["width"] / g
    bx = (np.arange(g + 1) * base_cell_x + left) * (width / base_w)
    by = (np.arange(g + 1) * base_cell_y + top) * (height / side)
    base = _edges_to_boxes(bx, by, width, height)
    # high-res view: best pinpoint canvas, image resized into it and centred, tiles, unpadding
    pinpoints = [tuple(p) for p in _get(cfg, "image_grid_pinpoints")]
    best_h, best_w = select_best_resolution((height, width), pinpoints)
    new_h, new_w = _patch_output_size((height, width), (best_h, best_w))
    paste_y, paste_x = (best_h - new_h) // 2, (best_w - new_w) // 2
    cur_h, cur_w = (best_h // vision) * g, (best_w // vision) * g  # padded feature grid
    rows, cols = unpad_slices((cur_h, cur_w), (height, width))
    cell = tile_px / g  # canvas px per feature cell
    hx = (np.arange(cols.start, cols.stop + 1) * cell - paste_x) * (width / new_w)
    hy = (np.arange(rows.start, rows.stop + 1) * cell - paste_y) * (height / new_h)
    high = _edges_to_boxes(hx, hy, width, height)
    boxes = np.concatenate([base, high])
    view = np.concatenate([np.zeros(len(base), np.int64), np.ones(len(high), np.int64)])
    grids = ((g, g), (rows.stop - rows.start, cols.stop - cols.start))
    return TokenGeometry(boxes, view, ("base", "high-res"), grids, (width, height))


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280
):
    """Qwen2-VL's resize target ``(h, w)``: multiples of ``factor``, pixel count in range, aspect kept
    as well as possible (the same arithmetic as transformers' ``smart_resize``)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qwen_geometry(
    image_size: tuple[int, int], cfg: dict, grid: tuple[int, ...] | None = None
) -> TokenGeometry:
    """Qwen2-VL / Qwen2.5-VL: (gh*gw,) merged tokens, each ``patch*merge`` px square of the resized image.

    ``cfg``: ``min_pixels``, ``max_pixels`` (or ``size`` {"shortest_edge": min, "longest_edge":
    max}), ``patch_size`` (14), ``merge_size`` (2). ``grid``: the selection's ``(t, gh, gw)``; the
    resize is a plain squash to ``(gh, gw) * factor``, so when given it decides the geometry (a
    processor config that disagrees is reported with a warning).
    """
    width, height = image_size
    factor = int(_get(cfg, "patch_size", 14)) * int(_get(cfg, "merge_size", 2))
    size = _size(_get(cfg, "size"))
    min_px = _get(cfg, "min_pixels", None) or size.get("shortest_edge", 56 * 56)
    max_px = _get(cfg, "max_pixels", None) or size.get("longest_edge", 28 * 28 * 1280)
    rh, rw = smart_resize(height, width, factor, int(min_px), int(max_px))
    gh, gw = rh // factor, rw // factor
    if grid is not None:
        t, sgh, sgw = (int(x) for x in grid) if len(grid) == 3 else (1, *(int(x) for x in grid))
        if t != 1:
            raise ValueError(f"only images (t == 1) can be rendered, got grid {tuple(grid)}")
        if (sgh, sgw) != (gh, gw):
            warnings.warn(
                f"the processor config gives a {gh}x{gw} grid for a {width}x{height} image but the selection "
                f"has {sgh}x{sgw}; using the selection's grid",
                stacklevel=2,
            )
            gh, gw = sgh, sgw
    xs = np.arange(gw + 1) * factor * (width / (gw * factor))
    ys = np.arange(gh + 1) * factor * (height / (gh * factor))
    boxes = _edges_to_boxes(xs, ys, width, height)
    return TokenGeometry(boxes, np.zeros(len(boxes), np.int64), ("image",), ((gh, gw),), (width, height))


def token_geometry(
    family: str, image_size: tuple[int, int], processor_config: dict, selection=None
) -> TokenGeometry:
    """:class:`TokenGeometry` of one image of ``image_size`` = ``(W, H)`` (PIL's ``image.size``).

    ``selection`` (optional): the image's :class:`~vlmprune.Selection`; its token count (and Qwen
    grid) is checked against the geometry, so a wrong config raises instead of drawing nonsense.
    """
    if family == "llava":
        geo = llava_geometry(image_size, processor_config)
    elif family == "llava_next":
        geo = llava_next_geometry(image_size, processor_config)
    elif family in ("qwen2_5_vl", "qwen2_vl"):
        geo = qwen_geometry(image_size, processor_config, None if selection is None else selection.grid)
    else:
        raise ValueError(f"`family` must be one of {FAMILIES}, got {family!r}")
    if selection is not None and int(selection.num_tokens) != geo.num_tokens:
        raise ValueError(
            f"{family}: the geometry of a {image_size[0]}x{image_size[1]} image has {geo.num_tokens} tokens "
            f"(views {dict(zip(geo.views, geo.grids))}) but the selection has {selection.num_tokens}; "
            "is this the image (and processor config) the model saw?"
        )
    return geo


def token_boxes(family: str, image_size: tuple[int, int], processor_config: dict, selection=None) -> list:
    """Boxes ``(x0, y0, x1, y1)`` in original-image pixels of each visual token, in the order of
    the selection's token indices (raster; LLaVA-NeXT: base view, then the unpadded high-res grid).
    ``image_size`` is ``(W, H)``. See :func:`token_geometry` for the view of each box."""
    geo = token_geometry(family, image_size, processor_config, selection)
    return [tuple(float(v) for v in b) for b in geo.boxes]


def processor_config(processor, model_config=None) -> dict:
    """The numbers the geometry needs, read from a stock processor (``LlavaProcessor``,
    ``LlavaNextProcessor``, a Qwen processor or :class:`vlmprune.testing.QwenTinyProcessor`) and
    the model's config (patch size, CLIP input side, pinpoints the model unpads with)."""
    ip = getattr(processor, "image_processor", processor)
    out = {}
    for key in ("size", "crop_size"):
        if getattr(ip, key, None) is not None:
            out[key] = _size(getattr(ip, key))
    for key in ("do_resize", "do_center_crop", "do_pad", "min_pixels", "max_pixels", "merge_size"):
        value = getattr(ip, key, None)
        if value is not None:
            out[key] = value
    if getattr(ip, "image_grid_pinpoints", None) is not None:
        out["image_grid_pinpoints"] = [list(p) for p in ip.image_grid_pinpoints]
    patch = getattr(ip, "patch_size", None) or getattr(processor, "patch_size", None)
    if model_config is not None:
        vision = getattr(model_config, "vision_config", None)
        if vision is not None:
            patch = getattr(vision, "patch_size", patch)
            if getattr(vision, "model_type", "") in ("clip_vision_model", "clip"):
                out["vision_image_size"] = int(vision.image_size)
            if getattr(vision, "spatial_merge_size", None):
                out["merge_size"] = int(vision.spatial_merge_size)
        if getattr(model_config, "image_grid_pinpoints", None) is not None:
            out["image_grid_pinpoints"] = [list(p) for p in model_config.image_grid_pinpoints]
    if patch is not None:
        out["patch_size"] = int(patch)
    return out


def describe_geometry(family: str, image_size: tuple[int, int], processor_config: dict) -> str:
    """One line saying how the processor turned an image of ``image_size`` into tokens."""
    geo = token_geometry(family, image_size, processor_config)
    cfg, (w, h) = processor_config, image_size
    if family == "llava":
        crop = _size(cfg.get("crop_size"))
        pad = "pad to square, " if cfg.get("do_pad") and w != h else ""
        g = geo.grids[0]
        size = _size(cfg.get("size"))
        how = f"shortest edge to {size['shortest_edge']}" if "shortest_edge" in size else f"to {size}"
        return (
            f"LLaVA: {pad}resize {how}, centre crop {crop.get('width')}x{crop.get('height')}, "
            f"{g[0]}x{g[1]} tokens of {cfg.get('patch_size', 14)} px"
        )
    if family == "llava_next":
        bh, bw = select_best_resolution((h, w), [tuple(p) for p in cfg["image_grid_pinpoints"]])
        (g, _), (r, c) = geo.grids
        return (
            f"LLaVA-NeXT: base view {g}x{g} tokens (image squashed to the square crop) + high-res view {r}x{c} tokens "
            f"(image fitted into the {bw}x{bh} pinpoint canvas, tiles, padding rows/cols removed)"
        )
    factor = int(cfg.get("patch_size", 14)) * int(cfg.get("merge_size", 2))
    gh, gw = geo.grids[0]
    return (
        f"Qwen: smart_resize to {gw * factor}x{gh * factor}, {gh}x{gw} merged tokens of {factor}x{factor} px"
    )


def layout_info(model, processor) -> LayoutInfo:
    """:class:`LayoutInfo` of a loaded model and its processor."""
    from vlmprune.adapters import get_adapter

    family = get_adapter(model).family
    return LayoutInfo(family, processor_config(processor, model.config))


# =============================================================================================
# Rendering
# =============================================================================================


def box_pixels(box, scale: tuple[float, float] = (1.0, 1.0)) -> tuple[int, int, int, int]:
    """Pixel rows ``r0:r1`` and columns ``c0:c1`` whose centres lie in ``box`` (after scaling it by
    ``scale`` = (sx, sy)): ``(r0, r1, c0, c1)``, possibly empty."""
    x0, y0, x1, y1 = box
    sx, sy = scale
    c0, c1 = math.ceil(x0 * sx - 0.5), math.ceil(x1 * sx - 0.5)
    r0, r1 = math.ceil(y0 * sy - 0.5), math.ceil(y1 * sy - 0.5)
    return r0, max(r0, r1), c0, max(c0, c1)


def group_colour(slot: int) -> tuple[int, int, int]:
    """A saturated colour for merge group ``slot``; hues are scrambled (murmur3's 32-bit finaliser)
    so that groups with nearby or evenly strided slots, often spatial neighbours, get unrelated colours."""
    x = (slot + 0x9E3779B9) & 0xFFFFFFFF
    x = ((x ^ (x >> 16)) * 0x85EBCA6B) & 0xFFFFFFFF
    x = ((x ^ (x >> 13)) * 0xC2B2AE35) & 0xFFFFFFFF
    h = (x ^ (x >> 16)) / 2**32
    r, g, b = colorsys.hsv_to_rgb(h, 0.8, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def token_status(selection) -> tuple[np.ndarray, np.ndarray]:
    """Per token of ``selection``: status (N,) int8 (1 kept, 0 dropped, 2 merged into a kept token)
    and group (N,) int64 (the merge slot of the kept token it belongs to; -1 for dropped tokens).

    A kept token's group is its own ``assignment`` slot. A token is *merged* when its slot is the
    slot of a token that is still kept, so a later in-LLM stage that drops a merged token's
    representative (SPpruner's progressive option) shows that whole group as dropped."""
    n = int(selection.num_tokens)
    kept = np.asarray(
        selection.kept.cpu() if hasattr(selection.kept, "cpu") else selection.kept, dtype=np.int64
    )
    status = np.zeros(n, np.int8)
    group = np.full(n, -1, np.int64)
    status[kept] = 1
    group[kept] = n + np.arange(len(kept))  # a group of its own unless the assignment says otherwise
    assign = selection.assignment
    if assign is not None:
        assign = np.asarray(assign.cpu() if hasattr(assign, "cpu") else assign, dtype=np.int64)
        own = assign[kept]
        group[kept] = np.where(own >= 0, own, group[kept])
        alive = np.isin(assign, own[own >= 0])
        merged = (assign >= 0) & (status == 0) & alive
        status[merged] = 2
        group[merged] = assign[merged]
    return status, group


def _label_map(boxes: np.ndarray, idx: np.ndarray, hw: tuple[int, int], scale) -> np.ndarray:
    """(H, W) int64: the token owning each display pixel (-1: none)."""
    labels = np.full(hw, -1, np.int64)
    for i in idx:
        r0, r1, c0, c1 = box_pixels(boxes[i], scale)
        labels[max(r0, 0) : r1, max(c0, 0) : c1] = i
    return labels


def _render_view(base: np.ndarray, labels: np.ndarray, status, group, dim, tint, shade, outline: int):
    """(H, W, 3) uint8 rendering of one view from the display image ``base`` and its label map."""
    img = base.astype(np.float32)
    out = img.copy()
    h, w = labels.shape
    owned = labels >= 0
    st = np.where(owned, status[np.maximum(labels, 0)], -1)  # (H, W): -1 unseen
    grp = np.where(owned, group[np.maximum(labels, 0)], -1)
    # dropped: blend toward dark grey
    drop = st == 0
    out[drop] = img[drop] * (1.0 - dim) + np.asarray(DROP_GREY, np.float32) * dim
    # merged: tint toward the group's colour
    merged = st == 2
    if merged.any():
        slots = np.unique(grp[merged])
        palette = np.zeros((int(slots.max()) + 1, 3), np.float32)
        for s in slots:
            palette[s] = group_colour(int(s))
        grey = np.asarray(DROP_GREY, np.float32)
        out[merged] = img[merged] * (1.0 - tint - shade) + palette[grp[merged]] * tint + grey * shade
        if outline > 0:  # group boundaries, drawn on merged pixels only (kept pixels stay untouched)
            gl = np.where(st >= 1, grp, -1 - (st < 0))  # group label per pixel; dropped -1, unseen -2
            edge = np.zeros((h, w), bool)
            edge[:, 1:] |= gl[:, 1:] != gl[:, :-1]
            edge[:, :-1] |= gl[:, 1:] != gl[:, :-1]
            edge[1:, :] |= gl[1:, :] != gl[:-1, :]
            edge[:-1, :] |= gl[1:, :] != gl[:-1, :]
            for _ in range(outline - 1):  # thicken inward
                grown = edge.copy()
                grown[:, 1:] |= edge[:, :-1] & (gl[:, 1:] == gl[:, :-1])
                grown[:, :-1] |= edge[:, 1:] & (gl[:, :-1] == gl[:, 1:])
                grown[1:, :] |= edge[:-1, :] & (gl[1:, :] == gl[:-1, :])
                grown[:-1, :] |= edge[1:, :] & (gl[:-1, :] == gl[1:, :])
                edge = grown
            line = edge & merged
            out[line] = palette[grp[line]] * 0.8
    # unseen: darkened and hatched
    unseen = st < 0
    if unseen.any():
        yy, xx = np.mgrid[0:h, 0:w]
        hatch = ((xx + yy) % 10) < 2
        out[unseen] = img[unseen] * 0.15 + np.asarray(UNSEEN_DARK, np.float32) * 0.85
        out[unseen & hatch] = np.asarray(UNSEEN_HATCH, np.float32)
    out[st == 1] = img[st == 1]  # kept: exactly the display image
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_selection(
    image: Image.Image,
    selection,
    layout_info: LayoutInfo | TokenGeometry,
    *,
    display_size: tuple[int, int] | None = None,
    dim: float = 0.7,
    tint: float = 0.35,
    shade: float = 0.3,
    outline: int | None = None,
) -> Image.Image:
    """The image as the model's tokens saw it after pruning.

    ``image``: the PIL image given to the processor (its ``size`` fixes the geometry);
    ``selection``: that image's :class:`~vlmprune.Selection`; ``layout_info``: a
    :class:`LayoutInfo` (or a precomputed :class:`TokenGeometry`). ``display_size`` ``(W', H')``
    renders on the image resized (bicubic) to that size (default: the original size).

    Kept tokens' pixels are the display image unchanged; dropped ones are
    ``(1 - dim) * pixel + dim * DROP_GREY``; tokens a merging method folded into a kept token are
    ``(1 - tint - shade) * pixel + tint * colour(slot) + shade * DROP_GREY`` (a kept token's group:
    shaded and tinted with one colour, outlined in it; the kept token itself plain); pixels seen by no token
    are hatched. LLaVA-NeXT returns ``base | high-res`` side by side, :data:`VIEW_GAP` px apart.
    ``out.info["views"]`` lists ``(name, (x, y, w, h))`` of each view in the returned image.
    """
    image = image.convert("RGB")
    geo = (
        layout_info
        if isinstance(layout_info, TokenGeometry)
        else token_geometry(layout_info.family, image.size, layout_info.config, selection)
    )
    if geo.num_tokens != int(selection.num_tokens):
        raise ValueError(f"the geometry has {geo.num_tokens} tokens, the selection {selection.num_tokens}")
    width, height = image.size
    dw, dh = display_size or (width, height)
    shown = image if (dw, dh) == (width, height) else image.resize((dw, dh), Image.BICUBIC)
    base = np.asarray(shown, dtype=np.uint8)
    scale = (dw / width, dh / height)
    status, group = token_status(selection)
    if outline is None:
        outline = max(1, round(min(dw, dh) / 250))
    views = []
    for v, _name in enumerate(geo.views):
        idx = np.nonzero(geo.view == v)[0]
        labels = _label_map(geo.boxes, idx, (dh, dw), scale)
        views.append(_render_view(base, labels, status, group, dim, tint, shade, outline))
    n = len(views)
    out = np.full((dh, n * dw + (n - 1) * VIEW_GAP, 3), BACKGROUND, np.uint8)
    info = []
    for v, arr in enumerate(views):
        x = v * (dw + VIEW_GAP)
        out[:, x : x + dw] = arr
        grid = geo.grids[v]
        info.append((f"{geo.views[v]} {grid[0]}x{grid[1]}", (x, 0, dw, dh)))
    result = Image.fromarray(out)
    result.info["views"] = info
    return result


# =============================================================================================
# Grids
# =============================================================================================


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow without FreeType sizes
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    lines = []
    for para in text.split("\n"):
        words, line = para.split(" "), ""
        for word in words:
            trial = word if not line else f"{line} {word}"
            if draw.textlength(trial, font=font) <= width or not line:
                line = trial
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return lines


def compare_grid(
    image: Image.Image | None,
    panels: list[tuple[str, Image.Image]],
    *,
    cols: int | None = None,
    footer: str | None = None,
    show_original: bool = True,
    original_title: str | None = None,
    pad: int = 10,
    font_size: int = 15,
) -> Image.Image:
    """Panels in a grid, each under its title; the original ``image`` first when ``show_original``
    (titled ``original_title``, default ``"original WxH"``).

    Panels are pasted unscaled, top-centred in equal cells (cell = the largest panel, at least
    260 px wide); ``cols`` defaults to ``ceil(sqrt(n))``. A panel whose ``info["views"]`` names
    views (LLaVA-NeXT) gets a small label over each view. ``footer`` is wrapped under the grid.
    ``out.info["panels"]`` lists ``(title, (x, y, w, h))`` where each panel was pasted.
    """
    cells = list(panels)
    if show_original and image is not None:
        title = original_title or f"original {image.size[0]}x{image.size[1]}"
        cells = [(title, image.convert("RGB"))] + cells
    if not cells:
        raise ValueError("compare_grid needs at least one panel")
    n = len(cells)
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    font, small = _font(font_size), _font(max(10, font_size - 3))
    cw = max(260, max(p.size[0] for _, p in cells))
    ch = max(p.size[1] for _, p in cells)
    title_h = font_size + 10
    label_h = (font_size - 3 + 6) if any(len(p.info.get("views", ())) > 1 for _, p in cells) else 0
    cell_h = title_h + label_h + ch
    width = cols * cw + (cols + 1) * pad
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    foot = _wrap(probe, footer, small, width - 2 * pad) if footer else []
    foot_h = (len(foot) * (font_size + 2) + pad) if foot else 0
    height = rows * cell_h + (rows + 1) * pad + foot_h
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    placed = []
    for k, (title, panel) in enumerate(cells):
        r, c = divmod(k, cols)
        x0 = pad + c * (cw + pad)
        y0 = pad + r * (cell_h + pad)
        draw.text((x0 + 2, y0 + 3), _fit(draw, title, font, cw - 4), fill=(0, 0, 0), font=font)
        px = x0 + (cw - panel.size[0]) // 2
        py = y0 + title_h + label_h
        for name, (vx, _vy, vw, _vh) in panel.info.get("views", []) if label_h else []:
            draw.text(
                (px + vx + 2, y0 + title_h), _fit(draw, name, small, vw - 4), fill=(70, 70, 70), font=small
            )
        grid.paste(panel.convert("RGB"), (px, py))
        placed.append((title, (px, py, panel.size[0], panel.size[1])))
    y = rows * cell_h + (rows + 1) * pad
    for line in foot:
        draw.text((pad, y), line, fill=(60, 60, 60), font=small)
        y += font_size + 2
    grid.info["panels"] = placed
    return grid


# =============================================================================================
# `vlmprune compare`
# =============================================================================================


def load_image(spec: str | None) -> tuple[Image.Image, str]:
    """An RGB image from a file path, or a photograph shipped with scikit-image
    (``skimage:chelsea``, or a bare name in :data:`SKIMAGE_PHOTOS`; default ``chelsea``), or a
    held-out testbed scene (``testbed:N``: the N-th held-out seed, 336x336). Never downloads.
    Returns ``(image, description)``."""
    spec = spec or "skimage:chelsea"
    if spec.startswith("testbed:"):
        from vlmprune.testbed.questions import HELDOUT_BASE
        from vlmprune.testbed.scenes import make_scene

        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"--image {spec!r}: testbed scenes are testbed:N with an integer N") from None
        return make_scene(HELDOUT_BASE + n).image, f"testbed held-out scene {n} (seed HELDOUT_BASE+{n})"
    name = spec.split(":", 1)[1] if spec.startswith("skimage:") else spec
    if spec.startswith("skimage:") or (name in SKIMAGE_PHOTOS and not Path(spec).exists()):
        if name not in SKIMAGE_PHOTOS:
            raise ValueError(f"unknown scikit-image photograph {name!r}; choose one of {SKIMAGE_PHOTOS}")
        try:
            import skimage.data
        except ImportError as err:  # pragma: no cover
            raise ImportError(
                "the default photographs need scikit-image: pip install 'vlmprune[viz]'"
            ) from err
        return Image.fromarray(getattr(skimage.data, name)()).convert("RGB"), f"skimage.data.{name}()"
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--image {spec!r}: no such file (or use skimage:{'|'.join(SKIMAGE_PHOTOS)})")
    return Image.open(path).convert("RGB"), path.name


def default_model_spec() -> str:
    """``testbed/llava`` when it holds a saved checkpoint (``config.json``; looked up in the working
    directory, then the source checkout), else ``tiny-llava`` (random weights, 336 px / 576 tokens)."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = root / "testbed" / "llava"
        if (candidate / "config.json").is_file():
            return str(candidate)
    return "tiny-llava"


def display_size_for(image_size: tuple[int, int], max_side: int | None, views: int = 1) -> tuple[int, int]:
    """Display ``(W', H')`` of an image of ``image_size``: never upscaled, longest side at most
    ``max_side`` (``max_side / sqrt(2)`` per view when a rendering has two views side by side)."""
    w, h = image_size
    if not max_side:
        return w, h
    limit = max_side / math.sqrt(views)
    s = min(1.0, limit / max(w, h))
    return max(1, round(w * s)), max(1, round(h * s))


def panel_title(method, selection) -> str:
    """``"PromPrune: 64/576 kept"`` (in-LLM methods name their layer)."""
    title = f"{type(method).__name__}: {len(selection.kept)}/{selection.num_tokens} kept"
    if selection.stage == "in_llm":
        title += f" (from layer {method.llm_layer})"
    return title


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image",
        default=None,
        help=f"image file, skimage:NAME for a photograph shipped with scikit-image ({', '.join(SKIMAGE_PHOTOS)}), "
        "or testbed:N for a held-out testbed scene; default skimage:chelsea",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        help=f"method names (space or comma separated; default {' '.join(DEFAULT_METHODS)})",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--budget", type=int, default=None, help="visual tokens kept per image (default 64)")
    group.add_argument(
        "--ratio", type=float, default=None, help="kept fraction in (0, 1] instead of --budget"
    )
    parser.add_argument("--out", default="compare.png", help="output PNG (default compare.png)")
    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint dir / hub id, or tiny-llava|tiny-llava-next|tiny-qwen2.5-vl|tiny-qwen2-vl; default "
        "testbed/llava if present, else tiny-llava (random weights: its saliency is not meaningful)",
    )
    parser.add_argument(
        "--prompt", default="What is in the image?", help="question the text-aware methods see"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto (default)")
    parser.add_argument("--cols", type=int, default=None, help="grid columns (default ceil(sqrt(panels)))")
    parser.add_argument(
        "--max-side",
        type=int,
        default=640,
        help="longest side of the shown image in px (LLaVA-NeXT: /sqrt(2) per view)",
    )


def _methods(names: list[str]) -> list[str]:
    return [n.strip() for part in names for n in part.split(",") if n.strip()]


def main(args) -> int:
    import torch

    import vlmprune
    from vlmprune.run import load_model, make_prompt_inputs

    image, image_desc = load_image(args.image)
    names = _methods(args.methods)
    known = set(vlmprune.list_methods())
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown method(s) {unknown}; known: {', '.join(sorted(known))}", file=sys.stderr)
        return 2
    spec = args.model or default_model_spec()
    budget = args.budget if (args.budget is not None or args.ratio is not None) else 64
    size_kw = {"ratio": args.ratio} if args.ratio is not None else {"budget": budget}
    try:  # argument errors as one line, before anything is loaded
        for name in names:
            vlmprune.get_method(name, **size_kw)
    except ValueError as err:
        print(f"vlmprune compare: {err}", file=sys.stderr)
        return 2
    try:
        loaded = load_model(spec, device=args.device, dtype=args.dtype)
    except Exception as err:  # a testbed being (re)written while we read it: say so, use the tiny model
        if args.model is not None or spec == "tiny-llava":
            raise
        print(f"note: could not load {spec} ({type(err).__name__}: {err}); using tiny-llava", file=sys.stderr)
        loaded = load_model("tiny-llava", device=args.device, dtype=args.dtype)
    inputs = make_prompt_inputs(loaded, image, args.prompt)
    info = layout_info(loaded.model, loaded.processor)
    display = display_size_for(image.size, args.max_side, 2 if info.family == "llava_next" else 1)
    w, h = image.size
    panels, n_tokens = [], None
    for name in names:
        method = vlmprune.get_method(name, **size_kw)
        with torch.no_grad(), method(loaded.model):
            loaded.model.generate(**inputs, max_new_tokens=1, do_sample=False)
        sel = method.last_selection[0]
        n_tokens = sel.num_tokens
        panels.append((panel_title(method, sel), render_selection(image, sel, info, display_size=display)))
        print(f"{name:<10} kept {len(sel.kept):>5} of {sel.num_tokens} ({sel.stage})")
    amount = f"budget {budget}" if args.ratio is None else f"ratio {args.ratio}"
    footer = (
        f"model: {loaded.description}; image: {image_desc} {w}x{h}; {amount} of {n_tokens} visual tokens; "
        f"prompt: {args.prompt!r}\n{describe_geometry(info.family, image.size, info.config)}\n{LEGEND}"
    )
    if loaded.tiny:
        footer += (
            "\nNOTE: a tiny model with RANDOM weights: its saliency and attention are not meaningful, so these "
            "panels show each method's mechanics (geometry, budget, spread), not what a trained model would keep."
        )
    cols = args.cols or (2 if info.family == "llava_next" else None)  # two-view panels are wide
    shown = image.resize(display, Image.BICUBIC)
    grid = compare_grid(shown, panels, cols=cols, footer=footer, original_title=f"original ({w}x{h})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print(f"wrote {out} ({grid.size[0]}x{grid.size[1]}, {len(panels)} methods + original)")
    return 0
