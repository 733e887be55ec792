"""The plugin's scheduler charges a pruned image's encoder work at its unpruned size N.

Sixteen one-image requests on the tiny Qwen2.5-VL (224 x 224: N = 64 tokens, 4 kept) with an
encoder budget of 256 tokens a step: vLLM's own scheduler charges K = 4 per image and runs all
sixteen towers in one call; the plugin's charges 64 and runs at most four a step. Greedy outputs
are the same either way.
"""

from __future__ import annotations

import pytest
from vllm_helpers import image_files, run_vllm

from vlmprune.testing import random_image

PROMPT = "<|vision_start|><|image_pad|><|vision_end|>Hi"
# the encoder budget is the step's token budget (no video: no larger item raises it)
STEP = {"max_num_batched_tokens": 256, "enable_prefix_caching": False, "limit_mm_per_prompt": {"video": 0}}
SCHEDULER = "vlmprune.integrations.vllm.scheduler.Scheduler"


@pytest.fixture(scope="module")
def sixteen(tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scheduler")
    images = image_files(tmp, [random_image(i, size=(224, 224)) for i in range(16)])
    reqs = [
        {"prompt": PROMPT, "images": [p], "vlmprune": {"method": "divprune", "budget": 4}} for p in images
    ]
    return tmp, tiny_dir("qwen2_5_vl"), reqs


def test_encoder_steps_are_charged_the_unpruned_size(sixteen):
    tmp, model, reqs = sixteen
    stock, stock_batches = run_vllm(tmp, model, reqs, batches=True, **STEP)
    ours, our_batches = run_vllm(tmp, model, reqs, batches=True, scheduler_cls=SCHEDULER, **STEP)
    assert sum(stock_batches) == sum(our_batches) == 16
    assert max(stock_batches) >= 8  # charged K: more towers a step than the budget plans for
    assert max(our_batches) <= 256 // 64
    assert [o["tokens"] for o in ours] == [o["tokens"] for o in stock]
    assert [o["prompt_len"] for o in ours] == [o["prompt_len"] for o in stock]
