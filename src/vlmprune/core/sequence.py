"""Family-independent tensor surgery on LLM input sequences (pure functions, no hooks)."""

from __future__ import annotations

import torch


def compact_index(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather indices that keep the ``True`` positions of each row, left padded.

    ``keep`` (B, L) bool -> ``(index, valid)`` both (B, L'), ``L' = max_b keep[b].sum()``; row b's
    kept positions are right-aligned in order; ``index`` is 0 and ``valid`` False on the padding.
    """
    bsz, length = keep.shape
    counts = keep.sum(1)  # (B,)
    new_len = int(counts.max()) if bsz else 0
    ranks = keep.long().cumsum(1) - 1 + (new_len - counts)[:, None]  # (B, L) slot of each kept position
    rows, cols = keep.nonzero(as_tuple=True)
    index = torch.zeros(bsz, new_len, dtype=torch.long, device=keep.device)
    valid = torch.zeros(bsz, new_len, dtype=torch.bool, device=keep.device)
    slots = ranks[rows, cols]
    index[rows, slots] = cols
    valid[rows, slots] = True
    return index, valid


def gather_seq(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Gather along sequence dimension ``dim`` of ``x`` with a (B, L') ``index``; the batch
    dimension is the one before ``dim`` ((B, L, ...) with dim=1, or (k, B, L) with dim=2)."""
    if x.dim() == 2:  # (B, L)
        return x.gather(1, index)
    if dim == 1:  # (B, L, D...)
        idx = index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
        return x.gather(1, idx)
    if dim == 2 and x.dim() == 3:  # (k, B, L): M-RoPE position ids
        return x.gather(2, index[None].expand(x.shape[0], -1, -1))
    raise ValueError(f"cannot gather a tensor of shape {tuple(x.shape)} along dim {dim}")


def compact_positions(mask: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """Positions ``first[b], first[b]+1, ...`` over the real (mask 1) tokens of each row, 0 on
    padding: (B, L') from a (B, L') ``mask`` and (B,) ``first``."""
    pos = mask.long().cumsum(1) - 1 + first[:, None]
    return pos.masked_fill(mask == 0, 0)


def first_real(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the first mask-1 position of each row of a (B, L) mask (0 for empty rows)."""
    return mask.long().argmax(1)
