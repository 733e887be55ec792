"""Seeing what was kept: renderings of a selection and comparison grids (PIL and numpy only).

The geometry (where each token came from, as a box in original-image pixels) is the family
adapter's (:func:`token_geometry`); everything here draws from that source map alone:

* :func:`render_selection`: the image with the kept tokens' pixels unchanged, the dropped ones
  blended ``dim`` (70%) toward dark grey, tokens folded into a kept token (merging methods'
  ``assignment``) tinted with that kept token's group colour and outlined, and pixels the model
  never saw (a centre crop, unpadding) hatched; a geometry of several views renders them side by
  side.
* :func:`compare_grid`: panels in a grid under their titles, with a footer.

Pixel rule: a token owns the pixels whose *centres* fall in its box (:func:`box_pixels`), so
adjacent boxes never share a pixel and tests can check renderings pixel by pixel.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlmprune.adapters import TokenGeometry, get_adapter

# Colours of the renderings (RGB).
DROP_GREY = (40, 40, 40)  # dropped tokens are blended toward this
UNSEEN_DARK = (12, 12, 12)  # pixels no token saw
UNSEEN_HATCH = (110, 110, 110)
BACKGROUND = (255, 255, 255)
VIEW_GAP = 8  # px between the views of a several-view rendering

LEGEND = (
    "plain: kept tokens   dimmed: dropped   tinted + outlined: merged into the kept token of that colour   "
    "hatched: not seen by the model"
)


def token_geometry(model, processor, image_size, selection=None) -> TokenGeometry:
    """The :class:`~vlmprune.adapters.TokenGeometry` of one image of ``image_size`` (W, H) as
    ``processor`` and ``model`` turned it into tokens (from the family adapter). With a
    ``selection``, its token count is checked, so a wrong processor raises instead of drawing nonsense."""
    adapter = get_adapter(model)
    geo = adapter.token_geometry(tuple(image_size), processor, selection)
    if selection is not None and int(selection.num_tokens) != geo.num_tokens:
        raise ValueError(
            f"{adapter.family}: the geometry of a {image_size[0]}x{image_size[1]} image has {geo.num_tokens} tokens "
            f"(views {dict(zip(geo.views, geo.grids))}) but the selection has {selection.num_tokens}; "
            "is this the image (and processor) the model saw?"
        )
    return geo


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
    geometry: TokenGeometry,
    *,
    display_size: tuple[int, int] | None = None,
    dim: float = 0.7,
    tint: float = 0.35,
    shade: float = 0.3,
    outline: int | None = None,
) -> Image.Image:
    """The image as the model's tokens saw it after pruning.

    ``image``: the PIL image given to the processor (its ``size`` fixes the geometry);
    ``selection``: that image's :class:`~vlmprune.Selection`; ``geometry``: its
    :class:`~vlmprune.adapters.TokenGeometry` (:func:`token_geometry`). ``display_size`` ``(W', H')``
    renders on the image resized (bicubic) to that size (default: the original size).

    Kept tokens' pixels are the display image unchanged; dropped ones are
    ``(1 - dim) * pixel + dim * DROP_GREY``; tokens a merging method folded into a kept token are
    ``(1 - tint - shade) * pixel + tint * colour(slot) + shade * DROP_GREY`` (a kept token's group:
    shaded and tinted with one colour, outlined in it; the kept token itself plain); pixels seen by no token
    are hatched. A geometry of several views (a base and a high-res view) renders them side by side,
    :data:`VIEW_GAP` px apart.
    ``out.info["views"]`` lists ``(name, (x, y, w, h))`` of each view in the returned image.
    """
    image = image.convert("RGB")
    geo = geometry
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
    views gets a small label over each view. ``footer`` is wrapped under the grid.
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


def display_size_for(image_size: tuple[int, int], max_side: int | None, views: int = 1) -> tuple[int, int]:
    """Display ``(W', H')`` of an image of ``image_size``: never upscaled, longest side at most
    ``max_side`` (``max_side / sqrt(views)`` per view when a rendering has several views side by side)."""
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
