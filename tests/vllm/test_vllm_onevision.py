"""LLaVA-OneVision under vLLM equals the HF session on images of other shapes and on videos.

The tiny checkpoint's canvases are 4 x 6, 6 x 4 and 3 x 10 tiles: a wide image takes the
3 x 10 one (its padding rows cut, its grid shrunk past ``anyres_max_9``), a tall one the 6 x 4
one (padding columns cut), and beside an 84 x 84 image (4 x 6) a wide one has more crops, so the
HF processor pads the shorter image's crops in the batch (the model drops them again). The
representative run (``make test-vllm``) mixes those images with videos (``temporal``, an image
beside a video, two videos); ``test_vllm_video.py`` runs the whole video matrix (``full``).
"""

from __future__ import annotations

import pytest
from vllm_helpers import hf_reference, image_files, random_video, run_vllm, video_files

from vlmprune.testing import random_image

NAME = "llava_onevision"
WIDE, TALL, SQUARE = (840, 200), (200, 700), (84, 84)
QUESTION = "What is shown here?"
#: (configuration, image sizes, videos)
REPRESENTATIVE = [
    ({"method": "divprune", "budget": 6}, [SQUARE, WIDE], 0),
    ({"method": "visionzip", "budget": 8}, [TALL], 0),
    ({"method": "temporal", "budget": 12}, [], 1),
    ({"method": "promprune", "budget": 6}, [SQUARE], 1),
    ({"method": "temporal", "ratio": 0.3}, [], 2),
]
OTHER_SHAPES = [
    (None, [WIDE, SQUARE], 0),
    ({"method": "promprune", "ratio": 0.25}, [WIDE], 0),
    ({"method": "vispruner", "budget": 7}, [TALL, WIDE], 0),
    ({"method": "cdpruner", "budget": 5}, [WIDE, TALL], 1),
]


def prompt(images: int, videos: int) -> str:
    return "USER: " + "<image>\n" * images + "<video>\n" * videos + f"{QUESTION} ASSISTANT:"


def media(sizes, videos: int):
    ims = [random_image(10 + i, size=s) for i, s in enumerate(sizes)]
    return ims, [random_video(i, size=224, still=0.5) for i in range(videos)]


def served_equal_hf(model, tmp, cases) -> list:
    """Serve ``cases`` in one engine and compare each with the HF session; the vLLM outputs."""
    reqs = []
    for config, sizes, videos in cases:
        ims, vids = media(sizes, videos)
        reqs.append(
            {
                "prompt": prompt(len(sizes), videos),
                "images": image_files(tmp, ims),
                "videos": video_files(tmp, vids),
                "vlmprune": config,
            }
        )
    outs = run_vllm(tmp, model, reqs)
    for (config, sizes, videos), req, got in zip(cases, reqs, outs):
        ims, vids = media(sizes, videos)
        tokens, logprobs, _ = hf_reference(NAME, model, req["prompt"], ims, config, videos=vids)
        assert got["tokens"] == tokens, (config, sizes, videos)
        assert max(abs(a - b) for a, b in zip(got["logprobs"], logprobs)) < 2e-4, (config, sizes, videos)
    return outs


def test_representative_images_and_videos_equal_hf(tiny_dir, tmp_path):
    outs = served_equal_hf(tiny_dir(NAME), tmp_path, REPRESENTATIVE)
    assert len({tuple(o["tokens"]) for o in outs}) >= 3  # the comparison can fail


@pytest.mark.full
def test_other_shapes_equal_hf(tiny_dir, tmp_path):
    outs = served_equal_hf(tiny_dir(NAME), tmp_path, OTHER_SHAPES)
    assert len({tuple(o["tokens"]) for o in outs}) >= 3
