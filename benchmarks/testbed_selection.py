"""Can a testbed model *read* an object, and can it *pick* the named one among others?

For held-out attribute and small-object questions (one evidence object each), the full model is
asked the question while the decoder sees only some of the visual tokens: the evidence object's
tokens alone, or with the tokens of k other objects of the scene (random ones), or every object
token but no background, or all tokens. Dropped tokens are masked out (``attention_mask`` 0) and
the kept ones keep their original positions (M-RoPE for Qwen), which integration.md checks equal
to feeding only the kept tokens. Token ownership is the training labels' (``scene_labels``;
Qwen: a merged token belongs to the object covering most of its object patches).

    python benchmarks/testbed_selection.py testbed/llava [N] [--seed S]

Reading: "evidence only" near 100% means the tokens carry the answer and the decoder reads them;
the drop from there as distractor objects are added is the selection error.
"""

import argparse

import numpy as np
import torch

from vlmprune.testbed import model as M
from vlmprune.testbed import questions as Q
from vlmprune.testbed.evaluate import _first_word
from vlmprune.testbed.scenes import make_scene
from vlmprune.testbed.train import scene_labels, scene_size

DISTRACTORS = (0, 1, 2, 4, 8)


def _positions(model, fam: str, enc) -> torch.Tensor:
    """Position ids of the unpruned sequence (LLaVA: 0..L-1; Qwen: its M-RoPE ids)."""
    if fam == "llava":
        return torch.arange(enc["input_ids"].shape[1])[None]
    pos, _ = model.model.get_rope_index(
        enc["input_ids"],
        mm_token_type_ids=enc["mm_token_type_ids"],
        image_grid_thw=enc["image_grid_thw"],
        attention_mask=enc["attention_mask"],
    )
    return pos  # (3, B, L)


def selection_accuracy(path: str, n: int = 500, seed: int = 1) -> dict[str, tuple[int, int]]:
    """``{condition: (right, total)}`` over the attribute/small questions among ``n`` held-out ones."""
    model, proc, fam = M.load_testbed(path)
    model.eval()
    tok = proc.tokenizer
    image_id = model.config.image_token_id
    rng = np.random.default_rng(0)
    items = [
        (s, qa)
        for s, qa in Q.heldout_set(n, seed=seed, size=lambda s: scene_size(fam, s))
        if qa.evidence and qa.family in ("attribute", "small")
    ]
    res: dict[str, list[int]] = {}
    for s, qa in items:
        w, h = scene_size(fam, s)
        scene = make_scene(s, width=w, height=h)
        enc = M.encode(fam, proc, [scene.image], [qa.question])
        owner = scene_labels(scene, merged=fam == "qwen")["object"].numpy() - 1  # (N,), -1 background
        is_img = enc["input_ids"][0] == image_id
        if int(is_img.sum()) != owner.size:
            raise AssertionError(f"{int(is_img.sum())} visual tokens, {owner.size} labels")
        ev = qa.evidence[0]
        others = [o for o in range(len(scene.objects)) if o != ev and (owner == o).any()]
        rng.shuffle(others)
        conditions = {"all tokens": np.ones(owner.size, bool), "objects only": owner >= 0}
        for k in DISTRACTORS:
            if k <= len(others):
                conditions[f"evidence + {k} other"] = np.isin(owner, [ev] + others[:k])
        pos = _positions(model, fam, enc)
        for name, keep_img in conditions.items():
            mask = enc["attention_mask"].clone()
            mask[0, is_img.nonzero()[:, 0][torch.from_numpy(~keep_img)]] = 0
            with torch.no_grad():
                logits = model(**{**enc, "attention_mask": mask, "position_ids": pos}).logits[0, -1]
            r = res.setdefault(name, [0, 0])
            r[0] += _first_word(tok.decode(logits.argmax(-1))) == qa.answer
            r[1] += 1
    return {k: tuple(v) for k, v in res.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="testbed/llava")
    parser.add_argument("n", nargs="?", type=int, default=500, help="held-out questions drawn")
    parser.add_argument("--seed", type=int, default=1, help="held-out sample")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, (r, t) in selection_accuracy(args.path, args.n, args.seed).items():
        print(f"{args.path} {name:>20}: {r}/{t} = {r / max(1, t):.2f}")
