"""LLaVA-OneVision's anyres geometry under vLLM equals the HF session's on images of other shapes.

The tiny checkpoint's canvases are 4 x 6, 6 x 4 and 3 x 10 tiles: a wide image takes the
3 x 10 one (its padding rows cut, its grid shrunk past ``anyres_max_9``), a tall one the 6 x 4
one (padding columns cut), and beside an 84 x 84 image (4 x 6) a wide one has more crops, so the
HF processor pads the shorter image's crops in the batch (the model drops them again). Each
request equals the HF session token for token.
"""

from __future__ import annotations

import pytest
from vllm_helpers import hf_reference, image_files, run_vllm

from vlmprune.adapters import family
from vlmprune.testing import random_image

NAME = "llava_onevision"
WIDE, TALL, SQUARE = (840, 200), (200, 700), (84, 84)
CASES = [
    ({"method": "divprune", "budget": 6}, [SQUARE, WIDE]),
    (None, [WIDE, SQUARE]),
    ({"method": "visionzip", "budget": 8}, [TALL]),
    ({"method": "promprune", "ratio": 0.25}, [WIDE]),
    ({"method": "vispruner", "budget": 7}, [TALL, WIDE]),
]


def images(sizes):
    return [random_image(10 + i, size=s) for i, s in enumerate(sizes)]


@pytest.mark.full
def test_other_shapes_equal_hf(tiny_dir, tmp_path):
    model = tiny_dir(NAME)
    reqs = []
    for config, sizes in CASES:
        prompt = family(NAME).tiny_prompt("What is shown in the picture here?", len(sizes))
        reqs.append({"prompt": prompt, "images": image_files(tmp_path, images(sizes)), "vlmprune": config})
    outs = run_vllm(tmp_path, model, reqs)
    for (config, sizes), req, got in zip(CASES, reqs, outs):
        tokens, logprobs, _ = hf_reference(NAME, model, req["prompt"], images(sizes), config)
        assert got["tokens"] == tokens, (config, sizes)
        assert max(abs(a - b) for a, b in zip(got["logprobs"], logprobs)) < 2e-4, (config, sizes)
    assert len({tuple(o["tokens"]) for o in outs}) >= 3
