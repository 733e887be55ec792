"""Accuracy of method variants (any constructor arguments) on a testbed checkpoint's held-out set.

    python benchmarks/testbed_probe.py testbed/qwen 200 \
        '[["full", null, {}], ["sppruner", 64, {"rho": 1.0}], ["sppruner", 64, {"union": "product"}]]'

Budgets are of 576 tokens (Qwen: ``ratio = budget / 576``, as in ``vlmprune eval``). The answer is
the argmax of the last logits, which is what greedy one-token generation returns. A diagnostic for
variants ``vlmprune eval`` cannot name; the evaluation itself is ``vlmprune eval``.
"""

from __future__ import annotations

import json
import sys

import torch

import vlmprune
from vlmprune.testbed import model as M
from vlmprune.testbed import questions as Q
from vlmprune.testbed.task import budget_kwargs, scene_images
from vlmprune.testbed.train import scene_size


def main(path: str, samples: int, configs: list) -> dict:
    model, proc, fam = M.load_testbed(path)
    model.to(torch.bfloat16).eval()
    items = Q.heldout_set(samples, seed=0, size=lambda s: scene_size(fam, s))
    ans = M.answer_token_ids(proc.tokenizer, fam)
    res: dict[str, list[int]] = {}
    for i in range(0, len(items), 16):
        chunk = items[i : i + 16]
        enc = M.encode(fam, proc, scene_images(fam, chunk), [qa.question for _, qa in chunk])
        enc["pixel_values"] = enc["pixel_values"].to(torch.bfloat16)
        for name, budget, kw in configs:
            with torch.no_grad():
                if name == "full":
                    logits = model(**enc, logits_to_keep=1).logits[:, -1]
                else:
                    method = vlmprune.get_method(name, **budget_kwargs(fam, budget), **kw)
                    with method(model):
                        logits = model(**enc, logits_to_keep=1).logits[:, -1]
            r = res.setdefault(f"{name}@{budget} {json.dumps(kw)}", [0, 0])
            r[0] += sum(int(p == ans[qa.answer]) for p, (_, qa) in zip(logits.argmax(-1).tolist(), chunk))
            r[1] += len(chunk)
    return {k: a / n for k, (a, n) in res.items()}


if __name__ == "__main__":
    out = main(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]))
    for k, v in out.items():
        print(f"{k:50s} {v * 100:.1f}%")
