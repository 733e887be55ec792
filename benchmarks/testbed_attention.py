"""Where a testbed decoder's answer position looks: per layer, the attention the last prompt
position puts on the image tokens and on the question's evidence objects (``QA.evidence``),
averaged over held-out questions with evidence (counting excluded), mean over heads and best head.
Compare with the evidence share of the image tokens (uniform attention). Eager attention.

    python benchmarks/testbed_attention.py
"""

import torch

from vlmprune.testbed import model as M
from vlmprune.testbed import questions as Q
from vlmprune.testbed.scenes import make_scene
from vlmprune.testbed.train import evidence_mask, scene_size

torch.set_num_threads(2)
for fam in ["llava", "qwen"]:
    model, proc, _ = M.load_testbed(f"testbed/{fam}")
    model.set_attn_implementation({"text_config": "eager"})
    model.eval()
    items = [
        (s, qa)
        for s, qa in Q.heldout_set(150, seed=0, size=lambda s, fam=fam: scene_size(fam, s))
        if qa.evidence and qa.family != "counting"
    ][:60]
    L = model.config.text_config.num_hidden_layers
    mass = torch.zeros(L)
    maxh = torch.zeros(L)
    base = 0.0
    img_mass = torch.zeros(L)
    n = 0
    for s, qa in items:
        w, h = scene_size(fam, s)
        sc = make_scene(s, width=w, height=h)
        enc = M.encode(fam, proc, [sc.image], [qa.question])
        with torch.no_grad():
            out = model(**enc, output_attentions=True)
        img = enc["input_ids"][0] == model.config.image_token_id
        ev = evidence_mask(sc, qa, merged=fam == "qwen")
        base += (ev.sum() / ev.numel()).item()
        for li, a in enumerate(out.attentions):
            row = a[0, :, -1].float()  # (H, T) last position
            per_head = (row[:, img] * ev).sum(-1)  # (H,)
            mass[li] += per_head.mean()
            maxh[li] += per_head.max()
            img_mass[li] += row[:, img].sum(-1).mean()
        n += 1
    print(fam, f"n={n}; evidence share of image tokens {base / n:.3f}")
    for li in range(L):
        print(
            f"  layer {li}: attention on image {img_mass[li] / n:.2f}, on evidence mean-head {mass[li] / n:.3f} best-head {maxh[li] / n:.3f}"
        )
