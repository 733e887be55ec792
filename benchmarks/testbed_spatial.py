"""How does a testbed model fail spatial questions: wrong anchor, or wrong neighbour?

For held-out spatial questions ("what shape is left of the red square?"), the full model's answer
is sorted, per relation, into: right; the anchor's own colour or shape (it found the named object
but answered about it); another object's colour or shape (it answered about a wrong object); or
absent from the scene. Mostly "another object's" with few "anchor's" means the model finds the
anchor and then picks the wrong neighbour.

``--position`` asks instead whether the visual tokens know where they are: a ridge regression
(standardised features, fitted on 70% of ``N`` held-out scenes, scored on the rest) reads each
visual token's grid row and column, normalised to (0, 1), from its hidden state at the decoder's
input (the projector's / merger's output) and after each decoder layer; the score is the held-out
R^2 (1: position linearly readable; 0 or below: not). Relating an object's place to another's
needs it, since RoPE only encodes where a token sits relative to the question, not to the anchor.

    python benchmarks/testbed_spatial.py testbed/llava [N] [--seed S] [--position]
"""

import argparse
from collections import Counter

import numpy as np
import torch

from vlmprune.testbed import model as M
from vlmprune.testbed import questions as Q
from vlmprune.testbed.scenes import make_scene
from vlmprune.testbed.task import first_word
from vlmprune.testbed.train import scene_labels, scene_size

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
            answer = first_word(text)
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


def _r2(x: np.ndarray, y: np.ndarray, n_train: int, lam: float = 100.0) -> np.ndarray:
    """Held-out R^2 per column of ``y`` (M, k) of a ridge regression on ``x`` (M, d), rows
    ``[:n_train]`` fitted, the rest scored."""
    mu, sd = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
    z = np.concatenate([(x - mu) / sd, np.ones((len(x), 1))], 1)  # standardised, with a bias column
    a, b = z[:n_train], y[:n_train]
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ b)
    pred, true = z[n_train:] @ w, y[n_train:]
    return 1 - ((pred - true) ** 2).sum(0) / ((true - true.mean(0)) ** 2).sum(0)


def position_readout(path: str, n: int = 40, seed: int = 1) -> dict[str, dict[str, tuple[float, float]]]:
    """``{hidden state: {"all tokens" | "object tokens": (R^2 row, R^2 column)}}`` of the linear
    read-out of each visual token's grid position, fitted on 70% of ``n`` held-out scenes."""
    model, proc, fam = M.load_testbed(path)
    model.eval()
    image_id = model.config.image_token_id
    feats: dict[int, list[np.ndarray]] = {}
    pos, obj = [], []
    for i in range(n):
        s = Q.HELDOUT_BASE + 7_919 * (seed * 1000 + i)  # held-out scenes
        w, h = scene_size(fam, s)
        scene = make_scene(s, width=w, height=h)
        enc = M.encode(fam, proc, [scene.image], ["what colour is the object nearest the star?"])
        with torch.no_grad():
            hidden = model(**enc, output_hidden_states=True).hidden_states  # (layers + 1) x (1, L, d)
        is_img = enc["input_ids"][0] == image_id
        lab = scene_labels(scene, merged=fam == "qwen")
        if int(is_img.sum()) != len(lab["pos"]):
            raise AssertionError(f"{int(is_img.sum())} visual tokens, {len(lab['pos'])} labels")
        pos.append(lab["pos"].numpy())  # (N, 2): row, column in (0, 1)
        obj.append(lab["object"].numpy() > 0)  # (N,)
        for j, hs in enumerate(hidden):
            feats.setdefault(j, []).append(hs[0][is_img].float().numpy())  # (L, d) -> (N, d)
    n_train = sum(len(p) for p in pos[: int(0.7 * n)])
    y, is_obj = np.concatenate(pos), np.concatenate(obj)
    o = np.flatnonzero(is_obj)
    out = {}
    for j, xs in feats.items():
        x = np.concatenate(xs)
        name = "decoder input" if j == 0 else f"after layer {j - 1}"
        out[name] = {
            "all tokens": tuple(_r2(x, y, n_train)),
            "object tokens": tuple(_r2(x[o], y[o], int((o < n_train).sum()))),
        }
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="testbed/llava")
    parser.add_argument("n", nargs="?", type=int, default=200, help="held-out spatial questions")
    parser.add_argument("--seed", type=int, default=1, help="held-out sample")
    parser.add_argument(
        "--position", action="store_true", help="linear read-out of token positions (N scenes)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.position:
        for name, parts in position_readout(args.path, min(args.n, 200), args.seed).items():
            cells = "; ".join(f"{k}: row {r:.2f}, column {c:.2f}" for k, (r, c) in parts.items())
            print(f"{args.path} {name:>15}  R^2 {cells}")
        raise SystemExit(0)
    for relation, counts in sorted(spatial_errors(args.path, args.n, args.seed).items()):
        total = sum(counts.values())
        shares = ", ".join(f"{k} {v / total:.2f}" for k, v in counts.most_common())
        print(f"{args.path} {relation:>8} ({total}): {shares}")
