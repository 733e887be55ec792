"""``vlmprune eval``: accuracy of each pruning method and budget on the offline testbed VLMs.

With no arguments: every registered method at 192/128/64/32 of 576 visual tokens on testbed-llava
(and on testbed-qwen at the same kept ratios when its checkpoint exists) over a family-balanced
held-out set of 1000 questions. The methods run exactly as on a user's model: ``with method(model):
model.generate(...)`` on the stock ``LlavaForConditionalGeneration`` /
``Qwen2_5_VLForConditionalGeneration`` with inputs from the stock processors; the answer is the
first generated word. Writes ``eval.json``, ``eval.csv`` and ``eval.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import torch

DEFAULT_BUDGETS = (192, 128, 64, 32)
FULL_TOKENS = 576


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="testbed",
        help="'testbed' (testbed-llava, plus testbed-qwen if present), a checkpoint DIR, "
        "or 'tiny' / 'tiny-qwen' (an untrained tiny model: smoke test of the pipeline)",
    )
    p.add_argument("--methods", default=None, help="comma-separated method names (default: all registered)")
    p.add_argument(
        "--budgets",
        default=",".join(map(str, DEFAULT_BUDGETS)),
        help="tokens kept out of 576 (Qwen: the same fraction of its tokens)",
    )
    p.add_argument("--samples", type=int, default=1000, help="held-out questions (balanced over families)")
    p.add_argument("--seed", type=int, default=0, help="held-out set seed (and `random`'s seed)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float16"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    p.add_argument("--out", default="eval_out", help="directory for eval.json / eval.csv / eval.png")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")


# ----------------------------------------------------------------------------------------- models
def testbed_dirs() -> list[Path]:
    """Where the committed checkpoints are looked for: $VLMPRUNE_TESTBED, ./testbed, the repo's testbed/."""
    roots = []
    if os.environ.get("VLMPRUNE_TESTBED"):
        roots.append(Path(os.environ["VLMPRUNE_TESTBED"]))
    roots.append(Path.cwd() / "testbed")
    roots.append(Path(__file__).resolve().parents[3] / "testbed")
    return roots


def find_testbed(family: str) -> Path | None:
    for r in testbed_dirs():
        d = r / family
        if (d / "config.json").exists() and (d / "model.safetensors").exists():
            return d
    return None


def resolve_models(spec: str):
    """[(name, loader)]; loader() -> (model, processor, family)."""
    from vlmprune.testbed import model as M

    if spec in ("tiny", "tiny-qwen"):
        fam = "llava" if spec == "tiny" else "qwen"

        def load_tiny(fam=fam):
            model, proc = M.build(fam, "tiny", seed=0)
            return model.eval(), proc, fam

        return [(f"{spec} (untrained)", load_tiny)]
    if spec == "testbed":
        llava, qwen = find_testbed("llava"), find_testbed("qwen")
        if llava is None:
            raise FileNotFoundError(
                "no testbed checkpoint found (looked for testbed/llava/{config.json,model.safetensors} under "
                + ", ".join(str(r) for r in testbed_dirs())
                + "). Train one with `python -m vlmprune.testbed.train --family llava --out testbed/llava`, "
                "point --model at a checkpoint directory, or use --model tiny for a smoke test."
            )
        out = [("testbed-llava", lambda: M.load_testbed(llava))]
        if qwen is not None:
            out.append(("testbed-qwen", lambda: M.load_testbed(qwen)))
        return out
    path = Path(spec)
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"--model {spec!r}: no config.json there (a testbed checkpoint directory expected)"
        )
    return [(path.name or str(path), lambda: M.load_testbed(path))]


# ----------------------------------------------------------------------------------------- running
def budget_kwargs(family: str, budget: int) -> dict:
    """A budget of 576 tokens as method arguments: LLaVA keeps ``budget`` tokens, Qwen (dynamic
    resolution) the same fraction of its tokens."""
    return {"budget": budget} if family == "llava" else {"ratio": budget / FULL_TOKENS}


def _images(family, items):
    from vlmprune.testbed.scenes import make_scene
    from vlmprune.testbed.train import scene_size

    out = []
    for s, _ in items:
        w, h = scene_size(family, s)
        out.append(make_scene(s, width=w, height=h).image)
    return out


def _first_word(text: str) -> str:
    w = text.strip().split()
    return w[0].strip(".,!?").lower() if w else ""


def evaluate_model(
    name, model, processor, family, methods, budgets, samples, seed, batch, device, dtype, progress=True
):
    """Per-config per-family correct counts. Returns (rows, errors, meta)."""
    import vlmprune
    from vlmprune.testbed import model as M
    from vlmprune.testbed import questions as Q
    from vlmprune.testbed.train import scene_size

    items = Q.heldout_set(samples, seed=seed, size=lambda s: scene_size(family, s))
    model.to(device=device, dtype=dtype).eval()
    configs = [("full", None)] + [(m, b) for m in methods for b in budgets]
    right = {c: {f: 0 for f in Q.FAMILIES} for c in configs}
    total = {f: 0 for f in Q.FAMILIES}
    kept = {c: [] for c in configs}
    errors: dict = {}
    tok = processor.tokenizer
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    nb = (len(items) + batch - 1) // batch
    bar = tqdm(total=nb * len(configs), desc=name, disable=not progress, file=sys.stderr) if tqdm else None
    t0 = time.time()
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        enc = M.encode(family, processor, _images(family, chunk), [qa.question for _, qa in chunk])
        enc = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in enc.items()}
        if "pixel_values" in enc:
            enc["pixel_values"] = enc["pixel_values"].to(dtype)
        for f in (qa.family for _, qa in chunk):
            total[f] += 1
        n_in = enc["input_ids"].shape[1]
        for c in configs:
            if c in errors:
                if bar:
                    bar.update(1)
                continue
            mname, b = c
            try:
                with torch.no_grad():
                    if mname == "full":
                        out = model.generate(**enc, max_new_tokens=1, do_sample=False)
                    else:
                        kw = budget_kwargs(family, b)
                        if mname == "random":
                            kw["seed"] = seed
                        meth = vlmprune.get_method(mname, **kw)
                        with meth(model):
                            out = model.generate(**enc, max_new_tokens=1, do_sample=False)
                        kept[c] += [int(s.kept.numel()) for s in meth.last_selection]
            except Exception as err:  # record and go on: one broken method must not hide the others
                errors[c] = f"{type(err).__name__}: {err}"
                print(f"[{name}] {mname}@{b} failed: {errors[c]}", file=sys.stderr)
                if bar:
                    bar.update(1)
                continue
            texts = tok.batch_decode(out[:, n_in:], skip_special_tokens=True)
            for t, (_, qa) in zip(texts, chunk):
                right[c][qa.family] += int(_first_word(t) == qa.answer)
            if bar:
                bar.update(1)
    if bar:
        bar.close()
    rows = []
    full_acc = {f: right[("full", None)][f] / max(1, total[f]) for f in Q.FAMILIES}
    full_all = sum(right[("full", None)].values()) / max(1, sum(total.values()))
    for c in configs:
        if c in errors:
            continue
        mname, b = c
        mean_kept = (sum(kept[c]) / len(kept[c])) if kept[c] else None
        for f in list(Q.FAMILIES) + ["overall"]:
            if f == "overall":
                acc = sum(right[c].values()) / max(1, sum(total.values()))
                fa, n = full_all, sum(total.values())
            else:
                acc = right[c][f] / max(1, total[f])
                fa, n = full_acc[f], total[f]
            rows.append(
                dict(
                    model=name,
                    family_model=family,
                    method=mname,
                    budget=b if b is not None else FULL_TOKENS,
                    ratio=round(b / FULL_TOKENS, 4) if b else 1.0,
                    family=f,
                    accuracy=round(acc, 4),
                    full_accuracy=round(fa, 4),
                    retained=round(acc / fa, 4) if fa else None,
                    n=n,
                    mean_tokens_kept=round(mean_kept, 1) if mean_kept is not None else None,
                )
            )
    meta = dict(
        model=name,
        family_model=family,
        samples=len(items),
        seconds=round(time.time() - t0, 1),
        chance=Q.CHANCE,
        majority=Q.majority_baseline(items),
    )
    return rows, {f"{m}@{b}": e for (m, b), e in errors.items()}, meta


# ----------------------------------------------------------------------------------------- output
def format_table(rows, families) -> str:
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == model]
        lines.append(f"\n{model}: accuracy per question family (retained = overall / full model)")
        head = (
            f"{'method':<12}{'budget':>7}  "
            + "".join(f"{f[:9]:>10}" for f in families)
            + f"{'overall':>10}{'retained':>10}"
        )
        lines.append(head)
        lines.append("-" * len(head))
        keys = list(dict.fromkeys((r["method"], r["budget"]) for r in rs))
        for m, b in keys:
            cells = {r["family"]: r for r in rs if r["method"] == m and r["budget"] == b}
            ov = cells["overall"]
            bud = "all" if m == "full" else str(b)
            lines.append(
                f"{m:<12}{bud:>7}  "
                + "".join(f"{cells[f]['accuracy'] * 100:>9.1f}%" for f in families)
                + f"{ov['accuracy'] * 100:>9.1f}%"
                + (f"{ov['retained'] * 100:>9.1f}%" if ov["retained"] is not None else f"{'-':>10}")
            )
    return "\n".join(lines)


def write_outputs(out_dir: Path, result: dict, plot: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "eval.json", out_dir / "eval.csv"]
    paths[0].write_text(json.dumps(result, indent=2))
    fields = [
        "model",
        "family_model",
        "method",
        "budget",
        "ratio",
        "family",
        "accuracy",
        "full_accuracy",
        "retained",
        "n",
        "mean_tokens_kept",
    ]
    with open(paths[1], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in result["rows"]:
            w.writerow({k: r.get(k) for k in fields})
    if plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no eval.png", file=sys.stderr)
            return paths
        models = list(dict.fromkeys(r["model"] for r in result["rows"]))
        fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False)
        for ax, model in zip(axes[0], models):
            rs = [
                r
                for r in result["rows"]
                if r["model"] == model and r["family"] == "overall" and r["method"] != "full"
            ]
            for m in dict.fromkeys(r["method"] for r in rs):
                pts = sorted((r["budget"], r["retained"] or 0.0) for r in rs if r["method"] == m)
                ax.plot([p[0] for p in pts], [p[1] * 100 for p in pts], marker="o", label=m)
            full = next(
                (
                    r
                    for r in result["rows"]
                    if r["model"] == model and r["method"] == "full" and r["family"] == "overall"
                ),
                None,
            )
            ax.axhline(100, color="grey", lw=0.8, ls="--")
            ax.set_xlabel("visual tokens kept (of 576; Qwen: same fraction)")
            ax.set_ylabel("accuracy retained vs full model (%)")
            ax.set_title(f"{model} (full: {full['accuracy'] * 100:.1f}%)" if full else model)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        fig.savefig(out_dir / "eval.png", dpi=110)
        plt.close(fig)
        paths.append(out_dir / "eval.png")
    return paths


def main(args) -> int:
    import vlmprune
    from vlmprune.testbed import questions as Q

    if args.threads:
        torch.set_num_threads(args.threads)
    known = vlmprune.list_methods()
    methods = known if not args.methods else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in known]
    if unknown:
        print(f"unknown method(s) {unknown}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    try:
        budgets = [int(b) for b in str(args.budgets).split(",") if b.strip()]
    except ValueError:
        print(f"--budgets must be comma-separated integers, got {args.budgets!r}", file=sys.stderr)
        return 2
    if not budgets or min(budgets) < 1:
        print("--budgets must be >= 1", file=sys.stderr)
        return 2
    try:
        models = resolve_models(args.model)
    except FileNotFoundError as err:
        print(f"vlmprune eval: {err}", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    rows, errors, metas = [], {}, []
    for name, loader in models:
        model, proc, fam = loader()
        r, e, meta = evaluate_model(
            name,
            model,
            proc,
            fam,
            methods,
            budgets,
            args.samples,
            args.seed,
            args.batch,
            args.device,
            dtype,
            progress=not args.json,
        )
        rows += r
        errors.update({f"{name}:{k}": v for k, v in e.items()})
        metas.append(meta)
        del model
    result = {
        "rows": rows,
        "errors": errors,
        "runs": metas,
        "methods": methods,
        "budgets": budgets,
        "families": list(Q.FAMILIES),
        "seed": args.seed,
        "dtype": args.dtype,
    }
    paths = write_outputs(Path(args.out), result, plot=not args.no_plot)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(rows, Q.FAMILIES))
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
