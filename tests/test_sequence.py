"""Sequence compaction (``vlmprune.core.sequence``) against a per-row Python reference."""

from __future__ import annotations

import pytest
import torch

from vlmprune.core.sequence import compact_index, new_positions


def reference(keep: torch.Tensor):
    """Row by row: kept positions right-aligned in order, 0 / False on the padding; old -> new slot."""
    rows = [torch.nonzero(r).flatten().tolist() for r in keep]
    n = max((len(r) for r in rows), default=0)
    index = torch.zeros(len(rows), n, dtype=torch.long)
    valid = torch.zeros(len(rows), n, dtype=torch.bool)
    old_to_new = torch.full(tuple(keep.shape), -1, dtype=torch.long)
    for b, kept in enumerate(rows):
        off = n - len(kept)
        for s, p in enumerate(kept):
            index[b, off + s], valid[b, off + s], old_to_new[b, p] = p, True, off + s
    return index, valid, old_to_new


@pytest.mark.parametrize("seed", range(24))
def test_compaction_matches_the_reference_with_or_without_the_length(seed):
    g = torch.Generator().manual_seed(seed)
    b, length = int(torch.randint(1, 5, (1,), generator=g)), int(torch.randint(1, 30, (1,), generator=g))
    keep = torch.rand(b, length, generator=g) < torch.rand(b, 1, generator=g)  # some rows near empty or full
    if seed % 6 == 0:
        keep[0] = False  # an empty row
    index, valid, old_to_new = reference(keep)
    for got in (compact_index(keep), compact_index(keep, index.shape[1])):
        assert torch.equal(got[0], index) and torch.equal(got[1], valid)
    assert torch.equal(new_positions(index, valid, length), old_to_new)


def test_empty_batch():
    index, valid = compact_index(torch.zeros(0, 5, dtype=torch.bool))
    assert index.shape == (0, 0) and valid.shape == (0, 0)


def test_compaction_with_a_known_length_reads_nothing_from_the_device():
    from test_dispatch import Counter

    keep = torch.rand(3, 40, generator=torch.Generator().manual_seed(0)) < 0.5
    new_len = int(keep.sum(1).max())
    with Counter() as c:
        index, valid = compact_index(keep, new_len)
        new_positions(index, valid, 40)
    assert c.syncs == 0
