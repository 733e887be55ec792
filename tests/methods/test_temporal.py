"""temporal: frame-difference pruning of video tokens (the idea of EVS), pure function and method."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from method_inputs import SETTINGS

from vlmprune.core.registry import get_method
from vlmprune.core.types import ImageTokens, Region
from vlmprune.methods import temporal


def reference(x: torch.Tensor, frames: int, k: int) -> list[int]:
    """Plain Python in float64: first frame first (raster order), then the largest 1 - cos to the
    same position of the previous frame, ties to the lowest index."""
    rows = x.double().tolist()
    per = len(rows) // frames

    def cos(a, b):
        dot = sum(p * q for p, q in zip(a, b))
        na = max(sum(p * p for p in a) ** 0.5, 1e-6)
        nb = max(sum(q * q for q in b) ** 0.5, 1e-6)
        return dot / (na * nb)

    score = [float("inf")] * per + [1 - cos(rows[i], rows[i - per]) for i in range(per, len(rows))]
    order = sorted(range(len(rows)), key=lambda i: (-score[i], i))
    return sorted(order[:k])


@SETTINGS
@given(
    frames=st.integers(2, 5),
    per=st.integers(1, 9),
    d=st.integers(1, 8),
    k=st.integers(0, 50),
    seed=st.integers(0, 2**31 - 1),
)
def test_select_matches_reference(frames, per, d, k, seed):
    x = torch.randn(frames * per, d, generator=torch.Generator().manual_seed(seed))
    assert temporal.select(x, frames, k).tolist() == reference(x, frames, k)


def test_static_tokens_go_first_frame_stays():
    """A token that does not change from frame to frame is dropped; the first frame is kept."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=g)  # 6 positions
    moving = torch.randn(3, 8, generator=g)
    video = torch.cat([base, base.clone(), base.clone()])  # 3 frames
    video[6 + 2], video[12 + 4] = moving[0], moving[1]  # position 2 changes in frame 1, 4 in frame 2
    kept = temporal.select(video, 3, 8)
    assert kept.tolist() == [0, 1, 2, 3, 4, 5, 8, 16]


def test_method_uses_frames_of_a_video_and_strides_an_image():
    x = torch.randn(12, 4)
    frames = [Region(torch.arange(i * 4, (i + 1) * 4), (2, 2)) for i in range(3)]
    video = ImageTokens(features=x, budget=6, regions=frames, grid=(3, 2, 2), kind="video")
    method = get_method("temporal", budget=6)
    assert method.select_images([video])[0].indices.tolist() == temporal.select(x, 3, 6).tolist()
    image = ImageTokens(features=x, budget=4, regions=frames, grid=(6, 2))  # a multi-crop image
    assert method.select_images([image])[0].indices.tolist() == [0, 3, 6, 9]


def test_bad_frames():
    with pytest.raises(ValueError, match="frames"):
        temporal.frame_change(torch.randn(7, 3), 2)
