"""Synthetic prompts for ``vlmprune bench``: one image per row, a question of a set token length."""

from __future__ import annotations

import torch

from vlmprune.apps.images import random_image
from vlmprune.apps.zoo import CORPUS, tiny_inputs


def _proc_media_ids(bm) -> tuple[int, int]:
    """The processor's (image, video) placeholder ids (-1 where the tokenizer has none)."""
    tok = bm.processor.tokenizer
    video = getattr(tok, "unk_token_id", None)
    ids = [tok.convert_tokens_to_ids(t) for t in (bm.adapter.image_token, "<|video_pad|>")]
    return int(ids[0]), (int(ids[1]) if ids[1] is not None and ids[1] != video else -1)


def _model_media_ids(config) -> list[int]:
    return [
        int(getattr(config, a))
        for a in ("image_token_id", "video_token_id")
        if getattr(config, a, None) is not None
    ]


def text_token_count(model, inputs) -> int:
    """Non-image, non-video tokens of the first row (the ``text_tokens`` of the FLOPs accounting)."""
    ids = inputs["input_ids"][0]
    return int((~torch.isin(ids, torch.tensor(_model_media_ids(model.config)))).sum())


def _video_prompts(bm, frames: int, batch: int):
    """``(prompts for question q, the video tensors)``: one random video per row of ``frames``
    frames at ``bm.image_size``, in the family's stock video layout (its ``tiny_video``)."""
    cls, ip = bm.adapter, bm.processor.image_processor
    unit = ip.patch_size * ip.merge_size
    w, h = (max(unit, round(v / unit) * unit) for v in bm.image_size)
    patches = (h // ip.patch_size, w // ip.patch_size)
    text, tensors = cls.tiny_video(bm.processor, videos=batch, frames=frames, patches=patches)
    return (lambda q: [text + cls.tiny_prompt(q, 0)] * batch), tensors


def make_bench_inputs(bm, batch: int = 1, text_tokens: int = 64, device="cpu", video_frames: int = 0):
    """Inputs of ``batch`` identical-length rows: one image each (``bm.image_size``, different
    content per row) or, with ``video_frames``, one video of that many frames at that size, and a
    question sized so that the prompt holds about ``text_tokens`` other tokens (template
    included; the exact count is ``text_token_count(inputs)``).

    Returns a ``BatchFeature`` on ``device``: ``input_ids`` (B, L), ``attention_mask`` (B, L),
    ``pixel_values`` (or ``pixel_values_videos``) and the family's metadata.
    """
    words = CORPUS.split()
    images = [[random_image(100 + i, bm.image_size)] for i in range(batch)]
    proc_image, proc_video = _proc_media_ids(bm)
    media = torch.tensor([proc_image, proc_video])
    if video_frames:
        prompts, tensors = _video_prompts(bm, video_frames, batch)

    def build(n_words: int):
        q = " ".join(words[i % len(words)] for i in range(n_words)) or "?"
        if video_frames:
            inputs = bm.processor(text=prompts(q), return_tensors="pt", padding=True)
            inputs.update(tensors)
        else:
            inputs = tiny_inputs(bm.family, bm.processor, [q] * batch, images)
        return inputs, int((~torch.isin(inputs["input_ids"][0], media)).sum())

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
        img = torch.nonzero(torch.isin(inputs["input_ids"][0], media)).flatten()
        start = int(img[-1]) + 2
        keep[start : start + count - text_tokens] = False
        for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
            if key in inputs:
                inputs[key] = inputs[key][:, keep]
    ids = inputs["input_ids"].clone()
    for src, dst in bm.token_map.items():
        ids[inputs["input_ids"] == src] = dst
    inputs["input_ids"] = ids
    if not torch.isin(ids, torch.tensor(_model_media_ids(bm.model.config))).any():
        raise RuntimeError("no image or video placeholder in the bench prompt")
    return inputs.to(device)
