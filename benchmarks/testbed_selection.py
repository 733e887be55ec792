"""Can a testbed model *read* an object, and can it *pick* the named one among others?

For held-out attribute and small-object questions (one evidence object each), the full model is
asked the question while the decoder sees only some of the visual tokens: the evidence object's
tokens alone, or with the tokens of k other objects of the scene (random ones), or every object
token but no background, or all tokens. Dropped tokens are masked out (``attention_mask`` 0) and
the kept ones keep their original positions (M-RoPE for Qwen), which integration.md checks equal
to feeding only the kept tokens. Token ownership is the training labels' (``scene_labels``;
Qwen: a merged token belongs to the object covering most of its object patches).

    python benchmarks/testbed_selection.py testbed/llava [N] [--seed S] [--attention]

Reading: "evidence only" near 100% means the tokens carry the answer and the decoder reads them;
the drop from there as distractor objects are added is the selection error.

``--attention`` looks at the "evidence + 1 other" condition instead: per decoder layer and head, the
mean attention mass the answer position puts on the named object's tokens and on the other
object's (eager attention, ``output_attentions``), and how many wrong answers name one of the other
object's attributes. Equal masses mean content-blind retrieval: the decoder looks at "the objects",
not at the named one.
"""

import argparse

import numpy as np
import torch

from vlmprune.testbed import model as M
from vlmprune.testbed import questions as Q
from vlmprune.testbed.scenes import make_scene
from vlmprune.testbed.task import first_word
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


def _items(model, proc, fam: str, n: int, seed: int):
    """Yield ``(scene, qa, enc, owner, is_img, others)`` for the attribute/small questions among
    ``n`` held-out ones; ``owner``: (N,) object index of each visual token, -1 background;
    ``others``: the scene's other visible objects in a fixed random order."""
    image_id = model.config.image_token_id
    rng = np.random.default_rng(0)
    for s, qa in Q.heldout_set(n, seed=seed, size=lambda s: scene_size(fam, s)):
        if not (qa.evidence and qa.family in ("attribute", "small")):
            continue
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
        yield scene, qa, enc, owner, is_img, others


def _masked(enc, is_img: torch.Tensor, keep_img: np.ndarray) -> torch.Tensor:
    """``enc``'s attention mask with the visual tokens outside ``keep_img`` (N,) set to 0."""
    mask = enc["attention_mask"].clone()
    mask[0, is_img.nonzero()[:, 0][torch.from_numpy(~keep_img)]] = 0
    return mask


def selection_accuracy(path: str, n: int = 500, seed: int = 1) -> dict[str, tuple[int, int]]:
    """``{condition: (right, total)}`` over the attribute/small questions among ``n`` held-out ones."""
    model, proc, fam = M.load_testbed(path)
    model.eval()
    tok = proc.tokenizer
    res: dict[str, list[int]] = {}
    for _scene, qa, enc, owner, is_img, others in _items(model, proc, fam, n, seed):
        ev = qa.evidence[0]
        conditions = {"all tokens": np.ones(owner.size, bool), "objects only": owner >= 0}
        for k in DISTRACTORS:
            if k <= len(others):
                conditions[f"evidence + {k} other"] = np.isin(owner, [ev] + others[:k])
        pos = _positions(model, fam, enc)
        for name, keep_img in conditions.items():
            mask = _masked(enc, is_img, keep_img)
            with torch.no_grad():
                logits = model(**{**enc, "attention_mask": mask, "position_ids": pos}).logits[0, -1]
            r = res.setdefault(name, [0, 0])
            r[0] += first_word(tok.decode(logits.argmax(-1))) == qa.answer
            r[1] += 1
    return {k: tuple(v) for k, v in res.items()}


def selection_attention(path: str, n: int = 500, seed: int = 1) -> dict:
    """The "evidence + 1 other" condition under eager attention: ``{"n", "accuracy",
    "wrong_names_other", "evidence": (layers, heads), "other": (layers, heads)}``, the last two the
    mean attention mass of the answer position on the named object's and the other object's tokens."""
    model, proc, fam = M.load_testbed(path)
    model.eval()
    model.set_attn_implementation({"text_config": "eager"})
    tok = proc.tokenizer
    right, named_other, ev_mass, other_mass = [], [], [], []
    for scene, qa, enc, owner, is_img, others in _items(model, proc, fam, n, seed):
        if not others:
            continue
        ev, oth = qa.evidence[0], others[0]
        mask = _masked(enc, is_img, np.isin(owner, [ev, oth]))
        with torch.no_grad():
            out = model(
                **{**enc, "attention_mask": mask, "position_ids": _positions(model, fam, enc)},
                output_attentions=True,
            )
        pred = first_word(tok.decode(out.logits[0, -1].argmax(-1)))
        right.append(pred == qa.answer)
        o = scene.objects[oth]
        named_other.append(pred != qa.answer and pred in (o.colour, o.shape, o.size))
        att = torch.stack([a[0, :, -1] for a in out.attentions])  # layers x (H, L) -> (layers, H, L)
        img_idx = is_img.nonzero()[:, 0]  # (N,)
        ev_mass.append(att[..., img_idx[torch.from_numpy(owner == ev)]].sum(-1))  # (layers, H)
        other_mass.append(att[..., img_idx[torch.from_numpy(owner == oth)]].sum(-1))
    return {
        "n": len(right),
        "accuracy": float(np.mean(right)),
        "wrong_names_other": float(np.sum(named_other) / max(1, len(right) - np.sum(right))),
        "evidence": torch.stack(ev_mass).mean(0),
        "other": torch.stack(other_mass).mean(0),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="testbed/llava")
    parser.add_argument("n", nargs="?", type=int, default=500, help="held-out questions drawn")
    parser.add_argument("--seed", type=int, default=1, help="held-out sample")
    parser.add_argument(
        "--attention", action="store_true", help="attention mass on the named vs the other object (+1 other)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.attention:
        r = selection_attention(args.path, args.n, args.seed)
        print(
            f"{args.path} evidence + 1 other: {r['accuracy']:.2f} right of {r['n']}; "
            f"{r['wrong_names_other']:.2f} of the wrong answers name the other object's colour/shape/size"
        )
        for layer, (e, o) in enumerate(zip(r["evidence"], r["other"])):
            heads = "  ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(e.tolist(), o.tolist()))
            print(f"  layer {layer} attention mass per head, named/other object: {heads}")
        raise SystemExit(0)
    for name, (r, t) in selection_accuracy(args.path, args.n, args.seed).items():
        print(f"{args.path} {name:>20}: {r}/{t} = {r / max(1, t):.2f}")
