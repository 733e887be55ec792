"""The ``vlmprune`` command line. Each subcommand is a module with ``add_arguments(parser)`` and
``main(args) -> int``; this module wires them together and turns every wrong argument into one
line on stderr and exit status 2 (a traceback only with ``--debug``)."""

from __future__ import annotations

import importlib
import json
import sys

from vlmprune.apps.errors import UsageError
from vlmprune.apps.options import Parser, fail

SUBCOMMANDS = {
    "list": ("vlmprune.apps.cli", "List the registered methods and supported model families."),
    "run": ("vlmprune.apps.run", "Answer a prompt about an image with and without pruning."),
    "compare": ("vlmprune.apps.compare", "One panel per method: which tokens each keeps on the same image."),
    "bench": ("vlmprune.apps.bench.command", "Prefill/decode latency, memory, FLOPs and selection overhead."),
    "eval": (
        "vlmprune.apps.eval",
        "Accuracy of each method and budget on a question-answering task. The default (the offline"
        " testbed, 300 questions per model, every method at 4 budgets) takes about 8 minutes on two CPU cores.",
    ),
}


def add_arguments(parser) -> None:  # `vlmprune list`
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _summary(doc: str) -> str:
    """The first sentence of a docstring, without reST markup."""
    text = " ".join((doc or "").split())
    first = text.split(". ")[0].rstrip(".")
    return first.replace("``", "").replace("`", "") + "."


def main(args) -> int:  # `vlmprune list`
    import vlmprune
    from vlmprune.adapters import families

    rows = []
    for name in vlmprune.list_methods():
        cls = vlmprune.method_class(name)
        stage = "pre-LLM" if cls.pre_llm else "in-LLM"
        rows.append(
            {
                "name": name,
                "class": cls.__name__,
                "stage": stage,
                "merges": bool(cls.merges),
                "summary": _summary(cls.__doc__),
            }
        )
    fams = [
        {"family": c.family, "label": c.label, "class": c.model_class, "model_types": list(c.model_types)}
        for c in families()
    ]
    if args.json:
        print(json.dumps({"methods": rows, "families": fams}, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(
            f"{r['name']:<{width}}  {r['stage']:<8} {'merge' if r['merges'] else 'drop ':<5}  {r['summary']}"
        )
    print("\nmodel families: " + ", ".join(f"{f['label']} ({f['class']})" for f in fams))
    return 0


def build_parser() -> Parser:
    import vlmprune

    parser = Parser(
        prog="vlmprune", description="Training-free visual token pruning for stock Hugging Face VLMs."
    )
    parser.add_argument("--version", action="version", version=f"vlmprune {vlmprune.__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        try:
            mod = importlib.import_module(module)
        except ImportError as err:  # a subcommand whose optional dependencies are missing
            p.set_defaults(_error=f"unavailable: {err} (pip install 'vlmprune[all]')")
            continue
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
    return parser


def entry(argv=None) -> int:
    """Run the command line on ``argv``; returns the exit status (argument errors: 2)."""
    try:
        return _run(argv)
    except SystemExit as done:  # --help, --version and one-line errors
        return done.code if isinstance(done.code, int) else 1


def _run(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"vlmprune {args.command}"
    if getattr(args, "_error", None):
        fail(prog, args._error)
    try:
        return int(args._main(args) or 0)
    except UsageError as err:
        if args.debug:
            raise
        fail(prog, f"{err.argument}: {err.message}")
    except (ValueError, KeyError, FileNotFoundError, NotImplementedError, TypeError) as err:
        if args.debug:
            raise
        fail(prog, f"{type(err).__name__}: {err.args[0] if err.args else err}", 1)
    except KeyboardInterrupt:
        fail(prog, "interrupted", 130)
    return 0


def cli_main() -> None:
    sys.exit(entry())


if __name__ == "__main__":
    cli_main()
