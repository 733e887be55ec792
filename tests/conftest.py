import os
import sys
import warnings
from functools import lru_cache

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
warnings.filterwarnings("ignore", message=".*torchvision.*")

from vlmprune.testing import FAMILIES, make_inputs, random_image, tiny_model  # noqa: E402


@lru_cache(maxsize=16)
def cached_model(family: str, attn: str = "sdpa"):
    return tiny_model(family, attn=attn)


def batch_inputs(family: str, processor, kind: str = "batch"):
    """'single': one prompt, one image; 'batch': two prompts of different lengths, the second
    with two images of different sizes (left padding)."""
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
