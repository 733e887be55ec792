"""Many images and a long video in one engine: 8 images at the largest size the tiny Qwen2.5-VL
takes (224 x 224, 64 tokens each) in one prompt, and a 64-frame 224 x 224 video (32 temporal
patches, 2048 tokens) in another, pruned, batched with their keep-all twins. vLLM's scheduler
charges each item's encoder work by its placeholder count (K after pruning) while the tower runs
on all N patches; docs/vllm.md says how that is bounded."""

from __future__ import annotations

import pytest
from vllm_helpers import hf_reference, image_files, random_video, run_vllm, video_files

import vlmprune
from vlmprune.testing import random_image

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"


@pytest.mark.full
def test_eight_images_and_a_64_frame_video(tiny_dir, tmp_path):
    model = tiny_dir("qwen2_5_vl")
    images = [random_image(i, size=(224, 224)) for i in range(8)]
    video = random_video(0, frames=64, size=224, still=0.5)
    many = f"system user {IMAGE * 8}Describe every picture. assistant"
    long = f"system user {VIDEO}What happens? assistant"
    pruned_images = {"method": "divprune", "ratio": 0.25}
    pruned_video = {"method": "temporal", "ratio": 0.1}
    imgs, vids = image_files(tmp_path, images), video_files(tmp_path, [video])
    reqs = [
        {"prompt": many, "images": imgs, "vlmprune": None},
        {"prompt": many, "images": imgs, "vlmprune": pruned_images},
        {"prompt": long, "images": [], "videos": vids, "vlmprune": None},
        {"prompt": long, "images": [], "videos": vids, "vlmprune": pruned_video},
    ]
    outs = run_vllm(tmp_path, model, reqs, max_model_len=4096, limit_mm_per_prompt={"image": 8, "video": 1})
    k_image = vlmprune.get_method("divprune", ratio=0.25).keep_count(64)
    k_video = vlmprune.get_method("temporal", ratio=0.1).keep_count(2048)  # one budget for the video
    assert outs[0]["prompt_len"] - outs[1]["prompt_len"] == 8 * (64 - k_image)
    assert outs[2]["prompt_len"] - outs[3]["prompt_len"] == 2048 - k_video
    tokens, logprobs, kept = hf_reference("qwen2_5_vl", model, many, images, pruned_images)
    assert [len(k) for k, _ in kept] == [k_image] * 8
    assert outs[1]["tokens"] == tokens
    assert max(abs(a - b) for a, b in zip(outs[1]["logprobs"], logprobs)) < 2e-4
