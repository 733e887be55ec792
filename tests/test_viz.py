"""Token geometry, renderings and the `run` / `compare` commands, checked pixel by pixel.

Real photographs from ``skimage.data`` (bundled with scikit-image, no download). Geometry is
checked against the stock image processors' own pixels: every token's box, resampled from the
original photo, must match the patch the processor handed to the model (and a box shifted by one
token must not).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_processing_utils import select_best_resolution
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

import vlmprune
from vlmprune import testing
from vlmprune.adapters import family as family_class
from vlmprune.apps.cli import entry
from vlmprune.apps.viz import (
    DROP_GREY,
    VIEW_GAP,
    box_pixels,
    compare_grid,
    render_selection,
    token_geometry,
    token_status,
)

skimage_data = pytest.importorskip("skimage.data")

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])
FAMILIES = list(testing.FAMILIES)


def kind(family: str) -> str:
    """How the family's processor lays out pixels: one CLIP crop, anyres crops, or merged patches."""
    config = model_of(family)[0].config
    if getattr(config.vision_config, "spatial_merge_size", None):
        return "merged"
    if getattr(config, "downsample_ratio", None):
        return "tiles"
    return "anyres" if getattr(config, "image_grid_pinpoints", None) else "crop"


def photo(name: str = "chelsea") -> Image.Image:
    return Image.fromarray(getattr(skimage_data, name)()).convert("RGB")


@lru_cache(maxsize=8)
def model_of(family: str):
    return testing.tiny_model(family, **family_class(family).demo_size)


def run_method(family: str, name: str, image: Image.Image, **kw):
    model, proc = model_of(family)
    inputs = testing.make_inputs(family, proc, ["What is in the image?"], [[image]])
    method = vlmprune.get_method(name, **kw)
    with torch.no_grad(), method(model):
        model.generate(**inputs, max_new_tokens=1)
    return method, method.last_selection[0]


# ------------------------------------------------------------------------------------ geometry
def unpad_slices(feature_hw, original_hw):
    """Reference: rows and columns of the padded high-res feature grid that LLaVA-NeXT's
    ``unpad_image`` keeps."""
    cur_h, cur_w = feature_hw
    oh, ow = original_hw
    if ow / oh > cur_w / cur_h:
        new_h = int(round(oh * (cur_w / ow), 7))
        pad = (cur_h - new_h) // 2
        return slice(pad, cur_h - pad), slice(0, cur_w)
    new_w = int(round(ow * (cur_h / oh), 7))
    pad = (cur_w - new_w) // 2
    return slice(0, cur_h), slice(pad, cur_w - pad)


def config_of(model) -> dict:
    """The numbers the reference patch extraction needs, from the model config."""
    v = model.config.vision_config
    first = lambda x: int(x[0]) if isinstance(x, (list, tuple)) else int(x)  # noqa: E731 (InternViT: [h, w])
    cfg = {"patch_size": first(v.patch_size), "merge_size": int(getattr(v, "spatial_merge_size", 1))}
    if hasattr(v, "image_size"):
        cfg["vision_image_size"] = first(v.image_size)
    if getattr(model.config, "image_grid_pinpoints", None):
        cfg["image_grid_pinpoints"] = [tuple(p) for p in model.config.image_grid_pinpoints]
    if getattr(model.config, "vision_aspect_ratio", None):
        cfg["anyres_max"] = int(model.config.vision_aspect_ratio.removeprefix("anyres_max_"))
    return cfg


def _denorm(chw: np.ndarray) -> np.ndarray:
    """(3, h, w) normalised pixels -> (h, w, 3) in 0..255."""
    return (np.asarray(chw, np.float64).transpose(1, 2, 0) * STD + MEAN) * 255


def _grid_patches(a: np.ndarray, rows: int, cols: int, p: int) -> list[np.ndarray]:
    return [a[r * p : (r + 1) * p, c * p : (c + 1) * p] for r in range(rows) for c in range(cols)]


def processor_patches(family: str, proc, image: Image.Image, cfg: dict) -> list[np.ndarray]:
    """The processor's pixels of each visual token, in the model's token order."""
    p = cfg["patch_size"]
    out = proc.image_processor(image, return_tensors="np")
    pv = out["pixel_values"]
    if kind(family) == "crop":
        a = _denorm(pv[0])
        return _grid_patches(a, a.shape[0] // p, a.shape[1] // p, p)
    if kind(family) == "tiles":  # InternVL: tiles then a thumbnail, each token a 2x2 patch group
        g = cfg["vision_image_size"] // (2 * p)
        return [pat for tile in pv for pat in _grid_patches(_denorm(tile), g, g, 2 * p)]
    if kind(family) == "anyres":
        tiles = pv[0]  # (crops, 3, s, s): base, then the tiles in raster order
        g = cfg["vision_image_size"] // p
        pats = _grid_patches(_denorm(tiles[0]), g, g, p)
        w, h = image.size
        bh, bw = select_best_resolution((h, w), cfg["image_grid_pinpoints"])
        per_row = bw // cfg["vision_image_size"]
        rows, cols = unpad_slices(((bh // cfg["vision_image_size"]) * g, per_row * g), (h, w))
        canvas = np.concatenate(
            [
                np.concatenate([_denorm(tiles[1 + tr * per_row + tc]) for tc in range(per_row)], 1)
                for tr in range(bh // cfg["vision_image_size"])
            ]
        )  # the tiles stitched: (bh, bw, 3) processor pixels
        kept = canvas[rows.start * p : rows.stop * p, cols.start * p : cols.stop * p]
        n_r, n_c = rows.stop - rows.start, cols.stop - cols.start
        if "anyres_max" in cfg:  # LLaVA-OneVision shrinks a grid of more than M tiles' tokens
            ratio = math.sqrt(n_r * n_c / (cfg["anyres_max"] * g * g))
            if ratio > 1.1:
                n_r, n_c = int(n_r // ratio), int(n_c // ratio)
                kept = np.asarray(
                    Image.fromarray(kept.clip(0, 255).astype(np.uint8)).resize(
                        (n_c * p, n_r * p), Image.BILINEAR
                    ),
                    np.float64,
                )
        return pats + _grid_patches(kept, n_r, n_c, p)
    # Qwen: rows of pixel_values are (t, h/m, w/m, m, m) patches of (C, tp, p, p)
    t, gh, gw = (int(v) for v in out["image_grid_thw"][0])
    m = cfg["merge_size"]
    x = pv.reshape(t, gh // m, gw // m, m, m, 3, -1, p, p)[0, ..., 0, :, :]  # (bh, bw, mh, mw, C, p, p)
    a = x.transpose(0, 2, 5, 1, 3, 6, 4).reshape(gh * p, gw * p, 3) * STD + MEAN
    return _grid_patches(a * 255, gh // m, gw // m, p * m)


def _mae(image: Image.Image, boxes: np.ndarray, patches, shift=(0.0, 0.0)) -> float:
    """Mean |processor patch - original region resampled| over tokens whose (shifted) box is a
    whole cell inside the image."""
    width, height = image.size
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    whole = (bw > 0.999 * bw.max()) & (bh > 0.999 * bh.max())
    errs = []
    for box, pat, ok in zip(boxes, patches, whole):
        x0, y0, x1, y1 = box
        dx, dy = (x1 - x0) * shift[0], (y1 - y0) * shift[1]
        b = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
        if not ok or b[0] < 0 or b[1] < 0 or b[2] > width or b[3] > height:
            continue
        ref = np.asarray(image.resize((pat.shape[1], pat.shape[0]), Image.BILINEAR, box=b), np.float64)
        errs.append(np.abs(ref - pat).mean())
    assert len(errs) >= 8
    return float(np.mean(errs))


@pytest.mark.parametrize("family", FAMILIES + ["llava_pad"])
def test_boxes_match_processor_pixels(family):
    fam = "llava" if family == "llava_pad" else family
    model, proc = model_of(fam)
    if family == "llava_pad":  # LlavaImageProcessor(do_pad=True): pad to square, then resize + crop
        from transformers import LlavaImageProcessorPil

        ip = LlavaImageProcessorPil(
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_pad=True
        )
        proc = SimpleNamespace(image_processor=ip)
    cfg = config_of(model)
    for name in ("chelsea", "coffee", "astronaut"):
        for image in (photo(name), photo(name).transpose(Image.Transpose.ROTATE_90)):
            geo = token_geometry(model, proc, image.size)
            patches = processor_patches(fam, proc, image, cfg)
            assert len(patches) == geo.num_tokens
            for view in np.unique(geo.view):  # each view (base, tiles, thumbnail, ...) on its own
                sel = geo.view == view
                boxes, pats = geo.boxes[sel], [pat for pat, s in zip(patches, sel) if s]
                right = _mae(image, boxes, pats)
                assert right < 3.0, (name, image.size, view, right)  # resampling noise only (0..255)
                if image.size[0] != image.size[1] or family != "llava":  # square llava: no x shift room
                    assert _mae(image, boxes, pats, (1.0, 0.0)) > 4 * right
                assert _mae(image, boxes, pats, (0.0, 1.0)) > 4 * right


def test_llava_next_token_order_matches_pack_image_features():
    """Content token i of the adapter's order is the cell of the unpadded high-res grid in raster
    order (what the adapter's regions and the geometry assume)."""
    model, proc = model_of("llava_next")
    cfg = config_of(model)
    g = cfg["vision_image_size"] // cfg["patch_size"]
    n = g * g
    for w, h in [(451, 300), (300, 451), (600, 400), (512, 512), (900, 200)]:
        size = torch.tensor([h, w])
        bh, bw = select_best_resolution((h, w), cfg["image_grid_pinpoints"])
        per_row = bw // cfg["vision_image_size"]
        crops = 1 + (bh // cfg["vision_image_size"]) * per_row
        src = torch.arange(crops * n, dtype=torch.float64).view(crops, n, 1)
        packed, _ = model.model.pack_image_features(
            [src], size[None], "default", torch.tensor([-1.0], dtype=torch.float64)
        )
        source = packed[0][:, 0].round().long()
        source = source[source >= 0]  # content tokens, newlines dropped
        geo = token_geometry(model, proc, (w, h))
        assert geo.num_tokens == source.numel()
        rows, cols = unpad_slices(((bh // cfg["vision_image_size"]) * g, per_row * g), (h, w))
        width = cols.stop - cols.start
        for i, s in enumerate(source[n:].tolist()):
            crop, patch = divmod(s, n)
            r = (crop - 1) // per_row * g + patch // g
            c = (crop - 1) % per_row * g + patch % g
            assert (r - rows.start, c - cols.start) == divmod(i, width)
        assert (source[:n] == torch.arange(n)).all()


def test_token_geometry_api_and_mismatch():
    model, proc = model_of("qwen2_vl")
    image = photo("coffee")
    _, sel = run_method("qwen2_vl", "random", image, budget=10)
    geo = token_geometry(model, proc, image.size, sel)
    assert geo.num_tokens == sel.num_tokens and geo.boxes.shape == (sel.num_tokens, 4)
    rh, rw = smart_resize(400, 600, 28, 56 * 56, 336 * 336)
    assert sel.grid == (1, rh // 28, rw // 28)
    assert tuple(geo.boxes[0]) == (0.0, 0.0, 600 / (rw // 28), 400 / (rh // 28))
    assert tuple(geo.boxes[-1][2:]) == (600.0, 400.0)
    assert np.array_equal(
        token_geometry(model, proc, image.size).boxes, geo.boxes
    )  # the processor's own grid
    llava, llava_proc = model_of("llava")
    with pytest.raises(ValueError, match="selection has"):
        token_geometry(llava, llava_proc, image.size, sel)


# ----------------------------------------------------------------------------------- rendering
def check_render(out: Image.Image, shown: Image.Image, geo, sel, dim: float = 0.7) -> dict:
    """Pixel facts of a rendering; returns counts per status."""
    dw, dh = shown.size
    n_views = len(geo.views)
    assert out.size == (n_views * dw + (n_views - 1) * VIEW_GAP, dh)
    arr = np.asarray(out).astype(np.float64)
    ref = np.asarray(shown).astype(np.float64)
    scale = (dw / geo.image_size[0], dh / geo.image_size[1])
    status, _ = token_status(sel)
    counts = {"kept": 0, "dropped": 0, "merged": 0}
    drop_out, drop_ref = [], []
    for v in range(n_views):
        x_off = v * (dw + VIEW_GAP)
        owned = np.zeros((dh, dw), bool)
        for i in np.nonzero(geo.view == v)[0]:
            r0, r1, c0, c1 = box_pixels(geo.boxes[i], scale)
            if r1 <= r0 or c1 <= c0:
                continue
            owned[r0:r1, c0:c1] = True
            got, want = arr[r0:r1, x_off + c0 : x_off + c1], ref[r0:r1, c0:c1]
            if status[i] == 1:
                assert np.array_equal(got, want), f"kept token {i} changed"
                counts["kept"] += 1
            elif status[i] == 0:
                expected = (1 - dim) * want + dim * np.asarray(DROP_GREY, np.float64)
                assert np.abs(got - expected).max() <= 1.0, f"dropped token {i} not dimmed"
                drop_out.append(got.mean())
                drop_ref.append(want.mean())
                counts["dropped"] += 1
            else:
                assert not np.array_equal(got, want), f"merged token {i} not drawn"
                counts["merged"] += 1
        unseen = ~owned
        if unseen.any():  # pixels no token of this view saw are hatched dark, never the photo itself
            assert arr[:, x_off : x_off + dw][unseen].mean() < 0.6 * ref[unseen].mean() + 1
    if drop_out:  # mean intensity of dropped areas: (1 - dim) * original + dim * grey
        m_out, m_ref = float(np.mean(drop_out)), float(np.mean(drop_ref))
        assert m_out == pytest.approx((1 - dim) * m_ref + dim * np.mean(DROP_GREY), abs=0.6)
        assert m_out < m_ref
    return counts


@pytest.mark.parametrize("family", FAMILIES)
def test_render_each_layout(family):
    model, proc = model_of(family)
    image = photo("chelsea")
    for name, kw in (("divprune", {"budget": 20}), ("sppruner", {"budget": 20}), ("fastv", {"ratio": 0.25})):
        method, sel = run_method(family, name, image, **kw)
        geo = token_geometry(model, proc, image.size, sel)
        out = render_selection(image, sel, geo)
        counts = check_render(out, image, geo, sel)
        assert counts["kept"] == len(sel.kept) - int(
            np.sum(geo.boxes[sel.kept.numpy(), 2] <= geo.boxes[sel.kept.numpy(), 0])
        )
        assert counts["merged" if method.merges else "dropped"] > 0
        assert [name for name, _ in out.info["views"]][0].startswith(geo.views[0])
    if family == "llava":  # centre crop: 451x300 -> 505x336, crop x 84..420
        xs = sorted({b[0] for b in token_geometry(model, proc, image.size).boxes.tolist()})
        assert xs[0] == pytest.approx(84 * 451 / 505) and len(xs) == 24  # x scale: 451 / 505
    # a display size other than the original: kept pixels equal the resized photo
    display = (image.size[0] // 2, image.size[1] // 2)
    _, sel = run_method(family, "random", image, budget=15)
    geo = token_geometry(model, proc, image.size, sel)
    out = render_selection(image, sel, geo, display_size=display)
    check_render(out, image.resize(display, Image.BICUBIC), geo, sel)


def test_render_merged_groups_tinted():
    model, proc = model_of("llava")
    image = photo("astronaut")
    _, sel = run_method("llava", "pool", image, budget=16)
    assert sel.assignment is not None and (sel.assignment >= 0).all()
    geo = token_geometry(model, proc, image.size, sel)
    out = np.asarray(render_selection(image, sel, geo, outline=0)).astype(np.float64)
    ref = np.asarray(image).astype(np.float64)
    from vlmprune.apps.viz import group_colour

    for i in range(sel.num_tokens):
        if i in set(sel.kept.tolist()):
            continue
        r0, r1, c0, c1 = box_pixels(geo.boxes[i])
        colour = np.asarray(group_colour(int(sel.assignment[i])), np.float64)
        want = 0.35 * ref[r0:r1, c0:c1] + 0.35 * colour + 0.3 * np.asarray(DROP_GREY, np.float64)
        assert np.abs(out[r0:r1, c0:c1] - want).max() <= 1.0


def test_progressive_merge_then_drop():
    """SPpruner with its in-LLM stage: groups whose kept token was dropped inside the LLM are
    shown dropped, the surviving groups merged; the session's flops schedule has both stages."""
    from vlmprune.apps.run import flops_schedules

    model, proc = model_of("llava")
    image = photo("chelsea")
    inputs = testing.make_inputs("llava", proc, ["What is in the image?"], [[image]])
    method = vlmprune.get_method("sppruner", budget=40, llm_layer=2, llm_keep=0.5)
    with torch.no_grad(), method(model):
        model.generate(**inputs, max_new_tokens=1)
    sel = method.last_selection[0]
    assert sel.stage == "in_llm" and len(sel.kept) < 40
    status, group = token_status(sel)
    alive = set(np.asarray(sel.assignment)[sel.kept.numpy()].tolist())
    merged = np.nonzero(status == 2)[0]
    assert len(merged) > 0 and all(group[i] in alive for i in merged)
    assert (status == 0).sum() > 0  # members of groups whose kept token the LLM stage dropped
    geo = token_geometry(model, proc, image.size, sel)
    check_render(render_selection(image, sel, geo), image, geo, sel)
    _, full, pruned, text = flops_schedules(
        model.config,
        method,
        [sel],
        inputs["input_ids"],
        inputs["attention_mask"],
        model.config.image_token_id,
    )
    assert full[0] == text + 576 and pruned[:2] == [text + 40] * 2 and pruned[2] == text + len(sel.kept)


# ---------------------------------------------------------------------------------------- grid
def test_compare_grid_panels_and_size():
    image = photo("coffee").resize((300, 200))
    panels = [
        (f"m{i}: {i}/9 kept", Image.new("RGB", (300 + 40 * i, 200 - 10 * i), (10 * i, 99, 0)))
        for i in range(3)
    ]
    grid = compare_grid(image, panels, footer="a footer line")
    placed = grid.info["panels"]
    assert len(placed) == 4 and placed[0][0].startswith("original")
    cols, rows, cell_w = 2, 2, 380
    assert grid.size[0] == cols * cell_w + (cols + 1) * 10
    cell_h = 25 + 200
    assert grid.size[1] > rows * cell_h + 3 * 10
    arr = np.asarray(grid)
    for (title, (x, y, w, h)), (_, panel) in zip(placed, [("original", image)] + panels):
        assert np.array_equal(arr[y : y + h, x : x + w], np.asarray(panel)), title
        assert (arr[y - 25 : y, max(0, x - 40) : x + w] < 128).any()  # the title's ink above the panel
    assert len(compare_grid(image, panels, show_original=False, cols=3).info["panels"]) == 3


# ------------------------------------------------------------------------------------ commands
def test_cli_compare(tmp_path, capsys):
    out = tmp_path / "grid.png"
    rc = entry(["compare", "--model", "tiny-llava", "--methods", "divprune,fastv,sppruner", "--budget", "32",
                "--out", str(out), "--cols", "2"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "divprune   kept    32 of 576" in printed and "fastv      kept    32 of 576" in printed
    grid = np.asarray(Image.open(out).convert("RGB")).astype(np.float64)
    ref = np.asarray(photo("chelsea")).astype(np.float64)  # 451x300 fits in --max-side 640: shown as is
    assert grid.shape[1] == 2 * 451 + 3 * 10  # 4 panels (original + 3 methods) in 2 columns
    assert grid.shape[0] > 2 * (300 + 25) + 3 * 10
    x, y = 10, 10 + 25
    assert np.array_equal(grid[y : y + 300, x : x + 451], ref)  # the original panel
    x2 = 10 + 451 + 10
    panel = grid[y : y + 300, x2 : x2 + 451]
    same = np.all(panel == ref, axis=-1).mean()
    assert 0.01 < same < 0.2  # 32 of 576 tokens of the 300x300 crop are shown unchanged
    assert panel.mean() < 0.6 * ref.mean()


def test_cli_run_json(tmp_path, capsys):
    from vlmprune.core.flops import LLMShape, prefill_flops, reduction

    viz = tmp_path / "viz.png"
    rc = entry(["run", "--model", "tiny-llava", "--method", "divprune", "--budget", "64", "--json",
                "--max-new-tokens", "3", "--repeats", "1", "--viz", str(viz)])  # fmt: skip
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["family"], r["visual_tokens"], r["visual_tokens_kept"], r["stage"]) == (
        "llava",
        576,
        64,
        "pre_llm",
    )
    assert isinstance(r["answer"], str) and isinstance(r["answer_pruned"], str)
    assert r["prefill_ms"] > 0 and r["prefill_ms_pruned"] > 0
    model, _ = model_of("llava")
    shape = LLMShape.from_config(model.config)
    t = r["text_tokens"]
    assert r["sequence_length"] == t + 576 and r["sequence_length_pruned"]["first_layer"] == t + 64
    want = reduction(
        prefill_flops(shape, [t + 576] * shape.num_layers), prefill_flops(shape, [t + 64] * shape.num_layers)
    )
    assert r["flops_reduction"] == pytest.approx(want)
    assert Image.open(viz).size[0] == 2 * 451 + 3 * 10


def test_cli_run_llava_next_ratio_and_text(capsys):
    rc = entry(["run", "--model", "tiny-llava-next", "--method", "fastv", "--ratio", "0.25",
                "--max-new-tokens", "2", "--repeats", "1", "--image", "skimage:coffee"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "visual 224 -> 56" in printed and "answer (pruned):" in printed and "FLOPs:" in printed


def test_cli_run_local_qwen_checkpoint_fallback(tmp_path, capsys):
    """A saved Qwen2-VL directory without torchvision: AutoProcessor fails, the PIL image processor
    + tokenizer fallback takes over; FastV's in-LLM schedule shortens only the later layers."""
    model, proc = model_of("qwen2_vl")
    ckpt = tmp_path / "qwen"
    model.save_pretrained(ckpt)
    proc.image_processor.save_pretrained(ckpt)
    proc.tokenizer.save_pretrained(ckpt)
    img = tmp_path / "rocket.png"
    photo("rocket").save(img)
    rc = entry(["run", "--model", str(ckpt), "--image", str(img), "--method", "fastv", "--budget", "8",
                "--json", "--max-new-tokens", "1", "--repeats", "1", "--device", "cpu"])  # fmt: skip
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    rh, rw = smart_resize(427, 640, 28, 56 * 56, 336 * 336)
    assert r["visual_tokens"] == (rh // 28) * (rw // 28) and r["visual_tokens_kept"] == 8
    assert r["stage"] == "in_llm"
    t = r["text_tokens"]
    assert r["sequence_length_pruned"] == {"first_layer": t + r["visual_tokens"], "last_layer": t + 8}


TESTBED = Path(__file__).resolve().parents[1] / "testbed" / "llava"


def test_load_image_testbed_scene():
    """``--image testbed:N`` (a plugin image source) is the N-th held-out testbed scene; a bad N
    names the syntax."""
    from vlmprune.apps.errors import UsageError
    from vlmprune.apps.images import load_image
    from vlmprune.testbed.questions import HELDOUT_BASE
    from vlmprune.testbed.scenes import make_scene

    image, desc = load_image("testbed:3")
    assert np.array_equal(np.asarray(image), np.asarray(make_scene(HELDOUT_BASE + 3).image))
    assert "held-out" in desc
    with pytest.raises(UsageError, match="testbed:N"):
        load_image("testbed:x")


@pytest.mark.skipif(not (TESTBED / "config.json").is_file(), reason="no testbed checkpoint")
def test_render_on_testbed():
    """A trained testbed checkpoint on a held-out testbed scene."""
    from vlmprune.apps import models
    from vlmprune.apps.images import load_image

    image, _ = load_image("testbed:3")
    loaded = models.load(str(TESTBED), device="cpu")
    assert not loaded.tiny
    inputs = models.prompt_inputs(loaded, [image], ["what colour is the star?"])
    method = vlmprune.get_method("divprune", budget=64)
    with torch.no_grad(), method(loaded.model) as session:
        loaded.model.generate(**inputs, max_new_tokens=1)
    sel = session.selections[0]
    geo = token_geometry(loaded.model, loaded.processor, image.size, sel)
    check_render(render_selection(image, sel, geo), image, geo, sel)
