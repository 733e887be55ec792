"""InternVL's videos under vLLM with the plugin: they pass through unpruned, the images beside them
are pruned, token for token as vlmprune's HF session.

vLLM feeds an InternVL video as frames of ``g x g`` ``<video>`` placeholders (``Frame1: <img>...
</img>``), transformers as the same frames of ``<IMG_CONTEXT>`` placeholders. The plugin prunes
images only: a configured request keeps every frame token (and equals stock vLLM, a ``full``
test). The HF session sees a frame as a one-tile image, which keeps every token at a budget of
at least ``g²`` (4 on the tiny model): at such budgets the two agree on prompts with images and
videos, also for text-reading methods (an image's text holds the frame lines of the videos after
it).
"""

from __future__ import annotations

import pytest
from vllm_helpers import hf_reference, image_files, random_video, run_vllm, video_files

from vlmprune.testing import random_image

NAME = "internvl"
QUESTION = "What happens in the video here?"
#: (configuration, media in prompt order: "i" an image, "v" a video)
CASES = [
    (None, "v"),
    ({"method": "divprune", "budget": 2}, "v"),  # a budget below a frame's tokens: still unpruned
    (None, "iv"),
    ({"method": "divprune", "budget": 5}, "iv"),
    ({"method": "visionzip", "budget": 5}, "iv"),
    ({"method": "vispruner", "budget": 5}, "vi"),
    ({"method": "cdpruner", "budget": 5}, "iv"),  # the text after the image holds the frame lines
    ({"method": "sppruner", "budget": 5}, "ivi"),
]


def prompt(order: str) -> str:
    marks = "".join("<IMG_CONTEXT>\n" if m == "i" else "<video>\n" for m in order)
    return f"USER: {marks}{QUESTION} ASSISTANT:"


def media(order: str):
    return [random_image(0)] * order.count("i"), [random_video(0, frames=4)] * order.count("v")


@pytest.fixture(scope="module")
def served(tiny_dir, tmp_path_factory):
    model = tiny_dir(NAME)
    tmp = tmp_path_factory.mktemp("video-internvl")
    reqs = []
    for config, order in CASES:
        ims, vids = media(order)
        files = {"images": image_files(tmp, ims), "videos": video_files(tmp, vids)}
        reqs.append({"prompt": prompt(order), **files, "vlmprune": config})
    return model, reqs, run_vllm(tmp, model, reqs)


@pytest.mark.parametrize("index", [0, *range(2, len(CASES))])
def test_video_prompts_equal_hf(served, index):
    model, _, outs = served
    config, order = CASES[index]
    ims, vids = media(order)
    tokens, logprobs, kept = hf_reference(NAME, model, prompt(order), ims, config, videos=vids)
    got = outs[index]
    assert got["tokens"] == tokens, (config, got["tokens"], tokens)
    assert max(abs(a - b) for a, b in zip(got["logprobs"], logprobs)) < 2e-4, config
    if kept is not None and len(order) == 2:  # the image lost 15 of its 20 placeholders, the frames none
        assert outs[2]["prompt_len"] - got["prompt_len"] == sum(n - len(k) for k, n in kept) == 15


def test_videos_pass_through_unpruned(served):
    """A configured video-only request equals the unconfigured one; pruned images change the output."""
    _, _, outs = served
    assert outs[1]["tokens"] == outs[0]["tokens"] and outs[1]["prompt_len"] == outs[0]["prompt_len"]
    assert max(abs(a - b) for a, b in zip(outs[1]["logprobs"], outs[0]["logprobs"])) < 1e-5
    assert len({tuple(o["tokens"]) for o in outs[2:6]}) == 4


@pytest.mark.full
def test_video_equals_stock_vllm(served, tmp_path):
    model, reqs, outs = served
    stock = run_vllm(tmp_path, model, [reqs[0]], plugin=False)[0]
    assert stock["tokens"] == outs[0]["tokens"] and stock["prompt_len"] == outs[0]["prompt_len"]
    assert max(abs(a - b) for a, b in zip(stock["logprobs"], outs[0]["logprobs"])) < 1e-5
