"""Budgets: how many visual tokens an image keeps, and how a budget is shared across regions."""

from __future__ import annotations


def resolve_budget(budget: int | None, ratio: float | None, n: int) -> int:
    """Visual tokens kept for an image of ``n`` tokens: ``min(budget, n)`` or ``max(1, round(ratio*n))``."""
    if budget is not None:
        return min(int(budget), n)
    return min(n, max(1, round(float(ratio) * n)))


def split_across_regions(k: int, sizes: list[int]) -> list[int]:
    """Share ``k`` tokens across regions in proportion to their sizes (largest remainder, ties to
    the lowest index); each share is capped by its region's size and the total is ``min(k, sum)``."""
    total = sum(sizes)
    k = min(k, total)
    if total == 0:
        return [0 for _ in sizes]
    raw = [k * s / total for s in sizes]
    out = [min(int(r), s) for r, s in zip(raw, sizes)]
    rest = k - sum(out)
    order = sorted(range(len(sizes)), key=lambda i: (-(raw[i] - int(raw[i])), i))
    while rest > 0:
        progressed = False
        for i in order:
            if rest == 0:
                break
            if out[i] < sizes[i]:
                out[i] += 1
                rest -= 1
                progressed = True
        if not progressed:  # pragma: no cover - impossible since k <= total
            break
    return out
