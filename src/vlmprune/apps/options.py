"""One command-line convention for every subcommand.

* the same ``--model`` names (:func:`vlmprune.apps.models.model_names`), ``--device`` (``auto``)
  and ``--dtype`` (``auto``: float32 on CPU, bfloat16 on CUDA);
* lists are comma-separated (``--methods a,b``, ``--budgets 192,128,64``);
* ``--json`` prints the result as JSON on stdout;
* ``--out`` defaults to a fresh directory under ``./vlmprune-out/`` and never overwrites an
  existing file without ``--force``;
* defaults are shown in ``--help``; a long job shows a progress bar on a terminal only;
* a wrong argument exits 2 with one line, ``vlmprune <command>: <argument>: <what is wrong>``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from vlmprune.apps.errors import UsageError
from vlmprune.core.options import integer, number

OUT_ROOT = "vlmprune-out"


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` unless the help text already states the default."""

    def _get_help_string(self, action):
        if "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line naming the argument, exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        m = re.match(r"argument ([^:]+): (.*)", message, re.S)
        if m:
            message = f"{m.group(1).split('/')[-1]}: {m.group(2)}"
        elif message.startswith("unrecognized arguments: "):
            message = f"{message.split(': ', 1)[1]}: unrecognized argument (see --help)"
        fail(self.prog, message.replace("\n", " "))


def fail(prog: str, message: str, code: int = 2):
    """Print ``prog: message`` on one line to stderr and exit with ``code``."""
    print(f"{prog}: {message}", file=sys.stderr)
    sys.exit(code)


def comma_list(kind=str):
    """An argparse ``type`` for comma-separated values of ``kind`` (at least one)."""

    def parse(text: str):
        items = [x.strip() for x in str(text).split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
        try:
            return [kind(x) for x in items]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__} values, got {text!r}"
            ) from None

    return parse


def _checked(text: str, kind, spec):
    """``text`` read as ``kind`` and checked by the method options' validator (one line)."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {spec.describe()}, got {text!r}") from None
    try:
        return spec.check("value", value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {spec.describe()}, got {value}") from None


def positive_int(text: str) -> int:
    return _checked(text, int, integer(1))


def non_negative_int(text: str) -> int:
    return _checked(text, int, integer(0))


def ratio(text: str) -> float:
    return _checked(text, float, number(0.0, 1.0, open_low=True))


def add_model(parser, default: str | None, what: str = "") -> None:
    from vlmprune.apps.models import model_names

    names = ", ".join(model_names())
    parser.add_argument(
        "--model",
        default=default,
        required=default is None,
        help=f"{what}a checkpoint directory, a cached hub id, or a named model: {names}",
    )


def add_device(parser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
        help="auto: float32 on CPU, bfloat16 on CUDA",
    )  # fmt: skip


def add_methods(parser, default: list[str] | None, what: str = "methods") -> None:
    shown = "every registered method" if default is None else ",".join(default)
    parser.add_argument(
        "--methods",
        type=comma_list(),
        default=default,
        metavar="A,B",
        help=f"comma-separated {what} ({shown})",
    )


def add_output(parser, json_help: str = "print the result as JSON on stdout") -> None:
    parser.add_argument("--json", action="store_true", help=json_help)


def add_out(parser, what: str) -> None:
    parser.add_argument(
        "--out", default=None, help=f"output {what} (default: a fresh directory under ./{OUT_ROOT}/)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")


def check_prompt(prompt: str) -> str:
    """A ``UsageError`` naming ``--prompt`` for an empty prompt or one holding an image placeholder
    of any family (the tools add the image themselves)."""
    from vlmprune.adapters import families

    if not prompt.strip():
        raise UsageError("--prompt", "is empty; ask a question about the image")
    for cls in families():
        if cls.image_token and cls.image_token in prompt:
            raise UsageError(
                "--prompt", f"must not contain the image placeholder {cls.image_token}: the image is added"
            )
    return prompt


def check_methods(names: list[str] | None) -> list[str]:
    """The method names, all registered (``UsageError`` naming ``--methods`` otherwise)."""
    import vlmprune

    known = vlmprune.list_methods()
    names = known if names is None else names
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError("--methods", f"unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def out_dir(out: str | None, command: str, files: list[str], force: bool) -> Path:
    """The directory a command writes ``files`` to: ``out``, or a fresh ``./vlmprune-out/<command>-<time>``;
    an existing file among them is a ``UsageError`` naming ``--out`` unless ``force``."""
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(OUT_ROOT) / f"{command}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = Path(OUT_ROOT) / f"{command}-{stamp}-{n}"
        return path
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError("--out", f"{out!r} is a file; give a directory")
    clash = [f for f in files if (path / f).exists()]
    if clash and not force:
        raise UsageError(
            "--out", f"{out}/{clash[0]} exists; pass --force to overwrite, or choose another --out"
        )
    return path


def out_file(out: str | None, command: str, default_name: str, force: bool, argument: str = "--out") -> Path:
    """The image file a command writes: ``out`` (must end in .png/.jpg/.webp), or a fresh one under
    ``./vlmprune-out/``; an existing file is a ``UsageError`` naming ``argument`` unless ``force``."""
    if out is None:
        return out_dir(None, command, [], False) / default_name
    path = Path(out)
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise UsageError(argument, f"{out!r} needs an image extension (.png, .jpg, .webp)")
    if path.is_dir():
        raise UsageError(argument, f"{out!r} is a directory; give an image file name")
    if path.exists() and not force:
        raise UsageError(argument, f"{out} exists; pass --force to overwrite, or choose another {argument}")
    return path


def progress(total: int, desc: str):
    """A tqdm progress bar on stderr when it is a terminal (tqdm installed), else a silent stand-in."""
    enabled = sys.stderr.isatty()
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, dynamic_ncols=True)
    return _Silent()


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, *a, **k) -> None:
        pass

    def close(self) -> None:
        pass
