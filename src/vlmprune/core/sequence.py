"""Family-independent tensor surgery on LLM input sequences (pure functions, no hooks)."""

from __future__ import annotations

import torch


def compact_index(keep: torch.Tensor, new_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather indices that keep the ``True`` positions of each row, left padded.

    ``keep`` (B, L) bool -> ``(index, valid)`` both (B, L'), ``L' = max_b keep[b].sum()``; row b's
    kept positions are right-aligned in order; ``index`` is 0 and ``valid`` False on the padding.
    ``new_len``: ``L'`` when the caller knows it; otherwise it is read from the device (the one
    host sync: the rest is a stable sort and a comparison).
    """
    bsz, length = keep.shape
    counts = keep.sum(1)  # (B,)
    if new_len is None:
        new_len = int(counts.max()) if bsz else 0
    # dropped positions first, then the kept ones, each in order
    order = torch.sort(keep.to(torch.uint8), dim=1, stable=True).indices  # (B, L)
    index = order[:, length - new_len :]  # (B, L) -> (B, L')
    valid = torch.arange(new_len, device=keep.device) >= (new_len - counts)[:, None]  # (B, L')
    return index.masked_fill(~valid, 0), valid


def new_positions(index: torch.Tensor, valid: torch.Tensor, length: int) -> torch.Tensor:
    """(B, L) map from each old position to its slot in the compacted sequence, -1 where dropped,
    from :func:`compact_index`'s (B, L') ``index`` and ``valid`` (no host sync)."""
    bsz, new_len = index.shape
    out = torch.full((bsz, length + 1), -1, dtype=torch.long, device=index.device)  # last column: a sink
    slots = torch.arange(new_len, device=index.device).expand(bsz, new_len)
    out.scatter_(1, index.masked_fill(~valid, length), slots.masked_fill(~valid, -1))
    return out[:, :length]


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


def last_real(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last mask-1 position of each row of a (B, L) mask: the last column under
    left padding, the last real token under right padding (0 for empty rows)."""
    cols = torch.arange(mask.shape[1], device=mask.device)
    return (mask.bool() * (cols + 1)).argmax(dim=1)
