import os
import sys
import warnings
from functools import lru_cache

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
warnings.filterwarnings("ignore", message=".*torchvision.*")

from vlmprune.adapters import family as family_class  # noqa: E402
from vlmprune.testing import FAMILIES, make_inputs, random_image, tiny_model, video_inputs  # noqa: E402

VIDEO_FAMILIES = tuple(f for f in FAMILIES if family_class(f).prunes_video)


@lru_cache(maxsize=16)
def cached_model(family: str, attn: str = "sdpa"):
    return tiny_model(family, attn=attn)


def batch_inputs(family: str, processor, kind: str = "batch"):
    """'single': one prompt, one image; 'batch': two prompts of different lengths, the second
    with two images of different sizes (left padding); 'video': a video and an image, then a
    video alone (families that prune videos)."""
    if kind == "video":
        return video_inputs(family, processor)
    if kind == "single":
        return make_inputs(family, processor, ["What is in the image?"], [[random_image(1)]])
    return make_inputs(
        family,
        processor,
        ["What is in the image?", "Describe the picture in detail please, how many objects?"],
        [[random_image(1)], [random_image(2, (100, 70)), random_image(3)]],
    )


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(params=VIDEO_FAMILIES)
def video_family(request):
    return request.param
