"""Shared hypothesis settings, input makers and forms for the pure-selection property tests."""

from __future__ import annotations

import contextlib

import torch
from hypothesis import HealthCheck, settings

from vlmprune.core import greedy

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make(shape, mode: str, seed: int) -> torch.Tensor:
    """Seeded inputs: ``"random"`` normal, ``"ties"`` few distinct values (many equal rows and
    equal distances), anything else constant."""
    g = torch.Generator().manual_seed(seed)
    if mode == "random":
        return torch.randn(shape, generator=g)
    if mode == "ties":
        return torch.randint(-1, 2, shape, generator=g).float()
    return torch.full(shape, 0.5)


def budget_for(kind: str, n: int, extra: int) -> int:
    """Budgets at the edges: 1, N-1, N, above N, or any in [1, N]."""
    return {"one": 1, "n-1": max(1, n - 1), "n": n, "over": n + 1 + extra, "any": 1 + extra % n}[kind]


def sized(method, images):
    """``images`` (one ImageTokens or a list) with the budget the session resolves for ``method``
    (``method.keep_count(N)``): methods read their budget from the tokens."""
    import dataclasses

    if isinstance(images, list):
        return [sized(method, img) for img in images]
    return dataclasses.replace(images, budget=method.keep_count(images.num_tokens))


@contextlib.contextmanager
def accelerator_form():
    """The methods as they run on an accelerator: no device type reads loop lengths on the host
    or takes a CPU form."""
    saved = set(greedy.HOST_READS)
    greedy.HOST_READS.clear()
    try:
        yield
    finally:
        greedy.HOST_READS.update(saved)
