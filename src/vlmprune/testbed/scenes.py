"""Deterministic procedural scenes for the testbed VLMs (PIL only, no network).

``make_scene(seed)`` draws a 336x336 image (or any multiple of 14 in each side for the dynamic
resolution testbed) with a textured or gradient background and 1-15 non-overlapping objects, and
returns a :class:`Scene`: the image, the structured description (each object's shape, colour, size
class, bbox, centre, pixel area) and dense per-patch labels on the 14-px patch grid (which object
covers each patch, its colour and shape id, object-centre flags) for auxiliary losses.

Scene kinds span the range the pruning methods are about:

* ``"few"``: 1-4 large prominent subjects (saliency-friendly);
* ``"mixed"``: 1-3 large subjects plus 3-10 small objects around them (subject + context);
* ``"crowded"``: 8-15 small/medium objects spread over the image (coverage-heavy).

A ``level`` in [0, 1] (the curriculum) shifts the mix from mostly ``few`` to mostly ``crowded``.
Everything is a pure function of ``(seed, level, width, height)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

PATCH = 14
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
RGB = {
    "red": (220, 30, 30),
    "green": (30, 165, 50),
    "blue": (35, 70, 225),
    "yellow": (245, 220, 25),
    "purple": (150, 45, 200),
    "orange": (250, 135, 15),
    "white": (250, 250, 250),
    "black": (12, 12, 12),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
SIZES = ("small", "medium", "large")
PATTERN_PERIOD = 6  # px: every shape's surface pattern repeats within any 14-px patch
SIZE_PX = {"small": (16, 27), "medium": (30, 50), "large": (62, 104)}  # bounding-box side in px
KINDS = ("few", "mixed", "crowded")


@dataclass
class SceneObject:
    shape: str
    colour: str
    size: str
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    centre: tuple[float, float]  # x, y
    area: int = 0  # visible pixels

    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def to_dict(self) -> dict:
        return dict(
            shape=self.shape,
            colour=self.colour,
            size=self.size,
            bbox=list(self.bbox),
            centre=list(self.centre),
            area=self.area,
        )


@dataclass
class Scene:
    seed: int
    kind: str
    image: Image.Image
    objects: list[SceneObject]
    background: str  # "gradient" | "texture"
    # dense labels on the (H/14, W/14) patch grid
    patch_object: np.ndarray = field(repr=False)  # int, -1 background else index into objects
    patch_colour: np.ndarray = field(repr=False)  # 0 background, 1 + COLOURS index
    patch_shape: np.ndarray = field(repr=False)  # 0 background, 1 + SHAPES index
    patch_centre: np.ndarray = field(repr=False)  # 1 where an object's centre lies
    object_map: np.ndarray | None = field(
        default=None, repr=False
    )  # (H, W) uint8: 0 background, 1 + object index

    def coverage(self, block: int = PATCH, cells: int = 7) -> np.ndarray:
        """(H/block, W/block, cells*cells) fraction of object pixels in each sub-cell of each block:
        the shape geometry inside every patch (an auxiliary target)."""
        fg = (self.object_map > 0).astype(np.float32)
        h, w = fg.shape
        c = block // cells
        g = fg.reshape(h // block, cells, c, w // block, cells, c).mean(axis=(2, 5))  # (gh, cells, gw, cells)
        return g.transpose(0, 2, 1, 3).reshape(h // block, w // block, cells * cells)

    @property
    def grid(self) -> tuple[int, int]:
        return self.patch_object.shape

    def describe(self) -> dict:
        return dict(
            seed=self.seed,
            kind=self.kind,
            background=self.background,
            width=self.image.width,
            height=self.image.height,
            objects=[o.to_dict() for o in self.objects],
        )

    def count(self, colour: str | None = None, shape: str | None = None) -> int:
        return sum(
            1
            for o in self.objects
            if (colour is None or o.colour == colour) and (shape is None or o.shape == shape)
        )


# --------------------------------------------------------------------------------------------- drawing
def _hsv_to_rgb(h, s, v):
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array([r, g, b]) * 255


def _muted(rng) -> np.ndarray:
    """A desaturated mid-tone: backgrounds never look like an object colour."""
    return _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.05, 0.3), rng.uniform(0.35, 0.68))


def _background(rng, w, h) -> tuple[np.ndarray, str]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.5:
        a, b = _muted(rng), _muted(rng)
        ang = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(ang) + yy * math.sin(ang)
        t = (t - t.min()) / max(1e-6, t.max() - t.min())
        img = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
        kind = "gradient"
    else:
        base = _muted(rng)
        img = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
        for _ in range(3):  # a few oriented sinusoids of low amplitude
            f = rng.uniform(0.03, 0.25)
            ang = rng.uniform(0, math.pi)
            amp = rng.uniform(6, 18)
            img += (
                amp
                * np.sin(f * (xx * math.cos(ang) + yy * math.sin(ang)) + rng.uniform(0, 6.3))[..., None]
                * rng.uniform(0.5, 1.0, 3)[None, None]
            )
        kind = "texture"
    img += rng.normal(0, 4, (h, w, 3))
    return np.clip(img, 0, 255), kind


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float):
    if shape == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        pts = [(x * 0.9, y * 0.9) for x, y in pts]
    elif shape == "triangle":
        pts = [(0, -1), (0.95, 0.8), (-0.95, 0.8)]
    elif shape == "diamond":
        pts = [(0, -1), (0.7, 0), (0, 1), (-0.7, 0)]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "cross":
        t = 0.33
        pts = [
            (-t, -1),
            (t, -1),
            (t, -t),
            (1, -t),
            (1, t),
            (t, t),
            (t, 1),
            (-t, 1),
            (-t, t),
            (-1, t),
            (-1, -t),
            (-t, -t),
        ]
    else:
        raise ValueError(shape)
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


# Each shape's surface pattern ("material"): 1 where the pixel takes the pattern's second tone.
# Offsets are relative to the object's centre, so the pattern is the same wherever the object is.
def _pattern(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    period = PATTERN_PERIOD
    if shape == "circle":
        return np.zeros(dx.shape, bool)  # solid
    if shape == "square":
        return (np.floor(dy / (period / 2)) % 2).astype(bool)  # horizontal stripes
    if shape == "triangle":
        return (np.floor(dx / (period / 2)) % 2).astype(bool)  # vertical stripes
    if shape == "star":
        return ((np.floor(dx / (period / 2)) + np.floor(dy / (period / 2))) % 2).astype(bool)  # checks
    if shape == "cross":
        return (np.floor((dx + dy) / (period / 1.4)) % 2).astype(bool)  # diagonal stripes
    if shape == "diamond":
        return (np.floor((dx - dy) / (period / 1.4)) % 2).astype(bool)  # anti-diagonal stripes
    raise ValueError(shape)


def second_tone(rgb) -> np.ndarray:
    """The pattern's second tone: darker for light colours, lighter for dark ones."""
    rgb = np.asarray(rgb, np.float64)
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return rgb * 0.55 if lum > 70 else rgb + (255 - rgb) * 0.45


def _paint(bg: np.ndarray, idmap: np.ndarray, specs, fills) -> np.ndarray:
    """Fill each object's pixels (``idmap == i + 1``) with its colour and its shape's pattern."""
    img = bg.astype(np.float64).copy()
    for i, (shape, _colour, _size, cx, cy, _r, _rot) in enumerate(specs):
        ys, xs = np.nonzero(idmap == i + 1)
        if not len(ys):
            continue
        two = _pattern(shape, xs + 0.5 - cx, ys + 0.5 - cy)
        img[ys, xs] = np.where(two[:, None], second_tone(fills[i])[None], fills[i][None])
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx, cy, r, rot, fill):
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rot), fill=fill)


# --------------------------------------------------------------------------------------------- layout
def _plan(rng, kind: str) -> list[str]:
    if kind == "few":
        n = int(rng.integers(1, 5))
        return ["large" if rng.random() < 0.7 else "medium" for _ in range(n)]
    if kind == "mixed":
        return ["large"] * int(rng.integers(1, 4)) + ["small"] * int(rng.integers(3, 11))
    n = int(rng.integers(8, 16))
    return ["small" if rng.random() < 0.6 else "medium" for _ in range(n)]


def _kind_for(rng, level: float) -> str:
    level = min(max(level, 0.0), 1.0)
    p = np.array([1.0 - 0.7 * level, 0.1 + 0.5 * level, 0.05 + 0.7 * level])
    return KINDS[int(rng.choice(3, p=p / p.sum()))]


def make_scene(
    seed: int, level: float = 1.0, width: int = 336, height: int = 336, kind: str | None = None
) -> Scene:
    """The scene of ``seed`` (deterministic). ``level`` in [0, 1] is the curriculum difficulty."""
    if width % PATCH or height % PATCH:
        raise ValueError(f"`width` and `height` must be multiples of {PATCH}, got {width}x{height}")
    rng = np.random.default_rng([int(seed), 7919])
    kind = kind or _kind_for(rng, level)
    bg, bg_kind = _background(rng, width, height)
    sizes = _plan(rng, kind)
    scale = min(width, height) / 336
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    order = rng.permutation(len(combos))
    placed: list[tuple[float, float, float]] = []  # cx, cy, half side
    objs: list[SceneObject] = []
    specs = []
    ci = 0
    for size in sorted(sizes, key=lambda s: -SIZE_PX[s][0]):  # big ones first: they are hardest to place
        lo, hi = SIZE_PX[size]
        for _ in range(60):
            side = rng.uniform(lo, hi) * scale
            r = side / 2
            cx, cy = rng.uniform(r + 2, width - r - 2), rng.uniform(r + 2, height - r - 2)
            if all(max(abs(cx - px), abs(cy - py)) > r + pr + 4 for px, py, pr in placed):
                break
        else:
            continue
        placed.append((cx, cy, r))
        colour, shape = combos[order[ci]]
        ci += 1
        # squares, diamonds and crosses stay near upright so a square never turns into a diamond
        rot = {
            "circle": 0.0,
            "triangle": rng.uniform(0, 2 * math.pi),
            "star": rng.uniform(0, 2 * math.pi),
        }.get(shape, rng.uniform(-0.3, 0.3))
        specs.append((shape, colour, size, cx, cy, r, rot))
    # the scene order (and so object indices) is a random permutation, not size order
    perm = rng.permutation(len(specs))
    specs = [specs[i] for i in perm]
    ids = Image.new("L", (width, height), 0)
    idraw = ImageDraw.Draw(ids)
    fills = []
    for i, (shape, colour, size, cx, cy, r, rot) in enumerate(specs):
        jitter = rng.integers(-12, 13, 3)
        fills.append(np.clip(np.array(RGB[colour]) + jitter, 0, 255))
        _draw(idraw, shape, cx, cy, r, rot, i + 1)
        bbox = (
            int(max(0, math.floor(cx - r))),
            int(max(0, math.floor(cy - r))),
            int(min(width, math.ceil(cx + r))),
            int(min(height, math.ceil(cy + r))),
        )
        objs.append(SceneObject(shape, colour, size, bbox, (round(cx, 2), round(cy, 2))))
    idmap = np.asarray(ids)
    img = Image.fromarray(_paint(bg, idmap, specs, fills))
    areas = np.bincount(idmap.ravel(), minlength=len(objs) + 1)
    for i, o in enumerate(objs):
        o.area = int(areas[i + 1])
    gh, gw = height // PATCH, width // PATCH
    blocks = idmap.reshape(gh, PATCH, gw, PATCH).transpose(0, 2, 1, 3).reshape(gh, gw, PATCH * PATCH)
    counts = np.zeros((gh, gw, len(objs) + 1), np.int32)
    for k in range(len(objs) + 1):
        counts[..., k] = (blocks == k).sum(-1)
    fg = counts[..., 1:]
    best = fg.argmax(-1) if objs else np.zeros((gh, gw), np.int64)
    cover = fg.max(-1) if objs else np.zeros((gh, gw), np.int32)
    patch_object = np.where(cover >= 0.2 * PATCH * PATCH, best, -1).astype(np.int64)
    col_ids = np.array([COLOURS.index(o.colour) + 1 for o in objs] + [0], np.int64)
    shp_ids = np.array([SHAPES.index(o.shape) + 1 for o in objs] + [0], np.int64)
    patch_colour = col_ids[patch_object]  # index -1 picks the trailing 0
    patch_shape = shp_ids[patch_object]
    patch_centre = np.zeros((gh, gw), np.int64)
    for o in objs:
        patch_centre[min(gh - 1, int(o.centre[1] // PATCH)), min(gw - 1, int(o.centre[0] // PATCH))] = 1
    return Scene(seed, kind, img, objs, bg_kind, patch_object, patch_colour, patch_shape, patch_centre, idmap)
