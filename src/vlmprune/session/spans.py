"""Where each image of a call sits in the batch: placeholder runs matched to the adapter's layouts."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageSpan:
    """One image's surviving content tokens in the current sequence of row ``row``.

    ``positions`` (n,) their positions; ``origin`` (n,) their indices among the image's content
    tokens; ``pinned`` (n,) bool or None, the pre-LLM stage's :attr:`~vlmprune.core.types.Kept.pinned`.
    """

    row: int
    positions: torch.Tensor
    origin: torch.Tensor
    num_tokens: int
    layout: object
    pinned: torch.Tensor | None = None


def assign_spans(ids: torch.Tensor, layouts, image_token_id: int):
    """Assign images to rows: ``(row, placeholder positions (n,))`` per image in batch order, and
    for each the index of its image in the vision tower's run.

    ``generate(num_beams=r)`` / ``num_return_sequences=r`` repeat each prompt row r times
    (``repeat_interleave``) after the vision tower ran once per original image: then each group of
    r identical rows shares its images.
    """
    bsz = ids.shape[0]
    for r in range(1, bsz + 1):
        if bsz % r or (r > 1 and not torch.equal(ids, ids[::r].repeat_interleave(r, dim=0))):
            continue
        base = _assign(ids[::r], layouts, image_token_id)
        if base is None:
            continue
        spans, vision_index = [], []
        per_row: dict[int, list[int]] = {}
        for j, (row, _) in enumerate(base):
            per_row.setdefault(row, []).append(j)
        for b in range(bsz):
            for j in per_row.get(b // r, []):
                spans.append((b, base[j][1]))
                vision_index.append(j)
        return spans, vision_index
    raise ValueError("the image placeholders in `input_ids` do not match the images' token counts")


def _assign(ids: torch.Tensor, layouts, image_token_id: int):
    is_image = ids == image_token_id
    spans, it = [], iter(layouts)
    for b in range(ids.shape[0]):
        pos = torch.nonzero(is_image[b]).flatten()
        off = 0
        while off < pos.numel():
            layout = next(it, None)
            if layout is None or off + layout.n_placeholders > pos.numel():
                return None
            spans.append((b, pos[off : off + layout.n_placeholders]))
            off += layout.n_placeholders
    if len(spans) != len(layouts):  # every image the adapter laid out must sit in the prompt
        return None
    return spans
