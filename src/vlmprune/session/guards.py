"""What the session refuses, in one line, before anything of a call runs.

Each rule guards a case that would otherwise give a silently wrong result inside a ``with``
block (README, "Cache rules"):

- a loss (``labels``): the pruned sequence is shorter than the labels;
- ``inputs_embeds`` with images: the session finds the images by their placeholder ids;
- a KV cache made outside the block (its prompt was not pruned);
- a pruned generation continued from its own cache by a new ``generate``: the pruned cache is
  shorter than the sequence, so ``generate`` re-sends part of the prompt on top of it.
"""

from __future__ import annotations

import torch

from vlmprune.core.errors import UnsupportedFeatureError

MEDIA_INPUTS = ("pixel_values", "pixel_values_videos", "mm_encoder_outputs", "image_embeds")


def check_call(args: tuple, kwargs: dict) -> None:
    """The VLM's own call (its forward pre-hook)."""
    if kwargs.get("labels") is not None:
        raise UnsupportedFeatureError(
            "vlmprune: `labels` (a training loss) is not supported while pruning: the pruned sequence "
            "is shorter than the labels; compute the loss outside the `with` block"
        )
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is None and kwargs.get("inputs_embeds") is not None:
        given = [k for k in MEDIA_INPUTS if kwargs.get(k) is not None]
        if given:
            raise UnsupportedFeatureError(
                f"vlmprune: `inputs_embeds` with `{given[0]}` inside the `with` block would run unpruned: "
                "the session finds the images by their placeholder ids; pass `input_ids` instead"
            )


def check_outside_cache(past: int, prefilled: bool) -> None:
    """A decode step (``past`` > 0) in a block that has run no prefill: the cache was made outside."""
    if past > 0 and not prefilled:
        raise UnsupportedFeatureError(
            f"vlmprune: this KV cache ({past} tokens) was made outside the `with` block, so its prompt "
            "was not pruned; continuing it inside the block is not supported: continue it outside, or "
            "run the whole generation inside the block"
        )


def check_resend(seen: torch.Tensor, ids: torch.Tensor | None, past: int) -> None:
    """A decode call feeding ``ids`` (B, s) on a pruned cache of ``past`` tokens, where ``seen``
    (B, L + decoded) is the unpruned sequence so far. ``generate`` continuing the cache re-sends
    ``seen[:, past:]`` (the length it believes the cache has) before its new tokens."""
    if ids is None or ids.shape[0] != seen.shape[0]:
        return
    behind = seen.shape[1] - past  # tokens the pruned cache holds fewer than the sequence
    if 0 < behind < ids.shape[1] and torch.equal(ids[:, :behind], seen[:, past:].to(ids.device)):
        raise UnsupportedFeatureError(
            f"vlmprune: continuing a pruned generation from its own `past_key_values` inside the `with` "
            f"block is not supported: the cache holds {past} tokens for a {seen.shape[1]}-token sequence "
            f"(the pruned prompt), so `generate` re-sends {behind} prompt tokens; run one longer "
            "`generate` (a larger `max_new_tokens`) instead"
        )
