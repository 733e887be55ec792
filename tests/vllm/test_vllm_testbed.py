"""vLLM with the plugin equals vlmprune's HF session on the committed testbed checkpoints, token
for token, on held-out testbed questions (22.2% of the visual tokens kept)."""

from __future__ import annotations

import pytest
from vllm_helpers import hf_reference, image_files, run_vllm

from vlmprune.testbed import model as M
from vlmprune.testbed import questions as Q
from vlmprune.testbed.task import find_testbed, first_word, scene_images
from vlmprune.testbed.train import scene_size

FAMILY = {"llava": "llava", "qwen": "qwen2_5_vl"}
SIZE = {"llava": {"budget": 128}, "qwen": {"ratio": 0.222}}
METHODS = (None, "promprune", "sppruner", "divprune", "cdpruner", "visionzip")
QUESTIONS = 6


@pytest.mark.parametrize("testbed", sorted(FAMILY))
def test_testbed_vllm_equals_hf(testbed, tmp_path):
    model = find_testbed(testbed)
    if model is None:
        pytest.skip(f"no testbed/{testbed} checkpoint")
    items = Q.heldout_set(QUESTIONS, seed=11, size=lambda s: scene_size(testbed, s))
    images = scene_images(testbed, items)
    configs = [None if m is None else {"method": m, **SIZE[testbed]} for m in METHODS]
    cases = [(c, im, qa) for c in configs for im, (_, qa) in zip(images, items)]
    reqs = [
        {"prompt": M.prompt(testbed, qa.question), "images": image_files(tmp_path, [im]), "vlmprune": c}
        for c, im, qa in cases
    ]
    outs = run_vllm(tmp_path, model, reqs, max_tokens=3)
    right = {}
    for (config, image, qa), got in zip(cases, outs):
        tokens, _, _ = hf_reference(
            FAMILY[testbed], model, M.prompt(testbed, qa.question), [image], config, 3
        )
        assert got["tokens"] == tokens, (config, qa.question)
        key = "keep-all" if config is None else config["method"]
        right[key] = right.get(key, 0) + (first_word(got["text"]) == qa.answer)
    print(f"testbed-{testbed}: right of {QUESTIONS}: {right}")
    assert right["keep-all"] >= QUESTIONS // 2  # the checkpoint answers: the comparison is not of noise
