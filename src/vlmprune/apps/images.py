"""Images for the tools: files, photographs shipped with scikit-image, plugin sources, synthetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlmprune.apps.errors import UsageError

SKIMAGE_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")


def random_image(seed: int, size=(84, 84)) -> Image.Image:
    """A deterministic RGB image with smooth structure (not pure noise), ``size`` = (W, H)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3))
    for c in range(3):
        fx, fy, ph = rng.uniform(0.02, 0.2, 2).tolist() + [rng.uniform(0, 6.28)]
        img[..., c] = 0.5 + 0.5 * np.sin(fx * xx + fy * yy + ph)
    for _ in range(3):
        x0, y0 = rng.integers(0, w - 10), rng.integers(0, h - 10)
        img[y0 : y0 + rng.integers(5, 20), x0 : x0 + rng.integers(5, 20)] = rng.uniform(0, 1, 3)
    return Image.fromarray((img * 255).astype("uint8"))


def image_help() -> str:
    """What ``--image`` accepts, for ``--help``."""
    from vlmprune.apps.plugins import registry

    extra = "".join(f", {prefix}:{h}" for prefix, (_, h) in registry().images.items())
    return f"an image file, skimage:NAME ({', '.join(SKIMAGE_PHOTOS)}){extra}"


def load_image(spec: str | None) -> tuple[Image.Image, str]:
    """``(RGB image, description)`` from a file path, ``skimage:NAME`` (a photograph shipped with
    scikit-image; default ``skimage:chelsea``) or a plugin's ``PREFIX:ARG``. Never downloads;
    a wrong spec raises :class:`UsageError` naming ``--image``."""
    from vlmprune.apps.plugins import registry

    spec = spec or "skimage:chelsea"
    prefix, _, arg = spec.partition(":")
    sources = registry().images
    if arg and prefix in sources:
        return sources[prefix][0](arg)
    if prefix == "skimage" and arg:
        return _photo(arg)
    path = Path(spec)
    if not path.exists():
        raise UsageError("--image", f"{spec!r}: no such file (expected {image_help()})")
    if path.is_dir():
        raise UsageError("--image", f"{spec!r} is a directory, not an image file")
    try:
        return Image.open(path).convert("RGB"), path.name
    except (UnidentifiedImageError, OSError) as err:
        raise UsageError("--image", f"{spec!r} is not an image PIL can read ({type(err).__name__})") from None


def _photo(name: str) -> tuple[Image.Image, str]:
    if name not in SKIMAGE_PHOTOS:
        raise UsageError(
            "--image", f"unknown photograph skimage:{name}; choose one of {', '.join(SKIMAGE_PHOTOS)}"
        )
    try:
        import skimage.data
    except ImportError:
        raise UsageError(
            "--image", "skimage photographs need scikit-image: pip install 'vlmprune[viz]'"
        ) from None
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB"), f"skimage.data.{name}()"
