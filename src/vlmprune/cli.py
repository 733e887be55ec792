"""The ``vlmprune`` command line. Each subcommand lives in its own module exposing
``add_arguments(parser)`` and ``main(args) -> int``; this file only wires them together."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

SUBCOMMANDS = {
    "list": ("vlmprune.cli", "List the registered methods and supported model families."),
    "run": (
        "vlmprune.run",
        "Answer a prompt about an image with and without pruning; optional visualisation.",
    ),
    "compare": (
        "vlmprune.viz",
        "One panel per method: which tokens each keeps on the same image and budget.",
    ),
    "bench": ("vlmprune.bench", "Measure prefill/decode latency, memory, FLOPs and selection overhead."),
    "eval": ("vlmprune.testbed.evaluate", "Accuracy of each method and budget on the offline testbed VLM."),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args) -> int:  # `vlmprune list`
    import vlmprune
    from vlmprune.adapters import supported_model_types

    rows = []
    for name in vlmprune.list_methods():
        cls = vlmprune.registry.method_class(name)
        rows.append(
            {
                "name": name,
                "class": cls.__name__,
                "stage": "pre-LLM" if cls.pre_llm else "in-LLM",
                "merges": bool(cls.merges),
                "summary": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
            }
        )
    if args.json:
        print(json.dumps({"methods": rows, "model_types": supported_model_types()}, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(
            f"{r['name']:<{width}}  {r['stage']:<8} {'merge' if r['merges'] else 'drop ':<5}  {r['summary']}"
        )
    print(f"\nsupported model_types: {', '.join(supported_model_types())}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmprune", description="Training-free visual token pruning for HF VLMs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            mod = importlib.import_module(module)
        except ImportError as err:  # a subcommand whose optional dependencies are missing
            p.set_defaults(_error=f"`vlmprune {name}` is unavailable: {err}")
            continue
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
    return parser


def entry(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_error", None):
        print(args._error, file=sys.stderr)
        return 2
    return int(args._main(args) or 0)


def cli_main() -> None:
    sys.exit(entry())


if __name__ == "__main__":
    cli_main()
