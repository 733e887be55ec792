"""``vlmprune run``: answer a prompt about an image with and without pruning, on a stock checkpoint.

Loads any supported checkpoint with its own processor (``AutoProcessor`` /
``AutoModelForImageTextToText``, falling back to the family class named by the config's
``model_type``; local directories load with ``local_files_only=True``). Qwen's stock processor
needs torchvision (integration.md); without it the stock PIL image processor, the checkpoint's
tokenizer and :class:`vlmprune.testing.QwenTinyProcessor`'s placeholder expansion stand in.
``--model tiny-llava`` (``tiny-llava-next``, ``tiny-qwen2.5-vl``, ``tiny-qwen2-vl``) builds a tiny
random model offline, for tests and demos: its answers and saliency are meaningless.

Prints both answers, visual tokens before/after, prefill latency both ways (median of
``--repeats`` after one warm-up) and the LLM prefill FLOPs reduction (:mod:`vlmprune.flops`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

TINY_SPECS = {
    "tiny-llava": "llava",
    "tiny-llava-next": "llava_next",
    "tiny-qwen2.5-vl": "qwen2_5_vl",
    "tiny-qwen2-vl": "qwen2_vl",
}
_FAMILY_CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
}
_QWEN_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n"
)
_LLAVA_PROMPT = "USER: <image>\n{prompt} ASSISTANT:"


@dataclass
class Loaded:
    """A model ready to prompt: ``family`` (adapter family), ``description`` (for reports),
    ``tiny`` (random weights built offline), ``chat_template`` (None: plain prompt format)."""

    model: object
    processor: object
    family: str
    description: str
    tiny: bool = False
    chat_template: str | None = None
    device: str = "cpu"
    dtype: object = None


def resolve_device(device: str = "auto") -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    table.update({"float16": torch.float16, "fp16": torch.float16, "half": torch.float16})
    if dtype not in table:
        raise ValueError(f"`--dtype` must be one of auto, {', '.join(sorted(table))}; got {dtype!r}")
    return table[dtype]


def _tiny(spec: str, device: str, dtype) -> Loaded:
    from vlmprune import testing

    family = TINY_SPECS[spec]
    if family == "llava":
        model, proc = testing.tiny_llava(image_size=336)
        what = "336 px, 24x24 = 576 tokens"
    elif family == "llava_next":
        model, proc = testing.tiny_llava_next(image_size=112)
        what = "112 px tiles, 8x8 tokens per crop, pinpoints up to 2x2"
    else:
        model, proc = testing.tiny_model(family, max_pixels=336 * 336)
        what = "up to 336x336 px, 28 px merged tokens"
    model.to(device=device, dtype=dtype)
    return Loaded(model, proc, family, f"{spec} (random weights, {what})", True, None, device, dtype)


def _chat_template_file(path: Path) -> str | None:
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").is_file():
        return json.loads((path / "chat_template.json").read_text()).get("chat_template")
    return None


def load_model(spec: str, device: str = "auto", dtype: str = "auto") -> Loaded:
    """Load ``spec`` (a checkpoint directory, a hub id, or a key of :data:`TINY_SPECS`)."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if spec in TINY_SPECS:  # before the (slow) transformers Auto* imports
        return _tiny(spec, device, torch_dtype)
    import transformers
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    from vlmprune.errors import UnsupportedModelError

    local = Path(spec).is_dir()
    kw = {"local_files_only": True} if local else {}
    config = AutoConfig.from_pretrained(spec, **kw)
    family = getattr(config, "model_type", None)
    if family not in _FAMILY_CLASSES:
        raise UnsupportedModelError(
            f"{spec}: model_type {family!r} is not supported; supported: {', '.join(_FAMILY_CLASSES)}"
        )
    try:
        model = AutoModelForImageTextToText.from_pretrained(spec, dtype=torch_dtype, **kw)
    except (ValueError, KeyError):
        model = getattr(transformers, _FAMILY_CLASSES[family]).from_pretrained(spec, dtype=torch_dtype, **kw)
    model.to(device).eval()
    template = None
    try:
        processor = AutoProcessor.from_pretrained(spec, **kw)
        template = getattr(processor, "chat_template", None)
    except (ImportError, OSError, ValueError, TypeError) as err:
        if not family.startswith("qwen"):
            raise
        # Qwen's processor needs torchvision (its video processor): stock PIL image processor,
        # the checkpoint's tokenizer and our placeholder expansion (integration.md).
        from transformers import Qwen2VLImageProcessorPil

        from vlmprune.testing import QwenTinyProcessor

        print(
            f"note: AutoProcessor failed ({type(err).__name__}); using Qwen2VLImageProcessorPil",
            file=sys.stderr,
        )
        tok = AutoTokenizer.from_pretrained(spec, **kw)
        merge = int(config.vision_config.spatial_merge_size)
        processor = QwenTinyProcessor(
            Qwen2VLImageProcessorPil.from_pretrained(spec, **kw), tok, merge_size=merge
        )
        template = (_chat_template_file(Path(spec)) if local else None) or getattr(tok, "chat_template", None)
    return Loaded(model, processor, family, describe_checkpoint(spec), False, template, device, torch_dtype)


def describe_checkpoint(spec: str) -> str:
    """``spec`` for reports: relative to the working directory when below it, with the step of a
    testbed checkpoint (its ``testbed.json``) when there is one."""
    path = Path(spec)
    if not path.is_dir():
        return spec
    try:
        text = str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        text = spec
    meta = path / "testbed.json"
    if meta.is_file():
        try:
            info = json.loads(meta.read_text())
            text += (
                f" (testbed checkpoint, step {info['step']})" if "step" in info else " (testbed checkpoint)"
            )
        except (ValueError, KeyError, OSError):
            pass
    return text


def prompt_text(loaded: Loaded, prompt: str) -> str:
    """The full prompt: the checkpoint's chat template when it has one, else the plain
    ``USER: <image>\\n... ASSISTANT:`` (LLaVA) or Qwen chat format; tiny models use
    :func:`vlmprune.testing.prompt_for`."""
    if loaded.tiny:
        from vlmprune.testing import prompt_for

        return prompt_for(loaded.family, prompt)
    if loaded.chat_template:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        proc = loaded.processor
        if getattr(proc, "chat_template", None) and hasattr(proc, "apply_chat_template"):
            return proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return proc.tokenizer.apply_chat_template(
            messages, chat_template=loaded.chat_template, add_generation_prompt=True, tokenize=False
        )
    return (_QWEN_PROMPT if loaded.family.startswith("qwen") else _LLAVA_PROMPT).format(prompt=prompt)


def make_prompt_inputs(loaded: Loaded, image, prompt: str) -> dict:
    """Processor outputs for one image and one prompt, on the model's device (floats in its dtype)."""
    text = prompt_text(loaded, prompt)
    out = loaded.processor(text=[text], images=[image], return_tensors="pt")
    inputs = {}
    for key, value in dict(out).items():
        if hasattr(value, "to"):
            is_float = value.is_floating_point()
            value = value.to(loaded.device, dtype=loaded.dtype) if is_float else value.to(loaded.device)
        inputs[key] = value
    return inputs


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def answer(loaded: Loaded, inputs: dict, method=None, max_new_tokens: int = 32) -> tuple[str, list]:
    """Greedy answer (new tokens only) and, with ``method``, its ``last_selection``."""
    import torch

    ctx = method(loaded.model) if method is not None else nullcontext()
    with torch.no_grad(), ctx:
        out = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1] :]
    tok = getattr(loaded.processor, "tokenizer", loaded.processor)
    text = tok.batch_decode(new, skip_special_tokens=True)[0].strip()
    return text, list(method.last_selection) if method is not None else []


def prefill_ms(loaded: Loaded, inputs: dict, method=None, repeats: int = 3) -> float:
    """Median wall time (ms) of one prefill forward (vision tower + LLM, logits of the last position)
    over ``repeats`` runs after one warm-up."""
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
    """Token schedules of the LLM prefill, ``(full, pruned, text_tokens)``, for one prompt row.

    Text tokens are the prompt's non-image tokens; the full run sees every image placeholder
    (LLaVA-NeXT: content and ``image_newline`` tokens). A pre-LLM stage that drops tokens keeps
    ``keep_count(N)`` content tokens per image and drops the newlines from layer 0; an in-LLM stage
    keeps the selection's final count from ``method.llm_layer`` on.
    """
    from vlmprune.flops import LLMShape, token_schedule

    shape = LLMShape.from_config(model_config)
    length = int(attention_mask[0].sum()) if attention_mask is not None else int(input_ids.shape[1])
    placeholders = int((input_ids[0] == image_token_id).sum())
    content = sum(int(s.num_tokens) for s in selections)
    text = length - placeholders
    newlines = placeholders - content
    stages = {}
    if method.pre_llm:
        first = sum(method.keep_count(int(s.num_tokens)) for s in selections)
        if first < content:
            stages[0] = first
            newlines = 0
    layer = method.llm_layer
    if layer is not None and any(s.stage == "in_llm" for s in selections) and 0 <= layer < shape.num_layers:
        stages[layer] = sum(len(s.kept) for s in selections) + newlines
    full = token_schedule(shape.num_layers, text, placeholders)
    pruned = token_schedule(shape.num_layers, text, placeholders, stages=stages)
    return shape, full, pruned, text


def method_size(args) -> dict:
    """``{"ratio": r}`` or ``{"budget": k}`` (default 64) from ``--ratio`` / ``--budget``."""
    if args.ratio is not None:
        return {"ratio": args.ratio}
    return {"budget": 64 if args.budget is None else args.budget}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="checkpoint directory or hub id (llava, llava_next, qwen2_vl, qwen2_5_vl), or "
        f"{'|'.join(TINY_SPECS)} for a tiny random model built offline",
    )
    parser.add_argument("--image", default=None, help="image file or skimage:NAME (default skimage:chelsea)")
    parser.add_argument("--prompt", default="What is in the image?", help="the question")
    parser.add_argument("--method", default="promprune", help="pruning method (see `vlmprune list`)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--budget", type=int, default=None, help="visual tokens kept per image (default 64)")
    group.add_argument(
        "--ratio", type=float, default=None, help="kept fraction in (0, 1] instead of --budget"
    )
    parser.add_argument("--viz", default=None, metavar="OUT.png", help="also render which tokens were kept")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto (default)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit (default 32)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed prefill runs per side (median; default 3)"
    )
    parser.add_argument(
        "--flops-convention", default="fastv", choices=("fastv", "swiglu", "exact"), help="see vlmprune.flops"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args) -> dict:
    """Everything ``vlmprune run`` reports, as a dict (the ``--json`` output)."""
    from PIL import Image

    import vlmprune
    from vlmprune.flops import FlopsReport
    from vlmprune.viz import (
        LEGEND,
        compare_grid,
        describe_geometry,
        display_size_for,
        layout_info,
        load_image,
        panel_title,
        render_selection,
    )

    image, image_desc = load_image(args.image)
    size_kw = method_size(args)
    method = vlmprune.get_method(args.method, **size_kw)  # bad arguments fail before loading
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    inputs = make_prompt_inputs(loaded, image, args.prompt)
    full_answer, _ = answer(loaded, inputs, None, args.max_new_tokens)
    pruned_answer, selections = answer(loaded, inputs, method, args.max_new_tokens)
    if not selections:
        raise RuntimeError("the pruning session recorded no selection: did the prompt contain the image?")
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
        "budget": size_kw.get("budget"),
        "ratio": size_kw.get("ratio"),
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
    if args.viz:
        info = layout_info(loaded.model, loaded.processor)
        display = display_size_for(image.size, 640, 2 if info.family == "llava_next" else 1)
        panel = render_selection(image, sel, info, display_size=display)
        footer = (
            f"model: {loaded.description}; prompt: {args.prompt!r}; answer with pruning: {pruned_answer!r}"
        )
        if loaded.tiny:
            footer += "\nNOTE: random tiny model: its saliency is not meaningful."
        footer += "\n" + describe_geometry(info.family, image.size, info.config) + "\n" + LEGEND
        grid = compare_grid(
            image.resize(display, Image.BICUBIC),
            [(panel_title(method, sel), panel)],
            cols=2,
            footer=footer,
            original_title=f"original ({image.size[0]}x{image.size[1]})",
        )
        Path(args.viz).parent.mkdir(parents=True, exist_ok=True)
        grid.save(args.viz)
        result["viz"] = str(args.viz)
    return result


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
    import vlmprune

    size_kw = method_size(args)
    try:  # argument errors as one line, before anything is loaded
        vlmprune.get_method(args.method, **size_kw)
    except (KeyError, ValueError) as err:
        print(f"vlmprune run: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0
