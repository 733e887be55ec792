"""Does a testbed model answer as well about objects at the top of the image as at the bottom?

Held-out attribute and small-object questions (one evidence object each), full model, greedy
answer; accuracy per vertical third of the image by the evidence object's centre. In LLaVA's 1-D
raster order the top third is ~400-576 positions before the question, the bottom third ~0-200;
Qwen's M-RoPE puts every image token within ~24 positions of the text.

    python benchmarks/testbed_position.py testbed/llava [N] [--roll] [--seed S]

``--roll`` shifts every image down by half its height (cyclically; 168 px is a whole number of
patches and of pattern periods), so objects that were at the top are asked about at the bottom:
if accuracy follows the band, the cause is where the object sits in the token sequence / image
grid, not which objects the generator happens to put at the top.
"""

import argparse

import torch

from vlmprune.testbed import model as M
from vlmprune.testbed import questions as Q
from vlmprune.testbed.scenes import make_scene
from vlmprune.testbed.task import first_word
from vlmprune.testbed.train import scene_size

BANDS = ("top", "middle", "bottom")


def _rolled(image, shift: int):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.roll(np.asarray(image), shift, axis=0))


def position_accuracy(
    path: str, n: int = 600, batch: int = 16, roll: bool = False, seed: int = 0
) -> dict[str, tuple[int, int]]:
    """``{band: (right, total)}`` over the attribute/small questions among ``n`` held-out ones;
    with ``roll`` each image is shifted down by half its height first (bands after the shift)."""
    model, proc, fam = M.load_testbed(path)
    model.eval()
    items = [
        (s, qa)
        for s, qa in Q.heldout_set(n, seed=seed, size=lambda s: scene_size(fam, s))
        if qa.evidence and qa.family in ("attribute", "small")
    ]
    res = {b: [0, 0] for b in BANDS}
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        sizes = [scene_size(fam, s) for s, _ in chunk]
        scenes = [make_scene(s, width=w, height=h) for (s, _), (w, h) in zip(chunk, sizes)]
        images = [_rolled(sc.image, sc.image.height // 2) if roll else sc.image for sc in scenes]
        enc = M.encode(fam, proc, images, [qa.question for _, qa in chunk])
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=1, do_sample=False)
        text = proc.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for (_, qa), sc, t in zip(chunk, scenes, text):
            h = sc.image.height
            obj = sc.objects[qa.evidence[0]]
            y = (obj.centre[1] + (h // 2 if roll else 0)) % h
            band = BANDS[min(2, int(3 * y / h))]
            res[band][0] += first_word(t) == qa.answer
            res[band][1] += 1
    return {b: tuple(v) for b, v in res.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="testbed/llava")
    parser.add_argument("n", nargs="?", type=int, default=600, help="held-out questions drawn")
    parser.add_argument("--roll", action="store_true", help="shift images down by half their height")
    parser.add_argument("--seed", type=int, default=0, help="held-out sample")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for band, (r, t) in position_accuracy(args.path, args.n, roll=args.roll, seed=args.seed).items():
        tag = f"{args.path} seed {args.seed}{' rolled' if args.roll else ''}"
        print(f"{tag} {band:>6}: {r}/{t} = {r / max(1, t):.2f}")
