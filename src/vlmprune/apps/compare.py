"""``vlmprune compare``: one panel per method, which tokens each keeps on the same image and budget."""

from __future__ import annotations

import json

from vlmprune.apps import models, options, zoo
from vlmprune.apps.errors import UsageError
from vlmprune.apps.images import image_help, load_image

DEFAULT_METHODS = ["promprune", "sppruner", "fastv", "divprune"]


def add_arguments(parser) -> None:
    options.add_model(parser, zoo.default_name(), "the model whose tokens are drawn: ")
    parser.add_argument("--image", default="skimage:chelsea", help=image_help())
    options.add_methods(parser, DEFAULT_METHODS)
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--budget",
        type=options.positive_int,
        default=None,
        help="visual tokens kept per image (64 if neither is given)",
    )
    group.add_argument(
        "--ratio", type=options.ratio, default=None, help="kept fraction in (0, 1] instead of --budget"
    )
    parser.add_argument(
        "--prompt", default="What is in the image?", help="question the text-aware methods see"
    )
    options.add_device(parser)
    parser.add_argument(
        "--cols", type=options.positive_int, default=None, help="grid columns (default ceil(sqrt(panels)))"
    )
    parser.add_argument(
        "--max-side", type=options.positive_int, default=640, help="longest side of the shown image in px"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output image (default: compare.png in a fresh directory under ./vlmprune-out/)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    options.add_output(parser, "print the kept token indices as JSON on stdout")


def _methods(args):
    import vlmprune

    names = options.check_methods(args.methods)
    size = (
        {"ratio": args.ratio}
        if args.ratio is not None
        else {"budget": 64 if args.budget is None else args.budget}
    )
    try:
        return [(name, vlmprune.get_method(name, **size)) for name in names], size
    except ValueError as err:
        raise UsageError("--methods", str(err)) from None


def main(args) -> int:
    import torch
    from PIL import Image

    from vlmprune.apps.viz import (
        LEGEND,
        compare_grid,
        display_size_for,
        panel_title,
        render_selection,
        token_geometry,
    )

    methods, size = _methods(args)  # argument errors before anything is loaded
    options.check_prompt(args.prompt)
    out = options.out_file(args.out, "compare", "compare.png", args.force)
    image, image_desc = load_image(args.image)
    loaded = models.load(args.model, device=args.device, dtype=args.dtype)
    inputs = models.prompt_inputs(loaded, [image], [args.prompt])
    panels, rows, geo = [], [], None
    for name, method in methods:
        with torch.no_grad(), method(loaded.model) as session:
            loaded.model.generate(**inputs, max_new_tokens=1, do_sample=False)
        sel = session.selections[0]
        geo = geo or token_geometry(loaded.model, loaded.processor, image.size, sel)
        display = display_size_for(image.size, args.max_side, len(geo.views))
        panels.append((panel_title(method, sel), render_selection(image, sel, geo, display_size=display)))
        rows.append(
            {"method": name, "kept": sel.kept.tolist(), "num_tokens": int(sel.num_tokens), "stage": sel.stage}
        )
        if not args.json:
            print(f"{name:<10} kept {len(sel.kept):>5} of {sel.num_tokens} ({sel.stage})")
    w, h = image.size
    amount = f"budget {size['budget']}" if "budget" in size else f"ratio {size['ratio']}"
    footer = (
        f"model: {loaded.description}; image: {image_desc} {w}x{h}; {amount} of {rows[0]['num_tokens']} visual tokens; "
        f"prompt: {args.prompt!r}\n{geo.description}\n{LEGEND}"
    )
    if loaded.tiny:
        footer += (
            "\nNOTE: a tiny model with RANDOM weights: its saliency and attention are not meaningful, so these "
            "panels show each method's mechanics (geometry, budget, spread), not what a trained model would keep."
        )
    cols = args.cols or (2 if len(geo.views) > 1 else None)  # several-view panels are wide
    shown = image.resize(display_size_for(image.size, args.max_side, len(geo.views)), Image.BICUBIC)
    grid = compare_grid(
        shown,
        panels,
        cols=cols,
        footer=footer,
        original_title=f"original ({w}x{h}); model {loaded.description}",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    if args.json:
        print(
            json.dumps(
                {"model": loaded.description, "image": image_desc, "out": str(out), "methods": rows}, indent=2
            )
        )
    else:
        print(
            f"model: {loaded.description}\nwrote {out} ({grid.size[0]}x{grid.size[1]}, {len(panels)} methods + original)"
        )
    return 0
