"""SPpruner's stages, one at a time, on the testbed checkpoints (the ablation in docs/methods.md).

    python benchmarks/testbed_sppruner_ablation.py --model testbed-qwen --samples 300 --seed 1
    python benchmarks/testbed_sppruner_ablation.py --model testbed-llava --samples 300 --seed 1 \
        --variants default,focus=saliency --budgets 64

Every variant is ``SPPruner(**options)`` with one option changed from the defaults (``VARIANTS``);
the full model, PromPrune and random run on the same questions. Each batch runs the vision tower
once and serves every configuration (``vlmprune.session.capture_vision``), and answers come from
``model.generate`` as in ``vlmprune eval``. Budgets are of 576 tokens (testbed-qwen keeps the same
fraction of its 64-144 tokens). Writes ``results/testbed/sppruner_ablation/<model>_seed<seed>_n<samples>.json``
(accuracy and share of the full model's accuracy kept per configuration, overall and per question
family) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

import vlmprune
from vlmprune.core.method import Method
from vlmprune.core.types import ImageTokens, Kept
from vlmprune.methods.sppruner import contrast, relevance
from vlmprune.session import capture_vision
from vlmprune.testbed import questions as Q
from vlmprune.testbed.scenes import make_scene
from vlmprune.testbed.task import TestbedTask
from vlmprune.testbed.train import scene_size

#: label -> SPPruner options that differ from the defaults (each row changes one stage)
VARIANTS: dict[str, dict] = {
    "default": {},
    "focus=saliency": {"focus": "saliency"},
    "focus=relevance": {"focus": "relevance"},
    "focus=union": {"focus": "union"},
    "subjects=off": {"subjects": False},
    "context=merge": {"context": "merge"},
    "neighbours=off": {"merge_neighbors": False},
    "place=nearest": {"place": "nearest"},
    "place=centroid": {"place": "centroid"},
    "rho=0.5": {"rho": 0.5},
    "rho=0.75": {"rho": 0.75},
    "rho=1.0": {"rho": 1.0},
    # every stage as the abstract alone suggests: min-max union, no peaks, merged runs
    "abstract-only": {
        "focus": "union",
        "subjects": False,
        "context": "merge",
        "place": "nearest",
        "rho": 0.75,
    },
}
BASELINES = ("promprune", "random")


def configs(variants: list[str], budgets: list[int]) -> list[tuple[str, str, int | None, dict]]:
    """``[(label, method, budget, options)]``: the full model, the baselines, then the variants."""
    out: list[tuple[str, str, int | None, dict]] = [("full", "full", None, {})]
    for b in budgets:
        out += [(name, name, b, {}) for name in BASELINES]
        out += [(f"sppruner {v}", "sppruner", b, VARIANTS[v]) for v in variants]
    return out


def run(
    model_name: str, samples: int, seed: int, budgets: list[int], variants: list[str], batch: int = 16
) -> dict:
    task = TestbedTask()
    [(name, loader)] = task.models(model_name)
    model, proc, fam = loader()
    model.eval()
    items = task.items(fam, samples, seed)
    cfgs = configs(variants, budgets)
    right = {(c[0], c[2]): dict.fromkeys(task.categories, 0) for c in cfgs}
    total = dict.fromkeys(task.categories, 0)
    t0 = time.time()
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        enc = task.encode(fam, proc, [it.image for it in chunk], [it.question for it in chunk])
        for it in chunk:
            total[it.category] += 1
        n_in = enc["input_ids"].shape[1]
        capture = capture_vision(model, enc)
        for label, method, budget, opts in cfgs:
            with torch.no_grad():
                if method == "full":
                    out = model.generate(**capture.inputs, max_new_tokens=1, do_sample=False)
                else:
                    kw = {**task.budget_kwargs(fam, budget, seed, method), **opts}
                    with vlmprune.get_method(method, **kw)(model, vision=capture):
                        out = model.generate(**capture.inputs, max_new_tokens=1, do_sample=False)
            texts = proc.tokenizer.batch_decode(out[:, n_in:], skip_special_tokens=True)
            for text, it in zip(texts, chunk):
                right[(label, budget)][it.category] += int(task.score(text, it))
    n = sum(total.values())
    full = sum(right[("full", None)].values()) / n
    rows = []
    for label, method, budget, opts in cfgs:
        r = right[(label, budget)]
        acc = sum(r.values()) / n
        fams = {k: r[k] / max(1, total[k]) for k in task.categories}
        rows.append(dict(config=label, method=method, budget=budget, options=opts, accuracy=acc,
                         retained=acc / full if full else 0.0, families=fams))  # fmt: skip
    return dict(model=name, seed=seed, samples=n, seconds=round(time.time() - t0, 1), rows=rows)


@dataclass
class _Probe(Method):
    """Keeps every token and records what a text- and saliency-aware method is given."""

    seen: list = field(default_factory=list)
    name: ClassVar[str] = "probe"
    needs_saliency: ClassVar[bool] = True
    needs_text: ClassVar[bool] = True

    def select_images(self, images: list[ImageTokens]) -> list[Kept]:
        self.seen += images
        return [Kept(indices=torch.arange(im.num_tokens)) for im in images]


def _object_tokens(scene, grid: tuple[int, int]) -> torch.Tensor:
    """(h*w,) bool: tokens of the ``grid`` that cover an object pixel (patch labels pooled)."""
    lab = torch.from_numpy(scene.patch_object >= 0).float()[None, None]  # (1, 1, H/14, W/14)
    return torch.nn.functional.adaptive_max_pool2d(lab, grid).flatten() > 0


def signals(model_name: str, samples: int, seed: int, top_k: int = 8, batch: int = 16) -> dict:
    """Do the focus signals point at objects? Per image: the share of object tokens among the
    ``top_k`` by saliency and by relevance (min-max), the object share of the whole grid (what a
    random pick gets), and how often the calibrated relevance singles out any token, and where."""
    task = TestbedTask()
    [(_, loader)] = task.models(model_name)
    model, proc, fam = loader()
    model.eval()
    held = Q.heldout_set(samples, seed=seed, size=lambda s: scene_size(fam, s))
    keys = ("saliency", "relevance", "grid", "fires", "fired_on_objects")
    acc = dict.fromkeys(keys, 0.0)
    for i in range(0, len(held), batch):
        chunk = held[i : i + batch]
        scenes = [make_scene(s, width=scene_size(fam, s)[0], height=scene_size(fam, s)[1]) for s, _ in chunk]
        enc = task.encode(fam, proc, [sc.image for sc in scenes], [qa.question for _, qa in chunk])
        probe = _Probe(ratio=1.0)
        with torch.no_grad(), probe(model, vision=capture_vision(model, enc)):
            model(**enc, logits_to_keep=1)
        for sc, im in zip(scenes, probe.seen):
            obj = _object_tokens(sc, tuple(im.grid[-2:]))
            rel = relevance(im.features, im.text)  # (N,)
            acc["saliency"] += float(obj[torch.topk(im.saliency.float(), top_k).indices].float().mean())
            acc["relevance"] += float(obj[torch.topk(rel, top_k).indices].float().mean())
            acc["grid"] += float(obj.float().mean())
            fired = contrast(rel) > 0
            acc["fires"] += float(fired.any())
            acc["fired_on_objects"] += float(obj[fired].float().mean()) if fired.any() else 0.0
    n = len(held)
    out = {k: acc[k] / n for k in keys[:4]}
    out["fired_on_objects"] = acc["fired_on_objects"] / max(1.0, acc["fires"])
    return dict(model=model_name, seed=seed, samples=n, top_k=top_k, shares=out)


def table(result: dict) -> str:
    lines = [f"{result['model']}, seed {result['seed']}, {result['samples']} questions"]
    lines.append(f"{'configuration':32s} {'budget':>6s} {'accuracy':>9s} {'retained':>9s}")
    for r in result["rows"]:
        b = "all" if r["budget"] is None else str(r["budget"])
        lines.append(f"{r['config']:32s} {b:>6s} {r['accuracy'] * 100:8.1f}% {r['retained'] * 100:8.1f}%")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="testbed-qwen", choices=["testbed-qwen", "testbed-llava"])
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--budgets", default="64,128")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="results/testbed/sppruner_ablation")
    p.add_argument("--signals", action="store_true", help="only the focus-signal diagnosis (no answers)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.signals:
        sig = signals(a.model, a.samples, a.seed)
        path = out / f"{a.model}_signals_seed{a.seed}_n{a.samples}.json"
        path.write_text(json.dumps(sig, indent=1))
        print(json.dumps(sig, indent=1))
        return
    variants = [v for v in a.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    result = run(a.model, a.samples, a.seed, [int(b) for b in a.budgets.split(",")], variants)
    path = out / f"{a.model}_seed{a.seed}_n{a.samples}.json"
    path.write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"wrote {path} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
