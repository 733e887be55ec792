"""``vlmprune bench``: the command line."""

from __future__ import annotations

import argparse
import json

from vlmprune.apps import options, zoo
from vlmprune.apps.bench.models import bench_names
from vlmprune.apps.bench.report import format_table, write_results
from vlmprune.apps.bench.runner import BenchSettings, run_bench

FILES = ["bench.json", "bench.csv", "bench.png"]


def add_arguments(parser) -> None:
    """Options of ``vlmprune bench`` (see :mod:`vlmprune.apps.bench` for what is measured)."""
    parser.add_argument(
        "--model", default=zoo.default_name(),
        help=f"one of {', '.join(bench_names())} (real-size architectures have random weights: for GPUs), "
        "or a checkpoint directory",
    )  # fmt: skip
    parser.add_argument(
        "--tiny-arch", action="store_true",
        help="shrink the model (the test-suite size): CPU smoke runs, timings meaningless",
    )  # fmt: skip
    options.add_methods(parser, None)
    parser.add_argument(
        "--budgets", type=options.comma_list(options.positive_int), default=None, metavar="K,K",
        help="visual tokens kept per image (default: the family's, e.g. 192,128,64 of 576)",
    )  # fmt: skip
    parser.add_argument(
        "--ratios", type=options.comma_list(options.ratio), default=None, metavar="Q,Q",
        help="kept fractions instead of budgets (default for dynamic-resolution families: 0.222)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
        help="auto: float32 on CPU, bfloat16 on CUDA",
    )  # fmt: skip
    parser.add_argument("--attn", default="sdpa", help="attn_implementation of the model")
    parser.add_argument(
        "--batch", type=options.positive_int, default=1, help="prompts per call (one image each)"
    )
    parser.add_argument(
        "--text-tokens", type=options.positive_int, default=64, help="non-image tokens per prompt"
    )
    parser.add_argument(
        "--image-size", default=None, metavar="W[xH],...",
        help="input image W or WxH in pixels; several, comma-separated, run one after the other and "
        "bench.png plots prefill time against the visual tokens (default: the family's)",
    )  # fmt: skip
    parser.add_argument(
        "--video-frames", type=options.non_negative_int, default=0, metavar="F",
        help="one video of F frames at --image-size per prompt instead of an image (families that prune videos)",
    )  # fmt: skip
    parser.add_argument(
        "--memory", action=argparse.BooleanOptionalAction, default=None,
        help="peak memory per row; on the CPU each configuration runs once more in a process of its own "
        "(default: on for the CPU)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=options.positive_int, default=5, help="timed repeats")
    parser.add_argument("--warmup", type=options.non_negative_int, default=1, help="untimed warm-up repeats")
    parser.add_argument(
        "--decode-tokens", type=options.non_negative_int, default=8,
        help="tokens decoded after the first, for decode tokens/s (0: prefill only)",
    )  # fmt: skip
    parser.add_argument(
        "--convention", default="fastv", choices=("fastv", "swiglu", "exact"),
        help="FLOPs convention (fastv: 4nd^2 + 2n^2d + 2ndm per layer)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=options.positive_int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random weights seed")
    options.add_out(parser, "directory for bench.json, bench.csv, bench.png")
    parser.add_argument("--no-plot", action="store_true", help="skip bench.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (there is none off a terminal)")
    options.add_output(parser)


def settings_from_args(args) -> BenchSettings:
    methods = None if args.methods in (None, ["all"]) else options.check_methods(args.methods)
    if args.budgets and args.ratios:
        from vlmprune.apps.errors import UsageError

        raise UsageError("--budgets", "give --budgets or --ratios, not both")
    return BenchSettings(
        model=args.model, methods=methods, budgets=args.budgets, ratios=args.ratios, device=args.device,
        dtype=args.dtype, batch=args.batch, text_tokens=args.text_tokens, repeats=args.repeats,
        warmup=args.warmup, decode_tokens=args.decode_tokens, convention=args.convention,
        tiny_arch=args.tiny_arch, image_size=args.image_size, attn=args.attn, threads=args.threads,
        seed=args.seed, memory=args.memory, video_frames=args.video_frames,
    )  # fmt: skip


def main(args) -> int:
    """Run, print the table (or JSON), write bench.json / bench.csv / bench.png."""
    settings = settings_from_args(args)
    out = options.out_dir(args.out, "bench", FILES, args.force)
    plot = not args.no_plot
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "vlmprune bench: matplotlib is not installed, skipping bench.png (pip install 'vlmprune[bench]')"
            )
            plot = False
    result = run_bench(settings, progress=not (args.json or args.quiet))
    paths = write_results(result, out, plot=plot)
    result["meta"]["files"] = {k: str(v) for k, v in paths.items() if v}
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        print(format_table(result))
        print("wrote " + ", ".join(str(p) for p in paths.values() if p))
    return 0
