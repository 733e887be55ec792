"""Serving throughput with the vLLM plugin: pruned vs full on one engine.

One vLLM engine (the plugin loaded, no server-wide configuration) serves the same requests in
full (no ``vlmprune`` options) and pruned (``mm_processor_kwargs={"vlmprune": {"method": M,
"ratio": 0.222}}`` per request), alternating within every repeat. At concurrency 1 the requests
go one at a time; at concurrency C, C requests are submitted together (``max_num_seqs`` = C).
Reported per setting: requests/s, output tokens/s and time to first token (the engine's own
``first_token_latency``, queueing included), medians over ``--repeats`` after a warm-up.
Every request has its own image, and the prefix cache is off, so nothing is reused across requests.
The engine runs the plugin's scheduler (``--scheduler vlmprune``, pruned images' encoder work
charged at their unpruned size; it charges full requests as vLLM does) or vLLM's (``stock``).

CPU (default): a mid-size random model of ``--family`` built here (no download, written to
``--model-dir``): the same 12-layer d=768 LLM in every family behind the family's bench tower
(Qwen2.5-VL: a 4-block d=256 one), with the stock processor vLLM reads; Qwen3.5 in bfloat16.
GPU: the real-size architecture with vLLM's random weights (``load_format="dummy"``: the
bundled config, the tiny models' tokenizer and processor, nothing downloaded), or ``--model DIR``
of a real checkpoint::

    python benchmarks/vllm_bench.py --arch qwen2.5-vl-7b --dtype bfloat16 --no-enforce-eager \\
        --gpu-memory-utilization 0.8 --image-size 672 --concurrency 1,16,64 --out vlmprune-out/vllm-h200

Writes ``bench.json`` and ``bench.md`` (the table) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

SCHEDULER = "vlmprune.integrations.vllm.scheduler.Scheduler"
#: the CPU models' LLM: 12 layers, d=768 (head dim 64), in every family
TEXT = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12)
TEXT.update(num_key_value_heads=4, head_dim=64, initializer_range=0.02)
#: their vision towers: each family's bench tower (``bench_vision``); Qwen2.5-VL's a 4-block d=256
#: one with two full-attention blocks
VISION = {"qwen2_5_vl": dict(depth=4, hidden_size=256, intermediate_size=512, num_heads=4)}
VISION["qwen2_5_vl"].update(fullatt_block_indexes=[1, 3], window_size=112)
#: per family, LLM keys over TEXT: Qwen3.5's 12 layers as the real model's 3 linear-attention
#: layers to each full-attention one, with the head dims vLLM's CPU linear-attention kernel takes
FAMILY_TEXT = {
    "qwen3_5": {
        "layer_types": (["linear_attention"] * 3 + ["full_attention"]) * 3,
        "linear_key_head_dim": 128,
        "linear_value_head_dim": 128,
    }
}
#: per family, the dtype vLLM's CPU kernels take (Qwen3.5's linear attention: bfloat16 only)
FAMILY_DTYPE = {"qwen3_5": "bfloat16"}
#: the vision config key that sets the tower's output width (the LLM's), where the family has one
OUT_WIDTH = {
    "qwen2_vl": "hidden_size",
    "qwen2_5_vl": "out_hidden_size",
    "qwen3_vl": "out_hidden_size",
    "qwen3_5": "out_hidden_size",
}


def build_model(out: Path, image_size: int, name: str = "qwen2_5_vl") -> Path:
    """Save the CPU benchmark model of family ``name`` (random weights, the tiny models' tokenizer,
    processor sized for ``image_size`` where the family's resolution is dynamic) into ``out``."""
    from vlmprune.adapters import family
    from vlmprune.apps import zoo

    cls = family(name)
    vision = dict(VISION.get(name, {}))
    if name in OUT_WIDTH:
        vision[OUT_WIDTH[name]] = TEXT["hidden_size"]
    model, proc, _ = zoo.bench_model(
        cls.tiny_name,
        image_size=(image_size, image_size),
        text={**TEXT, **FAMILY_TEXT.get(name, {})},
        vision=vision,
    )
    if name == "llava_onevision":  # vLLM's processing reads the stock processor's keys
        proc = onevision_processor(model.config, proc.tokenizer)
    model.save_pretrained(out)
    if name == "internvl":  # the stock InternVLProcessor vLLM builds, as the vLLM tests save it
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "vllm"))
        from vllm_helpers import internvl_processor

        internvl_processor(proc.tokenizer, proc, out)
    else:
        proc.save_pretrained(out)
    return out


def onevision_processor(config, tok):
    """The stock LLaVA-OneVision processor for the CPU model, on a 2 x 2-tile canvas; vLLM packs
    with ``anyres_max_9`` whatever the config says, so the config says so too."""
    from transformers import LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_llava_onevision import (
        LlavaOnevisionImageProcessor,
    )
    from transformers.models.llava_onevision.video_processing_llava_onevision import (
        LlavaOnevisionVideoProcessor,
    )

    s, patch = int(config.vision_config.image_size), int(config.vision_config.patch_size)
    pins = [[s, 2 * s], [2 * s, s], [2 * s, 2 * s]]
    config.image_grid_pinpoints, config.vision_aspect_ratio = pins, "anyres_max_9"
    side = {"height": s, "width": s}
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=side, image_grid_pinpoints=pins),
        video_processor=LlavaOnevisionVideoProcessor(size=side),
        tokenizer=tok,
        num_image_tokens=(s // patch) ** 2,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        vision_aspect_ratio="anyres_max_9",
    )


def arch_dir(out: Path, arch: str, image_size: int) -> Path:
    """A directory holding the bundled real-size config ``arch`` and the tiny models' tokenizer and
    processor: an engine built from it with ``load_format="dummy"`` has the architecture's speed."""
    from vlmprune.adapters import family
    from vlmprune.apps import archs, zoo

    config = archs.load_config(arch)
    cls = family("qwen2_5_vl")
    if type(config).__name__ != cls.config_class:
        raise SystemExit(f"--arch: {arch} is not a Qwen2.5-VL architecture")
    tok = zoo.build_tokenizer(tuple(cls.tiny_special))
    for attr, token_id in cls.tiny_ids(tok).items():  # the tiny tokenizer's special tokens
        setattr(config, attr, token_id)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    cls.tiny_processor(tok, max_pixels=image_size * image_size).save_pretrained(out)
    return out


def requests(n: int, image_size: int, prompt: str, options: dict | None, offset: int) -> list[dict]:
    from vlmprune.apps.images import random_image

    out = []
    for i in range(n):
        req = {
            "prompt": prompt,
            "multi_modal_data": {"image": random_image(offset + i, (image_size, image_size))},
        }
        if options is not None:
            req["mm_processor_kwargs"] = {"vlmprune": options}
        out.append(req)
    return out


def measure(llm, reqs: list[dict], concurrency: int, max_tokens: int) -> dict:
    """Serve ``reqs`` ``concurrency`` at a time; requests/s, output tokens/s, median TTFT (ms)."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    t0 = time.perf_counter()
    outs = []
    for i in range(0, len(reqs), concurrency):
        outs += llm.generate(reqs[i : i + concurrency], params, use_tqdm=False)
    wall = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    ttft = [o.metrics.first_token_latency * 1e3 for o in outs if o.metrics is not None]
    return {
        "requests_per_s": len(outs) / wall,
        "tokens_per_s": tokens / wall,
        "ttft_ms": statistics.median(ttft) if ttft else float("nan"),
        "prompt_tokens": statistics.median(len(o.prompt_token_ids) for o in outs),
    }


def run(args) -> dict:
    from vllm import LLM

    concurrencies = [int(c) for c in args.concurrency.split(",")]
    llm = LLM(
        model=str(args.model),
        dtype=args.dtype,
        max_num_seqs=max(concurrencies),
        enable_prefix_caching=False,
        disable_log_stats=False,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=4096,
        enforce_eager=args.enforce_eager,
        seed=0,
        **({"load_format": "dummy"} if args.arch else {}),
        **({"scheduler_cls": SCHEDULER} if args.scheduler == "vlmprune" else {}),
    )
    prompt = args.prompt
    settings = {"full": None, **{m: {"method": m, "ratio": args.ratio} for m in args.methods.split(",")}}
    rows = {(name, c): [] for name in settings for c in concurrencies}
    measure(llm, requests(4, args.image_size, prompt, None, 10_000), 4, args.max_tokens)  # warm-up
    for repeat in range(args.repeats):
        for c in concurrencies:
            n = c if c > 1 else args.requests_c1
            for name, options in settings.items():  # the same images for every setting of a repeat
                reqs = requests(n, args.image_size, prompt, options, 1000 * repeat)
                rows[(name, c)].append(measure(llm, reqs, c, args.max_tokens))
    summary = []
    for (name, c), runs in rows.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        summary.append({"setting": name, "concurrency": c, **med, "repeats": len(runs)})
    return {"summary": summary, "runs": {f"{n}@{c}": v for (n, c), v in rows.items()}}


def table(summary: list[dict]) -> str:
    full = {r["concurrency"]: r for r in summary if r["setting"] == "full"}
    lines = [
        "| setting | concurrency | prompt tokens | requests/s | tokens/s | TTFT ms | req/s vs full | TTFT vs full |"
    ]
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in summary:
        f = full[r["concurrency"]]
        lines.append(
            f"| {r['setting']} | {r['concurrency']} | {r['prompt_tokens']:.0f} | {r['requests_per_s']:.2f} "
            f"| {r['tokens_per_s']:.1f} | {r['ttft_ms']:.0f} | {r['requests_per_s'] / f['requests_per_s']:.2f}x "
            f"| {r['ttft_ms'] / f['ttft_ms']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="a checkpoint directory or id (default: build the CPU model)")
    p.add_argument("--family", default="qwen2_5_vl", help="the CPU model's family (vLLM plugin families)")
    p.add_argument("--arch", help="a bundled Qwen2.5-VL architecture (e.g. qwen2.5-vl-7b), random weights")
    p.add_argument(
        "--model-dir", default="vlmprune-out/vllm-bench-model", help="where the CPU model is built"
    )
    p.add_argument("--dtype", help="default: float32 (Qwen3.5's CPU model: bfloat16)")
    p.add_argument("--image-size", type=int, default=448, help="square images of this many pixels a side")
    p.add_argument("--methods", default="promprune,divprune")
    p.add_argument("--ratio", type=float, default=0.222)
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--requests-c1", type=int, default=6, help="requests per repeat at concurrency 1")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt", help="the prompt, one image placeholder (default: the tiny models' format)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.25)
    p.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--scheduler",
        choices=("vlmprune", "stock"),
        default="vlmprune",
        help="vlmprune: charge pruned images' encoder work at their unpruned size (docs/vllm.md)",
    )
    p.add_argument("--out", default="vlmprune-out/vllm-bench")
    args = p.parse_args()
    args.dtype = args.dtype or FAMILY_DTYPE.get(args.family, "float32")
    if args.arch:
        args.model = arch_dir(Path(args.model_dir), args.arch, args.image_size)
    elif args.model is None:
        args.model = build_model(Path(args.model_dir), args.image_size, args.family)
    if args.prompt is None:
        from vlmprune.adapters import family

        args.prompt = family(args.family).tiny_prompt("Describe the picture in one sentence.", 1)
    result = run(args)
    import vllm

    meta = {"vllm": vllm.__version__, "machine": platform.machine(), "cpus": os.cpu_count(), **vars(args)}
    meta["load_average_after"] = os.getloadavg()  # 1, 5, 15 min: other work on the machine
    meta["model"] = str(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"meta": meta, **result}, indent=1, default=str))
    (out / "bench.md").write_text(table(result["summary"]))
    print(table(result["summary"]))


if __name__ == "__main__":
    main()
