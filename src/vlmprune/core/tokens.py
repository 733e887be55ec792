"""The one builder of :class:`~vlmprune.core.types.ImageTokens`, for both engines.

The HF session and the vLLM plugin collect an image's features, layout and captured side signals
in their own way, then call :func:`image_tokens`, so a method sees the same tokens from either.

Missing-saliency rule (both engines): with ``saliency="feature_norm"`` a method that needs a
saliency gets each token's feature norm (``||x||``, float32); otherwise it gets the signal the
vision hooks captured, and a method that needs a saliency when none was captured fails with one
line: no engine substitutes a signal it was not asked for.
"""

from __future__ import annotations

import torch

from vlmprune.core.types import ImageTokens, Region


def image_tokens(
    method,
    features: torch.Tensor,
    regions: list[Region],
    grid: tuple[int, ...],
    signals: dict,
    feature_norm: bool = False,
    text: torch.Tensor | None = None,
    seed: int = 0,
    kind: str = "image",
) -> ImageTokens:
    """One image's :class:`ImageTokens` for ``method``: ``features`` (N, D) in the LLM's input
    space, ``signals`` the captured ``saliency`` (N,), ``keys`` (N, Dk), ``pre_features`` (N, Dv)
    (any may be absent); ``feature_norm``: the saliency signal asked for is the feature norm. The
    budget is the method's keep count for N tokens."""
    saliency = signals.get("saliency")
    if method.needs_saliency and feature_norm:
        saliency = features.float().norm(dim=-1)  # (N, D) -> (N,)
    if method.needs_saliency and saliency is None:
        raise RuntimeError(
            f"{method.name}: no saliency was captured for this image (did the vision tower run "
            "in this call?); pass saliency='feature_norm' to use the feature norm"
        )
    n = int(features.shape[0])
    return ImageTokens(
        features=features,
        budget=method.keep_count(n),
        regions=regions,
        grid=grid,
        pre_features=signals.get("pre_features"),
        saliency=saliency,
        keys=signals.get("keys"),
        text=text,
        seed=seed,
        kind=kind,
    )
