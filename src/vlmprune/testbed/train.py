"""Train a testbed VLM on the procedural task (CPU or GPU; seeded, resumable).

    python -m vlmprune.testbed.train --family llava --out testbed/llava --minutes 240 --resume

Recipe:

1. **Vision pretraining** (``--vision-steps``): the vision tower alone, on dense per-patch labels
   from the generator (object colour / shape / size class / object-centre flag of each 14-px patch,
   read from the features the LLM sees: ``hidden_states[-2]``) and image-level objectives on the CLS
   token (which colours, shapes and colour-shape pairs are present; per-colour / per-shape / total
   counts), both at the feature layer and at the pooled output - without a CLS objective the CLS
   token gets no gradient with ``vision_feature_layer=-2`` and CLS attention would be meaningless.
   (Qwen has no CLS: the image-level heads read the mean of the merged tokens.)
2. **VLM training**: many questions about the same image packed into one sequence, each question
   isolated by a block mask (it sees the image and itself, as at evaluation; see :func:`make_batch`),
   loss on every answer token (and its end-of-turn token); the tower is frozen for
   ``--freeze-steps`` steps, then trained at ``--vision-lr-mult`` x the learning rate with the
   auxiliary losses kept on. A curriculum moves scenes from few large subjects to crowded small ones
   over ``--curriculum-steps`` steps. Optional: word alignment (``--align-weight``), evidence
   attention (``--attn-weight``), the spatial second hop (``--target-attn-weight``), a per-patch
   position objective on the tower (``--position-weight``), a final learning-rate cooldown
   (``--decay-minutes``).

bf16 autocast on CPU (AMX) with fp32 master weights. Every ``--ckpt-minutes`` the model is written
with ``save_pretrained`` (bf16 safetensors, loadable offline) to ``--out`` and the training state
(fp32 weights, heads, optimizer, step) to ``--out/resume/``; ``--resume`` continues from there.
Per-family held-out accuracy is logged every ``--eval-minutes`` to ``--out/train_log.jsonl``.
Data depend only on the step (scene seeds ``step * batch + i``), so a run is reproducible.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vlmprune.testbed import model as M
from vlmprune.testbed import questions as Q
from vlmprune.testbed.scenes import COLOURS, SHAPES, SIZES, make_scene

N_COUNTS = len(COLOURS) + len(SHAPES) + 1  # per-colour, per-shape, total
MAX_COUNT = 16
N_PRESENT = len(COLOURS) + len(SHAPES) + len(COLOURS) * len(SHAPES)


# ----------------------------------------------------------------------------------------- labels
def _pool2(a: np.ndarray) -> np.ndarray:
    """2x2 pooling of a label grid for Qwen's merged tokens: the most frequent non-zero label."""
    h, w = a.shape
    b = a.reshape(h // 2, 2, w // 2, 2).transpose(0, 2, 1, 3).reshape(h // 2, w // 2, 4)
    out = np.zeros((h // 2, w // 2), a.dtype)
    for i in range(h // 2):
        for j in range(w // 2):
            v = b[i, j][b[i, j] > 0]
            if v.size:
                vals, cnt = np.unique(v, return_counts=True)
                out[i, j] = vals[cnt.argmax()]
    return out


def scene_labels(scene, merged: bool = False) -> dict:
    size_id = np.array([SIZES.index(o.size) + 1 for o in scene.objects] + [0], np.int64)
    lab = dict(
        colour=scene.patch_colour,
        shape=scene.patch_shape,
        centre=scene.patch_centre,
        size=size_id[scene.patch_object],
    )
    lab["object"] = scene.patch_object + 1  # 0 background, else 1 + object index
    if merged:
        lab = {k: _pool2(v) for k, v in lab.items()}
    gh, gw = lab["object"].shape  # the token grid
    rows, cols = np.meshgrid((np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw, indexing="ij")
    lab = {k: torch.from_numpy(np.ascontiguousarray(v)).reshape(-1) for k, v in lab.items()}
    lab["pos"] = torch.from_numpy(np.stack([rows, cols], -1).reshape(-1, 2)).float()  # (gh*gw, 2) in (0, 1)
    cov = scene.coverage(block=28 if merged else 14, cells=7)
    lab["mask"] = torch.from_numpy(cov.reshape(-1, cov.shape[-1]))
    lab["obj_colour"] = torch.tensor([COLOURS.index(o.colour) + 1 for o in scene.objects], dtype=torch.long)
    lab["obj_shape"] = torch.tensor([SHAPES.index(o.shape) + 1 for o in scene.objects], dtype=torch.long)
    lab["obj_size"] = torch.tensor([SIZES.index(o.size) + 1 for o in scene.objects], dtype=torch.long)
    present = torch.zeros(N_PRESENT)
    counts = torch.zeros(N_COUNTS, dtype=torch.long)
    for o in scene.objects:
        ci, si = COLOURS.index(o.colour), SHAPES.index(o.shape)
        present[ci] = 1
        present[len(COLOURS) + si] = 1
        present[len(COLOURS) + len(SHAPES) + ci * len(SHAPES) + si] = 1
        counts[ci] += 1
        counts[len(COLOURS) + si] += 1
    counts[-1] = len(scene.objects)
    lab["present"] = present
    lab["counts"] = counts.clamp(max=MAX_COUNT - 1)
    return lab


class AuxHeads(nn.Module):
    """Auxiliary heads on the vision features (not part of the saved HF model).

    ``position_weight`` > 0 adds a per-patch position objective: a linear head reads each patch's
    (row, column) in the token grid, normalised to (0, 1), from its feature (MSE). Real CLIP-style
    features carry their position linearly; this tower's lost it under the content losses, and
    without it the decoder cannot relate one object's place to another's (spatial questions).
    ``object_share`` in [0, 1) is the object patches' share of that loss (0: every patch alike;
    0.5: objects and background weigh the same however few object patches there are)."""

    def __init__(self, d: int, position_weight: float = 0.0, object_share: float = 0.0):
        super().__init__()
        if not 0.0 <= object_share < 1.0:
            raise ValueError(f"object_share must be in [0, 1), got {object_share}")
        self.position_weight = position_weight
        self.object_share = object_share
        self.norm = nn.LayerNorm(d)
        self.colour = nn.Linear(d, len(COLOURS) + 1)
        self.shape = nn.Linear(d, len(SHAPES) + 1)
        self.size = nn.Linear(d, len(SIZES) + 1)
        self.centre = nn.Linear(d, 2)
        self.mask = nn.Linear(d, 49)  # 7x7 object coverage inside the patch: its shape geometry
        self.img_norm = nn.LayerNorm(d)
        self.present = nn.Linear(d, N_PRESENT)
        self.counts = nn.Linear(d, N_COUNTS * MAX_COUNT)
        # created last, so the seeded initialisation of the heads above is the one earlier runs had;
        # small: near the centre at first (the default init's read-out of these features is ~20
        # tokens off and its gradient shocks the tower), not zero (the tower's gradient goes through it)
        self.position = nn.Linear(d, 2)
        nn.init.normal_(self.position.weight, std=0.02)
        nn.init.constant_(self.position.bias, 0.5)

    def losses(self, tokens: torch.Tensor, image_vecs: list[torch.Tensor], labels: list[dict]) -> dict:
        """``tokens``: (sum of tokens, d) patch features in raster order; ``image_vecs``: list of
        (B, d) image-level vectors (CLS or pooled), each supervised by presence and counts.

        Per patch: colour (with background: the object/background detector), and on object patches
        only, shape and size class; object centres. Per object: the mean of its patches' features
        classified by the same heads (shape is rarely decidable from one interior patch; the pooled
        loss pushes each patch to carry its share of the object's shape evidence)."""
        lab = {k: torch.cat([x[k] for x in labels]) for k in ("colour", "shape", "size", "centre")}
        h = self.norm(tokens.float())
        out = {}
        accs = {}
        fg = lab["colour"] > 0
        logits = self.colour(h)
        out["colour"] = F.cross_entropy(logits, lab["colour"])
        accs["colour"] = ((logits.argmax(-1) == lab["colour"]) & fg).sum().item() / max(1, fg.sum().item())
        for k in ("shape", "size"):
            if fg.any():
                lg = getattr(self, k)(h[fg])
                out[k] = F.cross_entropy(lg, lab[k][fg])
                accs[k] = (lg.argmax(-1) == lab[k][fg]).float().mean().item()
        if self.position_weight > 0:
            pos = torch.cat([x["pos"] for x in labels])  # (sum of tokens, 2)
            diff = self.position(h) - pos  # (sum of tokens, 2)
            err = diff.pow(2).mean(-1)  # (sum of tokens, 2) -> (sum of tokens,)
            if self.object_share > 0 and fg.any() and (~fg).any():
                s = self.object_share
                loss = s * err[fg].mean() + (1 - s) * err[~fg].mean()
            else:
                loss = err.mean()
            out["position"] = self.position_weight * loss
            grid = torch.tensor(
                [float(x["object"].numel()) ** 0.5 for x in labels]
            ).mean()  # ~ side, in tokens
            dist = diff.abs().mean(-1) * grid  # (sum of tokens,) mean error in tokens
            accs["pos_err"] = dist.mean().item()
            if fg.any():
                accs["pos_err_obj"] = dist[fg].mean().item()
        cw = torch.tensor([1.0, 5.0])  # centre patches are rare
        out["centre"] = F.cross_entropy(self.centre(h), lab["centre"], weight=cw)
        mask = torch.cat([x["mask"] for x in labels])
        ml = self.mask(h)
        out["mask"] = 4.0 * F.binary_cross_entropy_with_logits(ml, mask)
        tot = mask.sum(-1)
        edge = (tot > 0) & (tot < mask.shape[-1])  # patches on an object boundary
        if edge.any():
            accs["mask_edge"] = ((ml[edge] > 0) == (mask[edge] > 0.5)).float().mean().item()
        # object-level: mean feature of each object's patches
        seg, targets, base = [], {k: [] for k in ("colour", "shape", "size")}, 0
        for x in labels:
            seg.append(torch.where(x["object"] > 0, x["object"] - 1 + base, -1))
            for k in targets:
                targets[k].append(x[f"obj_{k}"])
            base += len(x["obj_colour"])
        seg = torch.cat(seg)
        if base and (seg >= 0).any():
            m = seg >= 0
            sums = torch.zeros(base, h.shape[-1]).index_add_(0, seg[m], h[m])
            cnt = torch.zeros(base).index_add_(0, seg[m], torch.ones(int(m.sum())))
            has = cnt > 0
            pooled = sums[has] / cnt[has, None]
            for k in targets:
                t = torch.cat(targets[k])[has]
                lg = getattr(self, k)(pooled)
                out[f"obj_{k}"] = F.cross_entropy(lg, t)
                accs[f"obj_{k}"] = (lg.argmax(-1) == t).float().mean().item()
        if not image_vecs:
            return out, accs
        present = torch.stack([x["present"] for x in labels])
        counts = torch.stack([x["counts"] for x in labels])
        for j, v in enumerate(image_vecs):
            g = self.img_norm(v.float())
            pl = self.present(g)
            out[f"present{j}"] = F.binary_cross_entropy_with_logits(pl, present)
            tp = ((pl > 0) & (present > 0)).sum().item()
            accs[f"present_f1_{j}"] = 2 * tp / max(1, (pl > 0).sum().item() + (present > 0).sum().item())
            cl = self.counts(g).view(-1, N_COUNTS, MAX_COUNT)
            out[f"counts{j}"] = F.cross_entropy(cl.reshape(-1, MAX_COUNT), counts.reshape(-1))
            accs[f"count{j}"] = (cl.argmax(-1) == counts).float().mean().item()
        return out, accs


# ----------------------------------------------------------------------------------------- data
def scene_size(family: str, seed: int) -> tuple[int, int]:
    if family == "llava":
        return 336, 336
    rng = random.Random(seed * 7 + 3)
    while True:  # dynamic resolution: multiples of 28, 224..476 a side, at most 336*336 pixels
        w, h = rng.randrange(224, 477, 28), rng.randrange(224, 477, 28)
        if w * h <= M.QWEN_MAX_PIXELS:
            return w, h


def make_batch(
    family,
    processor,
    seeds,
    level,
    k_questions,
    eos_id,
    image_id,
    families=Q.FAMILIES,
    packing="isolated",
    model=None,
):
    """One training batch: ``k_questions`` questions about each scene packed into one sequence.

    ``packing="isolated"`` (default): the sequence is the first prompt up to and including the image
    tokens (the shared prefix), then one segment per question (``question + answer + end-of-turn``).
    A block mask lets each segment attend to the prefix and to itself only, and its positions restart
    right after the prefix, so every segment computes exactly what a single-question sequence would
    (tested): no question can read another question's answer. ``packing="multiturn"``: a plain
    causal multi-turn chat, in which later questions can be answered from earlier answers (a text
    shortcut that inflated training accuracy 10-15 points above held-out accuracy).

    Returns ``(scenes, inputs, (rows, cols, targets), questions)``: ``inputs`` for the stock model
    (isolated: with a ``(B, 1, L, L)`` boolean ``attention_mask`` - see :func:`additive` for eager
    attention - and explicit ``position_ids``; Qwen's M-RoPE ids are taken from
    ``model.model.get_rope_index``, so ``model`` is required there); the logit at
    ``(rows[i], cols[i])`` predicts ``targets[i]``; ``questions``: ``(b, position, qa)`` per packed
    question, ``position`` being the one whose logit predicts its answer.
    """
    if packing not in ("isolated", "multiturn"):
        raise ValueError(f"`packing` must be 'isolated' or 'multiturn', got {packing!r}")
    if packing == "isolated" and family == "qwen" and model is None:
        raise ValueError("`model` is required for isolated packing on qwen (M-RoPE position ids)")
    tok = processor.tokenizer
    scenes = [
        make_scene(s, level=level, width=scene_size(family, s)[0], height=scene_size(family, s)[1])
        for s in seeds
    ]
    ip = processor.image_processor
    img = ip([sc.image for sc in scenes], return_tensors="pt")
    if family == "llava":
        counts = [576] * len(scenes)
        extra = {}
    else:
        counts = (img["image_grid_thw"].prod(-1) // 4).tolist()
        extra = {"image_grid_thw": img["image_grid_thw"]}
    isolated = packing == "isolated"
    seqs, segs, poss, tgts, qseg = [], [], [], [], []
    for b, (sc, n_img) in enumerate(zip(scenes, counts)):
        ids, seg_of, pos_of, pos, tid = [], [], [], [], []
        for i, qa in enumerate(Q.questions_for_scene(sc, k_questions, families=families)):
            seg = tok(M.turn_text(family, qa.question, i == 0 or isolated), add_special_tokens=False)[
                "input_ids"
            ]
            if i == 0:  # the shared prefix: everything up to and including the image tokens
                j = seg.index(image_id)
                ids += seg[:j] + [image_id] * n_img
                n_prefix = len(ids)
                seg_of += [0] * n_prefix
                pos_of += list(range(n_prefix))
                rest = seg[j + 1 :]
            else:
                rest = seg[seg.index(image_id) + 1 :] if isolated else seg
            answer = tok(M.answer_text(family, qa.answer), add_special_tokens=False)["input_ids"] + [eos_id]
            first = len(ids) + len(rest)  # where the answer starts; the logit at p predicts token p + 1
            qseg.append((b, first - 1, qa))
            pos += range(first - 1, first - 1 + len(answer))
            tid += answer
            body = rest + answer
            # isolated: each segment's positions restart right after the prefix, as if it were alone
            start = n_prefix if isolated else len(ids)
            ids += body
            seg_of += [i + 1 if isolated else 0] * len(body)
            pos_of += range(start, start + len(body))
        seqs.append(ids)
        segs.append(seg_of)
        poss.append(pos_of)
        tgts.append((pos, tid))
    L = max(len(s) for s in seqs)
    B = len(seqs)
    input_ids = torch.full((B, L), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    seg_ids = torch.full((B, L), -1, dtype=torch.long)
    rows, cols, targets = [], [], []
    for b, (s, (pos, tid)) in enumerate(zip(seqs, tgts)):  # right padding for training
        input_ids[b, : len(s)] = torch.tensor(s)
        mask[b, : len(s)] = 1
        seg_ids[b, : len(s)] = torch.tensor(segs[b])
        rows += [b] * len(pos)
        cols += pos
        targets += tid
    inputs = dict(input_ids=input_ids, attention_mask=mask, pixel_values=img["pixel_values"], **extra)
    if family == "qwen":
        inputs["mm_token_type_ids"] = (input_ids == image_id).to(torch.int32)
    if packing == "isolated":
        inputs["attention_mask"] = block_mask(seg_ids)
        inputs["position_ids"] = _positions(family, model, seqs, poss, segs, inputs, L)
    return scenes, inputs, (torch.tensor(rows), torch.tensor(cols), torch.tensor(targets)), qseg


def block_mask(seg_ids: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` segment ids (0: shared prefix, k > 0: segment k, -1: padding) -> ``(B, 1, L, L)``
    boolean mask (True: may attend): causal, and a segment sees the prefix and itself only; padding
    rows see only themselves (a fully masked row would give NaN)."""
    q = seg_ids[:, :, None]  # (B, L, 1)
    k = seg_ids[:, None, :]  # (B, 1, L)
    L = seg_ids.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    allowed = causal & (k >= 0) & ((k == 0) | (k == q))
    allowed |= torch.eye(L, dtype=torch.bool) & (q < 0)
    return allowed[:, None]  # (B, L, L) -> (B, 1, L, L)


def additive(mask: torch.Tensor) -> torch.Tensor:
    """A boolean ``(B, 1, L, L)`` mask as the additive float mask eager attention adds to its scores
    (eager attention would add a boolean mask as 0/1 and attend everywhere)."""
    return torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)


def evidence_mask(scene, qa, merged: bool = False, objects=None) -> torch.Tensor:
    """``(n_tokens,)`` 1.0 on the visual tokens (14-px patches, or Qwen's merged 28-px blocks, raster
    order) that cover any pixel of ``qa``'s evidence objects (or of ``objects``, indices), else 0."""
    block = 28 if merged else 14
    ids = torch.from_numpy(scene.object_map.astype(np.int64))  # (H, W): 0 background, 1 + object index
    hit = torch.zeros_like(ids, dtype=torch.bool)
    for i in qa.evidence if objects is None else objects:
        hit |= ids == i + 1
    h, w = hit.shape
    return hit.reshape(h // block, block, w // block, block).any(3).any(1).reshape(-1).float()


class AttentionProbe:
    """The attention probabilities of one head of one decoder layer, recomputed from the layer's own
    inputs (captured by a forward pre-hook) with its own projections and rotary function, so the
    model keeps running SDPA (eager attention with ``output_attentions`` was 3x slower here).

    ``probs(mask)`` -> (B, L, L) for a boolean (B, 1, L, L) mask; tested equal to eager attention."""

    def __init__(self, model, layer: int = -1, head: int = 0):
        import sys

        self.attn = model.model.language_model.layers[layer].self_attn
        self.rope = sys.modules[type(self.attn).__module__].apply_rotary_pos_emb
        self.head = head
        self.inputs = None
        self.handle = self.attn.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        self.inputs = (h, kwargs["position_embeddings"])

    def probs(self, mask: torch.Tensor) -> torch.Tensor:
        h, (cos, sin) = self.inputs
        B, L, _ = h.shape
        hd = self.attn.head_dim
        q = self.attn.q_proj(h).view(B, L, -1, hd).transpose(1, 2)  # (B, H, L, hd)
        k = self.attn.k_proj(h).view(B, L, -1, hd).transpose(1, 2)  # (B, H_kv, L, hd)
        q, k = self.rope(q, k, cos, sin)
        kv_head = self.head * k.shape[1] // q.shape[1]
        with torch.autocast(h.device.type, enabled=False):  # fp32 scores, also under bf16 autocast
            scores = (q[:, self.head].float() @ k[:, kv_head].float().transpose(-1, -2)) * self.attn.scaling
            scores = scores.masked_fill(~mask[:, 0], torch.finfo(torch.float32).min)  # (B, L, L)
            return scores.softmax(-1)

    def remove(self):
        self.handle.remove()


def evidence_attention_loss(att, image_positions, questions, scenes, merged, target_only=False):
    """Mean over packed questions with evidence of ``-log`` (attention mass on the evidence objects'
    tokens) at the position predicting the answer.

    ``att``: (B, L, L) attention probabilities of one head; ``image_positions``: (B, L) bool;
    ``questions``: from :func:`make_batch`. ``target_only``: spatial questions only, and only their
    target object (``evidence[0]``; ``evidence[1]`` is the anchor), the second hop of a relation.
    Returns ``(loss, mean mass)``."""
    terms, masses = [], []
    for b, q, qa in questions:
        if not qa.evidence or (target_only and qa.family != "spatial"):
            continue
        ev = evidence_mask(scenes[b], qa, merged, qa.evidence[:1] if target_only else None)  # (n_tokens,)
        if not ev.any():
            continue
        row = att[b, q][image_positions[b]].float()  # (L,) -> (n_tokens,)
        mass = (row * ev).sum()
        terms.append(-torch.log(mass + 1e-6))
        masses.append(mass.item())
    if not terms:
        return att.sum() * 0.0, float("nan")
    return torch.stack(terms).mean(), sum(masses) / len(masses)


def _positions(family, model, seqs, poss, segs, inputs, L):
    """Position ids for isolated packing: LLaVA ``(B, L)``; Qwen ``(3, B, L)`` M-RoPE ids, the
    prefix's from the stock ``get_rope_index`` and text positions continuing from its first text
    position after the image."""
    B = len(seqs)
    if family == "llava":
        out = torch.zeros((B, L), dtype=torch.long)
        for b, p in enumerate(poss):
            out[b, : len(p)] = torch.tensor(p)
        return out
    out = torch.zeros((3, B, L), dtype=torch.long)
    for b, (ids, p, sg) in enumerate(zip(seqs, poss, segs)):
        n_pre = sg.index(1) if 1 in sg else len(sg)
        one = torch.tensor(ids[: n_pre + 1])[None]  # the prefix and the first segment token
        rope, _ = model.model.get_rope_index(
            one,
            mm_token_type_ids=(one == model.config.image_token_id).to(torch.int32),
            image_grid_thw=inputs["image_grid_thw"][b : b + 1],
        )
        out[:, b, :n_pre] = rope[:, 0, :n_pre]
        t0 = int(rope[0, 0, n_pre])  # the first text position after the image (all three rows equal)
        out[:, b, n_pre : len(p)] = t0 + torch.tensor(p[n_pre:]) - n_pre  # segments start at n_pre
    return out


class Heldout:
    """A fixed, family-balanced held-out set, encoded once through the stock processor."""

    def __init__(self, family, processor, n, batch=16, seed=0):
        self.family = family
        items = Q.heldout_set(n, seed=seed, size=lambda sd: scene_size(family, sd))
        self.items = items
        self.batches = []
        tok = processor.tokenizer
        self.answer_ids = M.answer_token_ids(tok, family)
        for i in range(0, len(items), batch):
            chunk = items[i : i + batch]
            imgs = []
            for s, _ in chunk:
                w, h = scene_size(family, s)
                imgs.append(make_scene(s, width=w, height=h).image)
            enc = M.encode(family, processor, imgs, [qa.question for _, qa in chunk])
            self.batches.append((enc, chunk))

    @torch.no_grad()
    def evaluate(self, model, autocast=True) -> dict:
        was = model.training
        model.eval()
        right = {f: 0 for f in Q.FAMILIES}
        total = {f: 0 for f in Q.FAMILIES}
        for enc, chunk in self.batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = model(**enc, logits_to_keep=1).logits[:, -1]
            pred = logits.argmax(-1).tolist()
            for p, (_, qa) in zip(pred, chunk):
                total[qa.family] += 1
                right[qa.family] += int(p == self.answer_ids[qa.answer])
        model.train(was)
        acc = {f: right[f] / total[f] for f in Q.FAMILIES if total[f]}
        acc["overall"] = sum(right.values()) / max(1, sum(total.values()))
        return acc


# ----------------------------------------------------------------------------------------- vision
def vision_outputs(family, model, inputs):
    """Run the vision tower alone: (patch tokens (N, d), [image vectors], per-image token counts)."""
    if family == "llava":
        out = model.model.vision_tower(pixel_values=inputs["pixel_values"], output_hidden_states=True)
        return _llava_parts(out)
    out = model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    return _qwen_parts(out.pooler_output, inputs["image_grid_thw"])


def _llava_parts(out):
    feat = out.hidden_states[-2]
    return feat[:, 1:].reshape(-1, feat.shape[-1]), [feat[:, 0], out.pooler_output]


def _qwen_parts(merged, grid):
    counts = (grid.prod(-1) // 4).tolist()
    means = torch.stack([x.float().mean(0) for x in torch.split(merged, counts)])
    return merged, [means]


def word_targets(labels: list[dict], answer_ids: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per visual token (concatenated over images): the token ids of its object's colour and shape
    words, or -100 on background tokens (ignored)."""
    col = torch.tensor([-100] + [answer_ids[c] for c in COLOURS])
    shp = torch.tensor([-100] + [answer_ids[s] for s in SHAPES])
    c = torch.cat([x["colour"] for x in labels])
    sh = torch.cat([x["shape"] for x in labels])
    return col[c], shp[sh]


def align_loss(model, tokens: torch.Tensor, targets) -> tuple[torch.Tensor, float]:
    """Cross-entropy of the LM head on the visual tokens in the LLM's input space ``(N, d)`` against
    their object's colour and shape words (both targets, so each gets about half the probability):
    pulls object tokens towards the embeddings of the words that name them (the head is tied to the
    input embeddings), which makes the question-to-object attention easy to find."""
    colour_t, shape_t = targets
    fg = colour_t >= 0
    if not fg.any():
        return tokens.sum() * 0.0, float("nan")
    logits = model.lm_head(tokens[fg]).float()
    loss = 0.5 * (F.cross_entropy(logits, colour_t[fg]) + F.cross_entropy(logits, shape_t[fg]))
    top2 = logits.topk(2, dim=-1).indices
    hit = ((top2 == colour_t[fg, None]).any(-1) & (top2 == shape_t[fg, None]).any(-1)).float().mean().item()
    return loss, hit


class ProjectorCapture:
    """Forward hook keeping the visual tokens in the LLM's input space (LLaVA: the projector's output,
    Qwen: the merger's, which is the vision tower's ``pooler_output``) as ``(N, d)``."""

    def __init__(self, family, model):
        self.out = None
        if family == "llava":
            self.handle = model.model.multi_modal_projector.register_forward_hook(self._proj)
        else:
            self.handle = model.model.visual.register_forward_hook(self._qwen)

    def _proj(self, module, args, output):
        self.out = output.reshape(-1, output.shape[-1])  # (B, 576, d) -> (B * 576, d)

    def _qwen(self, module, args, output):
        self.out = output.pooler_output

    def remove(self):
        self.handle.remove()


class VisionCapture:
    """Forward hook keeping the vision tower's output during a full VLM forward."""

    def __init__(self, family, model):
        self.family = family
        self.out = None
        mod = model.model.vision_tower if family == "llava" else model.model.visual
        self.handle = mod.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        if self.family == "llava":
            self.out = _llava_parts(output)
        else:
            self.out = (output.pooler_output, None)  # grid is added by the caller

    def remove(self):
        self.handle.remove()


# ----------------------------------------------------------------------------------------- state
def save_state(out: Path, model, heads, opt, state: dict, processor) -> None:
    from safetensors.torch import save_file

    res = out / "resume"
    res.mkdir(parents=True, exist_ok=True)
    tmp = res / "tmp"
    tmp.mkdir(exist_ok=True)
    seen, tensors = set(), {}
    for k, v in model.state_dict().items():  # tied weights (lm_head = embed_tokens) stored once
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            tensors[k] = v.detach().contiguous()
    save_file(tensors, str(tmp / "model_fp32.safetensors"))
    save_file(
        {k: v.detach().contiguous() for k, v in heads.state_dict().items()}, str(tmp / "heads.safetensors")
    )
    torch.save(opt.state_dict(), tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    for f in tmp.iterdir():
        os.replace(f, res / f.name)
    tmp.rmdir()
    M.save(
        model,
        processor,
        out,
        dtype=torch.bfloat16,
        extra={"step": state["step"], "minutes": state["minutes"], "last_eval": state.get("last_eval")},
    )


def load_state(out: Path, model, heads, new_biases: bool = False):
    """(state, optimizer state) from ``out/resume``, or (None, None). ``new_biases``: the model has
    bias tensors the saved state lacks (a decoder about to be replaced), which is then not an error."""
    from safetensors.torch import load_file

    res = out / "resume"
    if not (res / "state.json").exists():
        return None, None
    missing, unexpected = model.load_state_dict(load_file(str(res / "model_fp32.safetensors")), strict=False)
    missing = [k for k in missing if not (new_biases and k.endswith(".bias"))]
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(
            f"resume state does not match the model: missing {missing}, unexpected {unexpected}"
        )
    model.tie_weights()
    missing, _ = heads.load_state_dict(load_file(str(res / "heads.safetensors")), strict=False)
    if missing:
        print(f"aux heads without saved state (new): {missing}", flush=True)
    return json.loads((res / "state.json").read_text()), torch.load(res / "optim.pt", weights_only=False)


def make_optimizer(model, heads, lr, vision_mult, family, wd=0.01):
    vision = model.model.vision_tower if family == "llava" else model.model.visual
    vids = {id(p) for p in vision.parameters()}
    groups = [  # the position head gets its own group, added by load_optimizer
        {"params": [p for p in vision.parameters()], "lr_mult": vision_mult, "name": "vision"},
        {
            "params": [p for n, p in heads.named_parameters() if not n.startswith("position.")],
            "lr_mult": 1.0,
            "name": "heads",
        },
        {"params": [p for p in model.parameters() if id(p) not in vids], "lr_mult": 1.0, "name": "llm"},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), weight_decay=wd)


def load_optimizer(opt, heads, opt_state) -> None:
    """Load ``opt_state`` into ``opt`` (from :func:`make_optimizer`) and add the position head's group:
    before loading where the saved state has it, after loading where it predates the head."""
    group = {"params": list(heads.position.parameters()), "lr_mult": 1.0, "name": "position"}
    if opt_state is not None and len(opt_state["param_groups"]) == len(opt.param_groups) + 1:
        opt.add_param_group(group)
        group = None
    if opt_state is not None:
        try:
            opt.load_state_dict(opt_state)
        except ValueError:
            print("optimizer state does not match; starting a fresh optimizer", flush=True)
    if group is not None:
        opt.add_param_group(group)


def cooldown(elapsed: float, minutes: float, decay_minutes: float, floor: float = 0.1) -> float:
    """Learning-rate factor: 1 until the last ``decay_minutes`` of ``minutes``, then linear down to
    ``floor`` at the end (and ``floor`` after it); 1 throughout when ``decay_minutes <= 0``."""
    if decay_minutes <= 0:
        return 1.0
    return min(1.0, max(floor, (minutes - elapsed) / decay_minutes))


# ----------------------------------------------------------------------------------------- main
def _weight_arg(p: argparse.ArgumentParser, flag: str, help: str) -> None:
    """A loss weight, off (0) by default."""
    p.add_argument(flag, type=float, default=0.0, help=help)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", choices=("llava", "qwen"), default="llava")
    p.add_argument("--out", default=None, help="output directory (default testbed/<family>)")
    p.add_argument("--size", default="default", choices=tuple(M.SIZES))
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget of this invocation")
    p.add_argument("--resume", action="store_true", help="continue from OUT/resume if it exists")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8, help="images per step")
    p.add_argument("--questions", type=int, default=20, help="questions packed per image")
    p.add_argument("--vision-steps", type=int, default=500, help="steps of vision-tower pretraining")
    p.add_argument("--vision-lr", type=float, default=3e-4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--vision-lr-mult", type=float, default=0.2, help="tower lr multiplier once unfrozen")
    p.add_argument("--freeze-steps", type=int, default=1000, help="VLM steps with the tower frozen")
    p.add_argument("--aux-weight", type=float, default=0.3, help="aux loss weight during VLM training")
    _weight_arg(
        p,
        "--align-weight",
        "weight of the word-alignment loss: each object token, mapped into the LLM's input space, "
        "predicts its colour and shape words through the (tied) LM head",
    )
    p.add_argument(
        "--families",
        default=",".join(Q.FAMILIES),
        help="comma-separated question families to train on; repeat one to weight it, e.g. "
        "attribute,existence,counting,counting,spatial,spatial,small (default all once; held-out "
        "evaluation always uses all, balanced)",
    )
    _weight_arg(
        p,
        "--attn-weight",
        "weight of the evidence-attention loss: at the position predicting each answer, one head of "
        "--attn-layer puts its attention on the objects the answer depends on",
    )
    p.add_argument("--attn-layer", type=int, default=-1, help="decoder layer of the evidence-attention loss")
    _weight_arg(
        p,
        "--target-attn-weight",
        "weight of the spatial second-hop loss: at the position predicting each spatial answer, one "
        "head of --target-attn-layer puts its attention on the target object alone (the anchor is the "
        "first hop, which --attn-layer's evidence includes)",
    )
    p.add_argument("--target-attn-layer", type=int, default=2, help="decoder layer of the second-hop loss")
    _weight_arg(
        p,
        "--position-weight",
        "weight of the per-patch position objective on the vision features (inside the aux "
        "losses): a linear head reads each token's grid row and column from its feature",
    )
    p.add_argument(
        "--position-object-share",
        type=float,
        default=0.0,
        help="the object patches' share of the position loss, in [0, 1) (0: every patch alike; "
        "0.5: the few object patches weigh as much as the whole background)",
    )
    p.add_argument(
        "--packing",
        choices=("isolated", "multiturn"),
        default="isolated",
        help="isolated: each packed question sees the image and itself only (block mask), as at evaluation; "
        "multiturn: a causal chat in which answers leak into later questions",
    )
    p.add_argument(
        "--rope-theta",
        type=float,
        default=10000.0,
        help="RoPE base of the decoder (pass it again on --resume; it is saved in the checkpoint's config)",
    )
    p.add_argument(
        "--rope-linear",
        type=float,
        default=1.0,
        help="llava only: linear RoPE scaling factor of the decoder (positions / factor; 24 makes the "
        "576-token image span 24 positions, as Qwen's M-RoPE spans its grid); pass it again on --resume",
    )
    p.add_argument(
        "--init-decoder",
        default=None,
        metavar="DIR",
        help="llava only: start the language model from DIR's decoder (a trained testbed-qwen or -llava of "
        "the same size; token embeddings matched by string), with a fresh optimizer: LLaVA's recipe of "
        "a pretrained LLM. Applied after --resume loads the tower and projector.",
    )
    p.add_argument(
        "--freeze-llm-steps",
        type=int,
        default=0,
        help="keep the language model frozen for this many VLM steps of this invocation (the projector "
        "and, once unfrozen, the tower still learn): LLaVA's stage 1 after --init-decoder",
    )
    p.add_argument("--curriculum-steps", type=int, default=3000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument(
        "--decay-minutes",
        type=float,
        default=0.0,
        help="cool the VLM-stage learning rates down linearly to 10%% over the last this many minutes of --minutes",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--eval-minutes", type=float, default=10.0)
    p.add_argument("--eval-n", type=int, default=300)
    p.add_argument("--ckpt-minutes", type=float, default=5.0)
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many total steps (0: no limit)")
    p.add_argument(
        "--summary", action="store_true", help="print the held-out accuracy history of OUT and exit"
    )


def log(out: Path, rec: dict) -> None:
    with open(out / "train_log.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec), flush=True)


def summary(out: Path) -> str:
    """The per-family held-out accuracy history in ``out/train_log.jsonl`` as a table."""
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if x.strip()]
    evals = [r for r in rows if r.get("event") == "eval"]
    head = f"{'step':>6} {'minutes':>8} " + "".join(f"{f[:9]:>10}" for f in Q.FAMILIES) + f"{'overall':>10}"
    lines = [head, "-" * len(head)]
    for r in evals:
        lines.append(
            f"{r['step']:>6} {r['minutes']:>8.1f} "
            + "".join(f"{r.get(f, 0) * 100:>9.1f}%" for f in Q.FAMILIES)
            + f"{r['overall'] * 100:>9.1f}%"
        )
    return "\n".join(lines)


def main(args) -> int:
    out = Path(args.out or f"testbed/{args.family}")
    if args.summary:
        print(summary(out))
        return 0
    torch.set_num_threads(args.threads)
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    if not families or set(families) - set(Q.FAMILIES):
        raise ValueError(f"--families must name some of {', '.join(Q.FAMILIES)}, got {args.families!r}")
    out.mkdir(parents=True, exist_ok=True)
    fam = args.family
    if not args.rope_theta > 0:
        raise ValueError(f"--rope-theta must be positive, got {args.rope_theta}")
    if not args.rope_linear >= 1:
        raise ValueError(f"--rope-linear must be >= 1, got {args.rope_linear}")
    if args.rope_linear != 1 and fam != "llava":
        raise ValueError("--rope-linear is supported for --family llava only (Qwen uses M-RoPE)")
    overrides = None  # decoder settings beyond the size preset, kept in the resume state
    saved = out / "resume" / "state.json"
    if args.resume and saved.exists():
        overrides = json.loads(saved.read_text()).get("text_overrides")
    source = None
    if args.init_decoder:
        if fam != "llava":
            raise ValueError("--init-decoder is supported for --family llava only")
        source = M.load_testbed(args.init_decoder)
        overrides = M.llava_overrides_for(source[0].config)
    if args.freeze_llm_steps < 0:
        raise ValueError(f"--freeze-llm-steps must be >= 0, got {args.freeze_llm_steps}")
    if not 0.0 <= args.position_object_share < 1.0:
        raise ValueError(f"--position-object-share must be in [0, 1), got {args.position_object_share}")
    model, processor = M.build(
        fam,
        args.size,
        seed=args.seed,
        rope_theta=args.rope_theta,
        text_overrides=overrides,
        rope_linear=args.rope_linear,
    )
    model.train()
    d = (
        model.config.vision_config.hidden_size
        if fam == "llava"
        else model.config.vision_config.out_hidden_size
    )
    torch.manual_seed(args.seed + 1)
    heads = AuxHeads(d, position_weight=args.position_weight, object_share=args.position_object_share)
    state = None
    opt_state = None
    if args.resume:
        state, opt_state = load_state(out, model, heads, new_biases=source is not None)
        if state is not None:  # the tokenizer the saved weights were trained with, not a rebuilt one
            processor, _ = M.load_processor(out)
    if source is not None:
        info = M.transplant_decoder(model, processor.tokenizer, source[0], source[1].tokenizer)
        print(f"decoder from {args.init_decoder}: {info}", flush=True)
        opt_state = None  # the moments belong to the replaced weights
        if state is not None:
            state["text_overrides"] = overrides
            state["init_decoder"] = {"from": str(args.init_decoder), "at_step": state["step"]}
        source = None
    resumed = state is not None
    state = state or {
        "step": 0,
        "minutes": 0.0,
        "config": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "text_overrides": overrides,
    }
    rope = {"theta": args.rope_theta, "linear": args.rope_linear}
    if resumed and state.get("rope", {"theta": 10000.0, "linear": 1.0}) != rope:  # allowed, never silent
        print(f"note: RoPE settings {state.get('rope')} of the saved run changed to {rope}", flush=True)
    state["rope"] = rope
    start_step = state["step"]
    llm = model.model.language_model
    opt = make_optimizer(model, heads, args.lr, args.vision_lr_mult, fam)
    load_optimizer(opt, heads, opt_state)
    tok = processor.tokenizer
    eos_id = tok.convert_tokens_to_ids(M.eos_token(fam))
    image_id = model.config.image_token_id
    print(f"building held-out set ({args.eval_n} questions)...", flush=True)
    held = Heldout(fam, processor, args.eval_n)
    capture = VisionCapture(fam, model)
    proj_capture = ProjectorCapture(fam, model)
    answer_ids = M.answer_token_ids(tok, fam)
    vision = model.model.vision_tower if fam == "llava" else model.model.visual
    supervised = []  # attention losses: (probe, weight, target_only, logged as)
    for flag, weight, layer, target_only, key in (
        ("--attn-weight", args.attn_weight, args.attn_layer, False, "evidence_mass"),
        ("--target-attn-weight", args.target_attn_weight, args.target_attn_layer, True, "target_mass"),
    ):
        if weight > 0:
            if args.packing != "isolated":
                raise ValueError(f"{flag} needs --packing isolated")
            supervised.append((AttentionProbe(model, layer), weight, target_only, key))
    t0 = time.time()
    base_minutes = state["minutes"]
    last_ckpt = last_eval = time.time()
    bf16 = not args.no_bf16
    window = []
    cfg = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    log(
        out,
        {
            "event": "start" if state["step"] == 0 else "resume",
            "step": state["step"],
            "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
            **cfg,
        },
    )
    stop = {"flag": False}

    def _term(signum, frame):  # finish the step, save, exit: `kill PID` never loses progress
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _term)
    while not stop["flag"]:
        step = state["step"]
        elapsed = (time.time() - t0) / 60
        if elapsed >= args.minutes or (args.max_steps and step >= args.max_steps):
            break
        in_vision = step < args.vision_steps
        vstep = step - args.vision_steps
        frozen = not in_vision and vstep < args.freeze_steps
        for p in vision.parameters():
            p.requires_grad_(not frozen)
        llm_frozen = not in_vision and step - start_step < args.freeze_llm_steps
        for p in llm.parameters():  # LLaVA stage 1: the projector (and tower) learn, the LLM waits
            p.requires_grad_(not llm_frozen)

        # learning rates: linear warmup at the start of each stage (and of the tower's unfreezing), then
        # constant; with --decay-minutes a linear cooldown to 10% over the end of this invocation's budget
        cool = 1.0 if in_vision else cooldown(elapsed, args.minutes, args.decay_minutes)

        def warm(i, cool=cool):
            return cool * min(1.0, max(0, i + 1) / args.warmup)

        for g in opt.param_groups:
            if in_vision:
                g["lr"] = args.vision_lr * warm(step) if g["name"] in ("vision", "heads", "position") else 0.0
            elif g["name"] == "vision":
                g["lr"] = 0.0 if frozen else args.lr * args.vision_lr_mult * warm(vstep - args.freeze_steps)
            else:
                g["lr"] = args.lr * warm(vstep)
        level = min(
            1.0, (step / max(1, args.vision_steps)) if in_vision else (vstep / max(1, args.curriculum_steps))
        )
        seeds = [(args.seed * 100_003 + step * args.batch + i) % Q.HELDOUT_BASE for i in range(args.batch)]
        tb = time.time()
        scenes, inputs, (rows, cols, targets), qlist = make_batch(
            fam, processor, seeds, level, args.questions, eos_id, image_id, families, args.packing, model
        )
        labels = [scene_labels(sc, merged=(fam == "qwen")) for sc in scenes]
        t_data = time.time() - tb
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if in_vision:
                toks, vecs = vision_outputs(fam, model, inputs)
                aux, accs = heads.losses(toks, vecs, labels)
                loss = sum(aux.values())
                lm = torch.tensor(0.0)
                tok_acc = float("nan")
            else:
                logits = model(**inputs).logits
                lg = logits[rows, cols].float()
                lm = F.cross_entropy(lg, targets)
                is_answer = targets != eos_id  # every other target is the end-of-turn token
                tok_acc = (lg.argmax(-1) == targets)[is_answer].float().mean().item()
                loss = lm
                accs = {}
                for probe, weight, target_only, key in supervised:
                    at_loss, at_mass = evidence_attention_loss(
                        probe.probs(inputs["attention_mask"]),
                        inputs["input_ids"] == image_id,
                        qlist,
                        scenes,
                        merged=fam == "qwen",
                        target_only=target_only,
                    )
                    loss = loss + weight * at_loss
                    if at_mass == at_mass:  # nan when no packed question has such evidence
                        accs[key] = at_mass
                if args.align_weight > 0:
                    al, hit = align_loss(model, proj_capture.out, word_targets(labels, answer_ids))
                    loss = loss + args.align_weight * al
                    accs["align_top2"] = hit
                if not frozen:
                    toks, vecs = capture.out
                    if fam == "qwen":
                        toks, vecs = _qwen_parts(toks, inputs["image_grid_thw"])
                    aux, vaccs = heads.losses(toks, vecs, labels)
                    accs.update(vaccs)
                    loss = loss + args.aux_weight * sum(aux.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        state["step"] = step + 1
        dt = time.time() - tb
        window.append((dt, t_data))
        if state["step"] % 10 == 0:
            w = window[-10:]
            rec = {
                "step": state["step"],
                "stage": "vision" if in_vision else ("vlm-frozen" if frozen else "vlm"),
                "minutes": round(base_minutes + (time.time() - t0) / 60, 2),
                "level": round(level, 3),
                "lr": float(f"{next(g['lr'] for g in opt.param_groups if g['name'] == 'llm'):.3g}"),
                "loss": round(loss.item(), 4),
                "lm": round(lm.item(), 4),
                "answer_acc": round(tok_acc, 4) if tok_acc == tok_acc else None,
                "img_per_s": round(args.batch * len(w) / sum(x[0] for x in w), 2),
                "data_frac": round(sum(x[1] for x in w) / sum(x[0] for x in w), 3),
                **{k: round(v, 3) for k, v in accs.items()},
            }
            log(out, rec)
        now = time.time()
        if now - last_eval >= args.eval_minutes * 60 and not in_vision:
            acc = held.evaluate(model, autocast=bf16)
            state["last_eval"] = acc
            log(
                out,
                {
                    "event": "eval",
                    "step": state["step"],
                    "minutes": round(base_minutes + (now - t0) / 60, 2),
                    **{k: round(v, 4) for k, v in acc.items()},
                },
            )
            last_eval = time.time()
        if now - last_ckpt >= args.ckpt_minutes * 60:
            state["minutes"] = base_minutes + (time.time() - t0) / 60
            save_state(out, model, heads, opt, state, processor)
            last_ckpt = time.time()
    if state["step"] > args.vision_steps and not stop["flag"]:
        acc = held.evaluate(model, autocast=bf16)
        state["last_eval"] = acc
        log(
            out,
            {
                "event": "eval",
                "step": state["step"],
                "minutes": round(base_minutes + (time.time() - t0) / 60, 2),
                **{k: round(v, 4) for k, v in acc.items()},
            },
        )
    state["minutes"] = base_minutes + (time.time() - t0) / 60
    save_state(out, model, heads, opt, state, processor)
    capture.remove()
    proj_capture.remove()
    for probe, *_ in supervised:
        probe.remove()
    log(out, {"event": "stop", "step": state["step"], "minutes": round(state["minutes"], 2)})
    return 0


def cli(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlmprune.testbed.train", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return main(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(cli())
