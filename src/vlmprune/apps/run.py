"""``vlmprune run``: answer a prompt about an image with and without pruning.

Prints both answers, visual tokens before/after, prefill latency both ways (median of
``--repeats`` after one warm-up) and the LLM prefill FLOPs reduction (:mod:`vlmprune.core.flops`).
``--viz OUT.png`` also draws which tokens were kept.
"""

from __future__ import annotations

import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

from vlmprune.apps import models, options, zoo
from vlmprune.apps.errors import UsageError
from vlmprune.apps.images import image_help, load_image


def add_arguments(parser) -> None:
    options.add_model(parser, zoo.default_name())
    parser.add_argument("--image", default="skimage:chelsea", help=f"{image_help()}")
    parser.add_argument("--prompt", default="What is in the image?", help="the question")
    parser.add_argument("--method", default="promprune", help="pruning method (see `vlmprune list`)")
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
    parser.add_argument("--viz", default=None, metavar="OUT.png", help="also draw which tokens were kept")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --viz file")
    options.add_device(parser)
    parser.add_argument("--max-new-tokens", type=options.positive_int, default=32, help="answer length limit")
    parser.add_argument(
        "--repeats", type=options.positive_int, default=3, help="timed prefill runs per side (median)"
    )
    parser.add_argument(
        "--flops-convention",
        default="fastv",
        choices=("fastv", "swiglu", "exact"),
        help="see vlmprune.core.flops",
    )
    options.add_output(parser)


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def answer(loaded, inputs: dict, method=None, max_new_tokens: int = 32) -> tuple[str, list]:
    """Greedy answer (new tokens only) and, with ``method``, the selections of the call."""
    import torch

    ctx = method(loaded.model) if method is not None else nullcontext()
    with torch.no_grad(), ctx as session:
        out = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1] :]
    tok = getattr(loaded.processor, "tokenizer", loaded.processor)
    text = tok.batch_decode(new, skip_special_tokens=True)[0].strip()
    return text, list(session.selections) if method is not None else []


def prefill_ms(loaded, inputs: dict, method=None, repeats: int = 3) -> float:
    """Median wall time (ms) of one prefill forward (vision tower + LLM, logits of the last
    position) over ``repeats`` runs after one warm-up."""
    import torch

    ctx = method(loaded.model) if method is not None else nullcontext()
    times = []
    with torch.no_grad(), ctx:
        for i in range(repeats + 1):
            _sync(loaded.device)
            t0 = time.perf_counter()
            loaded.model(**inputs, logits_to_keep=1)
            _sync(loaded.device)
            if i > 0:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def flops_schedules(model_config, method, selections, input_ids, attention_mask, image_token_id: int):
    """Token schedules of the LLM prefill, ``(shape, full, pruned, text_tokens)``, for one prompt row.

    Text tokens are the prompt's non-image tokens; the full run sees every image placeholder
    (row separators included). A pre-LLM stage that drops tokens keeps ``keep_count(N)`` content
    tokens per image and drops the separators from layer 0; an in-LLM stage keeps the selection's
    final count from ``method.llm_layer`` on.
    """
    from vlmprune.adapters import adapter_class
    from vlmprune.core.flops import token_schedule

    shape = adapter_class(model_config).llm_shape(model_config)
    length = int(attention_mask[0].sum()) if attention_mask is not None else int(input_ids.shape[1])
    placeholders = int((input_ids[0] == image_token_id).sum())
    content = sum(int(s.num_tokens) for s in selections)
    text = length - placeholders
    separators = placeholders - content
    stages = {}
    if method.pre_llm:
        first = sum(method.keep_count(int(s.num_tokens)) for s in selections)
        if first < content:
            stages[0] = first
            separators = 0
    layer = method.llm_layer
    if layer is not None and any(s.stage == "in_llm" for s in selections) and 0 <= layer < shape.num_layers:
        stages[layer] = sum(len(s.kept) for s in selections) + separators
    full = token_schedule(shape.num_layers, text, placeholders)
    pruned = token_schedule(shape.num_layers, text, placeholders, stages=stages)
    return shape, full, pruned, text


def make_method(args):
    """The method of ``--method`` with ``--budget`` / ``--ratio`` (64 tokens when neither)."""
    import vlmprune

    size = (
        {"ratio": args.ratio}
        if args.ratio is not None
        else {"budget": 64 if args.budget is None else args.budget}
    )
    try:
        return vlmprune.get_method(args.method, **size), size
    except KeyError as err:
        raise UsageError("--method", err.args[0]) from None
    except ValueError as err:
        raise UsageError("--budget" if "budget" in str(err) else "--ratio", str(err)) from None


def run(args) -> dict:
    """Everything ``vlmprune run`` reports, as a dict (the ``--json`` output)."""
    from vlmprune.core.flops import FlopsReport

    options.check_prompt(args.prompt)
    method, size = make_method(args)  # bad arguments fail before loading
    viz = options.out_file(args.viz, "run", "run.png", args.force, "--viz") if args.viz else None
    image, image_desc = load_image(args.image)
    loaded = models.load(args.model, device=args.device, dtype=args.dtype)
    inputs = models.prompt_inputs(loaded, [image], [args.prompt])
    full_answer, _ = answer(loaded, inputs, None, args.max_new_tokens)
    pruned_answer, selections = answer(loaded, inputs, method, args.max_new_tokens)
    full_ms = prefill_ms(loaded, inputs, None, args.repeats)
    pruned_ms = prefill_ms(loaded, inputs, method, args.repeats)
    image_token_id = int(loaded.model.config.image_token_id)
    shape, full_sched, pruned_sched, text = flops_schedules(
        loaded.model.config,
        method,
        selections,
        inputs["input_ids"],
        inputs.get("attention_mask"),
        image_token_id,
    )
    report = FlopsReport.compute(shape, pruned_sched, full_sched, args.flops_convention)
    sel = selections[0]
    result = {
        "model": loaded.description,
        "family": loaded.family,
        "device": loaded.device,
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "image": image_desc,
        "image_size": list(image.size),
        "prompt": args.prompt,
        "method": args.method,
        "budget": size.get("budget"),
        "ratio": size.get("ratio"),
        "stage": sel.stage,
        "visual_tokens": int(sel.num_tokens),
        "visual_tokens_kept": int(len(sel.kept)),
        "text_tokens": text,
        "sequence_length": full_sched[0],
        "sequence_length_pruned": {"first_layer": pruned_sched[0], "last_layer": pruned_sched[-1]},
        "answer": full_answer,
        "answer_pruned": pruned_answer,
        "prefill_ms": full_ms,
        "prefill_ms_pruned": pruned_ms,
        "prefill_speedup": full_ms / pruned_ms if pruned_ms > 0 else None,
        "prefill_repeats": args.repeats,
        "selection_ms": float(sel.selection_ms),
        "flops": report.to_dict(),
        "flops_reduction": report.reduction,
        "tiny_random_model": loaded.tiny,
        "viz": None,
    }
    if viz is not None:
        result["viz"] = str(_draw(loaded, image, method, sel, args.prompt, pruned_answer, viz))
    return result


def _draw(loaded, image, method, sel, prompt: str, pruned_answer: str, path: Path) -> Path:
    from PIL import Image

    from vlmprune.apps.viz import (
        LEGEND,
        compare_grid,
        display_size_for,
        panel_title,
        render_selection,
        token_geometry,
    )

    geo = token_geometry(loaded.model, loaded.processor, image.size, sel)
    display = display_size_for(image.size, 640, len(geo.views))
    panel = render_selection(image, sel, geo, display_size=display)
    footer = f"model: {loaded.description}; prompt: {prompt!r}; answer with pruning: {pruned_answer!r}"
    if loaded.tiny:
        footer += "\nNOTE: random tiny model: its saliency is not meaningful."
    footer += "\n" + geo.description + "\n" + LEGEND
    grid = compare_grid(
        image.resize(display, Image.BICUBIC), [(panel_title(method, sel), panel)], cols=2, footer=footer,
        original_title=f"original ({image.size[0]}x{image.size[1]})",
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def _print(r: dict) -> None:
    amount = f"budget {r['budget']}" if r["ratio"] is None else f"ratio {r['ratio']}"
    fl = r["flops"]
    lines = [
        f"model:   {r['model']} [{r['family']}] on {r['device']} ({r['dtype']})",
        f"image:   {r['image']} {r['image_size'][0]}x{r['image_size'][1]}",
        f"method:  {r['method']} ({amount}, {r['stage']})",
        f"tokens:  visual {r['visual_tokens']} -> {r['visual_tokens_kept']}; sequence {r['sequence_length']} -> "
        f"{r['sequence_length_pruned']['first_layer']} (first layer) / {r['sequence_length_pruned']['last_layer']} "
        f"(last layer)",
        f"prefill: {r['prefill_ms']:.1f} ms -> {r['prefill_ms_pruned']:.1f} ms "
        f"({r['prefill_speedup']:.2f}x, median of {r['prefill_repeats']}; selection {r['selection_ms']:.2f} ms)",
        f"FLOPs:   LLM prefill {fl['full_flops']:.3e} -> {fl['flops']:.3e} {fl['unit']}, "
        f"{fl['convention']} convention: {100 * r['flops_reduction']:.1f}% fewer",
        f"answer (full):   {r['answer']!r}",
        f"answer (pruned): {r['answer_pruned']!r}",
    ]
    if r["viz"]:
        lines.append(f"viz:     {r['viz']}")
    if r["tiny_random_model"]:
        lines.append("note:    tiny random model: answers and saliency are meaningless (a smoke test)")
    print("\n".join(lines))


def main(args) -> int:
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0
