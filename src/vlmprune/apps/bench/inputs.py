"""Synthetic prompts for ``vlmprune bench``: one image per row, a question of a set token length."""

from __future__ import annotations

import torch

from vlmprune.apps.images import random_image
from vlmprune.apps.zoo import CORPUS, tiny_inputs


def _proc_image_id(bm) -> int:
    return int(bm.processor.tokenizer.convert_tokens_to_ids(bm.adapter.image_token))


def text_token_count(model, inputs) -> int:
    """Non-image tokens of the first row (the ``text_tokens`` of the FLOPs accounting)."""
    ids = inputs["input_ids"][0]
    return int((ids != int(model.config.image_token_id)).sum())


def make_bench_inputs(bm, batch: int = 1, text_tokens: int = 64, device="cpu"):
    """Inputs of ``batch`` identical-length rows: one image each (``bm.image_size``, different
    content per row) and a question sized so that the prompt holds about ``text_tokens`` non-image
    tokens (template included; the exact count is ``text_token_count(inputs)``).

    Returns a ``BatchFeature`` on ``device``: ``input_ids`` (B, L), ``attention_mask`` (B, L),
    ``pixel_values`` and the family's image metadata.
    """
    words = CORPUS.split()
    images = [[random_image(100 + i, bm.image_size)] for i in range(batch)]
    proc_image = _proc_image_id(bm)

    def build(n_words: int):
        q = " ".join(words[i % len(words)] for i in range(n_words)) or "?"
        inputs = tiny_inputs(bm.family, bm.processor, [q] * batch, images)
        return inputs, int((inputs["input_ids"][0] != proc_image).sum())

    lo, hi = 1, 1
    while build(hi)[1] < text_tokens and hi < 8192:
        lo, hi = hi, hi * 2
    while lo < hi:  # smallest word count reaching text_tokens
        mid = (lo + hi) // 2
        if build(mid)[1] < text_tokens:
            lo = mid + 1
        else:
            hi = mid
    inputs, count = build(lo)
    if count > text_tokens:  # BPE merges overshoot: drop the surplus question tokens after the image
        keep = torch.ones(inputs["input_ids"].shape[1], dtype=torch.bool)
        img = torch.nonzero(inputs["input_ids"][0] == proc_image).flatten()
        start = int(img[-1]) + 2
        keep[start : start + count - text_tokens] = False
        for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
            if key in inputs:
                inputs[key] = inputs[key][:, keep]
    ids = inputs["input_ids"].clone()
    for src, dst in bm.token_map.items():
        ids[inputs["input_ids"] == src] = dst
    inputs["input_ids"] = ids
    if not (ids == int(bm.model.config.image_token_id)).any():
        raise RuntimeError("no image placeholder in the bench prompt")
    return inputs.to(device)
