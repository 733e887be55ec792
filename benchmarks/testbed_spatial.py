"""How does a testbed model fail spatial questions: wrong anchor, or wrong neighbour?

For held-out spatial questions ("what shape is left of the red square?"), the full model's answer
is sorted, per relation, into: right; the anchor's own colour or shape (it found the named object
but answered about it); another object's colour or shape (it answered about a wrong object); or
absent from the scene. Mostly "another object's" with few "anchor's" means the model finds the
anchor and then picks the wrong neighbour.

    python benchmarks/testbed_spatial.py testbed/llava [N] [--seed S]
"""

import argparse
from collections import Counter

import torch

from vlmprune.testbed import model as M
from vlmprune.testbed import questions as Q
from vlmprune.testbed.evaluate import _first_word
from vlmprune.testbed.scenes import make_scene
from vlmprune.testbed.train import scene_size

RELATIONS = ("nearest",) + Q.DIRECTIONS


def spatial_errors(path: str, n: int = 200, seed: int = 1, batch: int = 16) -> dict[str, Counter]:
    """``{relation: Counter(kind -> count)}`` over ``n`` held-out spatial questions."""
    model, proc, fam = M.load_testbed(path)
    model.eval()
    items = Q.heldout_set(n, seed=seed, size=lambda s: scene_size(fam, s), families=("spatial",))
    res: dict[str, Counter] = {}
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        sizes = [scene_size(fam, s) for s, _ in chunk]
        scenes = [make_scene(s, width=w, height=h) for (s, _), (w, h) in zip(chunk, sizes)]
        enc = M.encode(fam, proc, [sc.image for sc in scenes], [qa.question for _, qa in chunk])
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=1, do_sample=False)
        texts = proc.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for (_, qa), scene, text in zip(chunk, scenes, texts):
            relation = next(r for r in RELATIONS if r in qa.question)
            answer = _first_word(text)
            anchor = scene.objects[qa.evidence[1]]  # evidence: (target, anchor)
            if answer == qa.answer:
                kind = "right"
            elif answer in (anchor.colour, anchor.shape):
                kind = "anchor's"
            elif any(answer in (o.colour, o.shape) for o in scene.objects):
                kind = "another object's"
            else:
                kind = "absent"
            res.setdefault(relation, Counter())[kind] += 1
    return res


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="testbed/llava")
    parser.add_argument("n", nargs="?", type=int, default=200, help="held-out spatial questions")
    parser.add_argument("--seed", type=int, default=1, help="held-out sample")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for relation, counts in sorted(spatial_errors(args.path, args.n, args.seed).items()):
        total = sum(counts.values())
        shares = ", ".join(f"{k} {v / total:.2f}" for k, v in counts.most_common())
        print(f"{args.path} {relation:>8} ({total}): {shares}")
