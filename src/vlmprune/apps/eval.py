"""``vlmprune eval``: accuracy of each pruning method and budget on a question-answering task.

The methods run exactly as on a user's model: ``with method(model): model.generate(...)`` on the
stock classes, with inputs from the stock processors, batched (left padding); the answer is
scored by the task. The vision tower runs once per batch (``vlmprune.session.capture_vision``,
every side signal captured by the same hooks) and serves every method and budget: selections and
answers are those of separate runs (``tests/test_capture.py``). Tasks come from plugins (:mod:`vlmprune.apps.plugins`); the bundled testbed
registers ``testbed`` (offline scenes and one-word answers, two trained checkpoints).
Writes ``eval.json``, ``eval.csv`` and ``eval.png``.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

from vlmprune.apps import options
from vlmprune.apps.errors import UsageError
from vlmprune.apps.plugins import registry

FILES = ["eval.json", "eval.csv", "eval.png"]
CSV_FIELDS = [
    "model", "family_model", "method", "budget", "ratio", "family", "accuracy", "full_accuracy", "retained", "n",
    "mean_tokens_kept",
]  # fmt: skip


def add_arguments(p) -> None:
    tasks = ", ".join(registry().tasks) or "none installed"
    p.add_argument("--task", default="testbed", help=f"evaluation task ({tasks})")
    p.add_argument(
        "--model", default=None, help="a model of the task, or a checkpoint directory (default: the task's)"
    )
    options.add_methods(p, None)
    p.add_argument(
        "--budgets", type=options.comma_list(options.positive_int), default=None, metavar="K,K",
        help="tokens kept of the task's reference count (default: the task's)",
    )  # fmt: skip
    p.add_argument(
        "--samples", type=options.positive_int, default=None, help="questions (default: the task's)"
    )
    p.add_argument("--seed", type=int, default=0, help="question set seed (and `random`'s seed)")
    options.add_device(p)
    p.add_argument("--batch", type=options.positive_int, default=16, help="questions per forward")
    p.add_argument(
        "--threads", type=options.positive_int, default=None, help="torch CPU threads (default: torch's)"
    )
    options.add_out(p, "directory for eval.json, eval.csv, eval.png")
    p.add_argument("--no-plot", action="store_true", help="skip eval.png")
    options.add_output(p)


def _first_word(text: str) -> str:
    w = text.strip().split()
    return w[0].strip(".,!?").lower() if w else ""


def _generate(model, capture, method_name, kw):
    """One answer token per question: the unpruned model, or ``method_name`` through its session
    on the batch's one vision-tower run (``capture``; the same selections as a full run)."""
    import torch

    import vlmprune

    with torch.no_grad():
        if method_name == "full":
            return model.generate(**capture.inputs, max_new_tokens=1, do_sample=False), []
        with vlmprune.get_method(method_name, **kw)(model, vision=capture) as session:
            out = model.generate(**capture.inputs, max_new_tokens=1, do_sample=False)
        return out, [int(s.kept.numel()) for s in session.selections]


def evaluate_model(
    task, name, model, processor, family, methods, budgets, samples, seed, batch, show_progress=True
):
    """Per-config per-category correct counts. Returns (rows, errors, meta)."""
    import torch

    from vlmprune.session import capture_vision

    items = task.items(family, samples, seed)
    configs = [("full", None)] + [(m, b) for m in methods for b in budgets]
    right = {c: dict.fromkeys(task.categories, 0) for c in configs}
    total = dict.fromkeys(task.categories, 0)
    kept = {c: [] for c in configs}
    errors: dict = {}
    tok = processor.tokenizer
    bar = (
        options.progress(((len(items) + batch - 1) // batch) * len(configs), name) if show_progress else None
    )
    t0 = time.time()
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        enc = task.encode(family, processor, [it.image for it in chunk], [it.question for it in chunk])
        enc = {k: (v.to(model.device) if torch.is_tensor(v) else v) for k, v in enc.items()}
        if "pixel_values" in enc:
            enc["pixel_values"] = enc["pixel_values"].to(model.dtype)
        for it in chunk:
            total[it.category] += 1
        n_in = enc["input_ids"].shape[1]
        capture = capture_vision(model, enc)  # the vision tower runs once per batch, for every config
        for c in configs:
            if bar is not None:
                bar.update(1)
            if c in errors:
                continue
            kw = task.budget_kwargs(family, c[1], seed, c[0]) if c[0] != "full" else {}
            try:
                out, counts = _generate(model, capture, c[0], kw)
            except Exception as err:  # record and go on: one broken method must not hide the others
                errors[c] = f"{type(err).__name__}: {err}"
                print(f"[{name}] {c[0]}@{c[1]} failed: {errors[c]}", file=sys.stderr)
                continue
            kept[c] += counts
            for text, it in zip(tok.batch_decode(out[:, n_in:], skip_special_tokens=True), chunk):
                right[c][it.category] += int(task.score(text, it))
    if bar is not None:
        bar.close()
    rows = _rows(task, name, family, configs, errors, right, total, kept)
    meta = dict(model=name, family_model=family, samples=len(items), seconds=round(time.time() - t0, 1))
    meta.update(chance=task.chance, majority=task.majority(items))
    return rows, {f"{m}@{b}": e for (m, b), e in errors.items()}, meta


def _rows(task, name, family, configs, errors, right, total, kept) -> list[dict]:
    cats = list(task.categories)
    n_all = max(1, sum(total.values()))
    full_acc = {f: right[("full", None)][f] / max(1, total[f]) for f in cats}
    full_acc["overall"] = sum(right[("full", None)].values()) / n_all
    rows = []
    for c in configs:
        if c in errors:
            continue
        mname, b = c
        mean_kept = (sum(kept[c]) / len(kept[c])) if kept[c] else None
        for f in cats + ["overall"]:
            n = n_all if f == "overall" else total[f]
            acc = (sum(right[c].values()) if f == "overall" else right[c][f]) / max(1, n)
            fa = full_acc[f]
            rows.append(
                dict(
                    model=name, family_model=family, method=mname, budget=b if b is not None else task.full_tokens,
                    ratio=round(b / task.full_tokens, 4) if b else 1.0, family=f, accuracy=round(acc, 4),
                    full_accuracy=round(fa, 4), retained=round(acc / fa, 4) if fa else None, n=n,
                    mean_tokens_kept=round(mean_kept, 1) if mean_kept is not None else None,
                )
            )  # fmt: skip
    return rows


def format_table(rows, categories) -> str:
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == model]
        lines.append(f"\n{model}: accuracy per question family (retained = overall / full model)")
        head = f"{'method':<12}{'budget':>7}  " + "".join(f"{f[:9]:>10}" for f in categories)
        head += f"{'overall':>10}{'retained':>10}"
        lines += [head, "-" * len(head)]
        for m, b in dict.fromkeys((r["method"], r["budget"]) for r in rs):
            cells = {r["family"]: r for r in rs if r["method"] == m and r["budget"] == b}
            ov = cells["overall"]
            line = f"{m:<12}{'all' if m == 'full' else str(b):>7}  "
            line += "".join(f"{cells[f]['accuracy'] * 100:>9.1f}%" for f in categories)
            line += f"{ov['accuracy'] * 100:>9.1f}%"
            line += f"{ov['retained'] * 100:>9.1f}%" if ov["retained"] is not None else f"{'-':>10}"
            lines.append(line)
    return "\n".join(lines)


def write_outputs(out_dir: Path, result: dict, plot: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "eval.json", out_dir / "eval.csv"]
    paths[0].write_text(json.dumps(result, indent=2))
    with open(paths[1], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in result["rows"]:
            w.writerow({k: r.get(k) for k in CSV_FIELDS})
    if plot:
        png = _plot(out_dir / "eval.png", result)
        if png is not None:
            paths.append(png)
    return paths


def _plot(path: Path, result: dict) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no eval.png", file=sys.stderr)
        return None
    models = list(dict.fromkeys(r["model"] for r in result["rows"]))
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        rs = [r for r in result["rows"] if r["model"] == model and r["family"] == "overall"]
        for m in dict.fromkeys(r["method"] for r in rs if r["method"] != "full"):
            pts = sorted((r["budget"], r["retained"] or 0.0) for r in rs if r["method"] == m)
            ax.plot([p[0] for p in pts], [p[1] * 100 for p in pts], marker="o", label=m)
        full = next((r for r in rs if r["method"] == "full"), None)
        ax.axhline(100, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(f"visual tokens kept (of {result['full_tokens']}; dynamic resolution: same fraction)")
        ax.set_ylabel("accuracy retained vs full model (%)")
        ax.set_title(f"{model} (full: {full['accuracy'] * 100:.1f}%)" if full else model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(args) -> int:
    import torch

    tasks = registry().tasks
    if args.task not in tasks:
        raise UsageError("--task", f"unknown task {args.task!r}; installed: {', '.join(tasks) or 'none'}")
    task = tasks[args.task]
    methods = options.check_methods(args.methods)
    budgets = args.budgets or list(task.budgets)
    samples = args.samples or task.samples
    out = options.out_dir(args.out, "eval", FILES, args.force)
    if args.threads:
        torch.set_num_threads(args.threads)
    from vlmprune.apps.models import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    models = task.models(args.model)  # UsageError naming --model
    rows, errors, metas = [], {}, []
    for name, loader in models:
        model, proc, fam = loader()
        model.to(device=device, dtype=dtype).eval()
        r, e, meta = evaluate_model(
            task, name, model, proc, fam, methods, budgets, samples, args.seed, args.batch, not args.json
        )
        rows += r
        errors.update({f"{name}:{k}": v for k, v in e.items()})
        metas.append(meta)
        del model
    result = dict(rows=rows, errors=errors, runs=metas, methods=methods, budgets=budgets, task=args.task)
    result.update(families=list(task.categories), seed=args.seed, dtype=str(dtype).replace("torch.", ""))
    result["full_tokens"] = task.full_tokens
    paths = write_outputs(out, result, plot=not args.no_plot)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(rows, task.categories))
        for m in metas:
            print(
                f"\n{m['model']}: {m['samples']} questions in {m['seconds']} s; chance (uniform) "
                + ", ".join(f"{k} {v * 100:.0f}%" for k, v in m["chance"].items())
                + "; best constant answer "
                + ", ".join(f"{k} {v * 100:.0f}%" for k, v in m["majority"].items())
            )
        print("wrote " + ", ".join(str(p) for p in paths))
    if errors:
        print(
            f"{len(errors)} configuration(s) failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()),
            file=sys.stderr,
        )
        return 1
    return 0
