"""Videos under vLLM with the plugin equal vlmprune's HF session, token for token.

One engine per family that prunes videos serves every pre-LLM method (and ``temporal``) on one
video, keep-all, a ratio, ``saliency: feature_norm``, an image and a video in one prompt and two
videos, as per-request configurations in one batch. A video has one budget, its frames the
regions; on the Qwen families its kept tokens keep their original M-RoPE positions (t the
frame's temporal position, two positions a frame apart on Qwen2.5-VL at the clips' 4 fps; on
Qwen3-VL, whose prompts put a timestamp before each frame, the timestamps stay and each frame's
text follows its kept tokens), on LLaVA-OneVision compact ones (its frames' 3 x 3 pooled tokens,
the trailing newline dropped when pruned). Keep-all also equals stock vLLM. The clips are 8
frames of 224 x 224 (Qwen: 4 temporal patches of 8 x 8 tokens), short enough that transformers
and vLLM place the text after a video alike (transformers 5 goes on from the start plus max(h,
w), vLLM from the largest position plus one).
"""

from __future__ import annotations

import json

import pytest
from vllm_helpers import PRE_LLM, hf_reference, image_files, random_video, run_vllm, start_fails, video_files

from vlmprune.testing import random_image

#: LLaVA-OneVision's representative video cases run in test_vllm_onevision.py
VIDEO_FAMILIES = (
    pytest.param("qwen2_vl", marks=pytest.mark.full),
    "qwen2_5_vl",
    "qwen3_vl",
    pytest.param("llava_onevision", marks=pytest.mark.full),
)
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
QUESTION = "What happens in the video here?"
ONEVISION_IMAGE, ONEVISION_VIDEO = "<image>\n", "<video>\n"
BUDGET_DIVISOR = {"llava_onevision": 2}
SEPARATORS = {"llava_onevision": 1}  # placeholders of a video that are not content: its newline


def prompt(images: int, videos: int, name: str = "qwen2_5_vl") -> str:
    if name == "llava_onevision":  # one line per item: the HF session reads each video's own run
        return f"USER: {ONEVISION_IMAGE * images}{ONEVISION_VIDEO * videos}{QUESTION} ASSISTANT:"
    return f"system You are a helpful assistant. user {IMAGE * images}{VIDEO * videos}{QUESTION} assistant"


ONE = [None, *({"method": m, "budget": 24} for m in PRE_LLM)]
ONE += [
    {"method": "divprune", "ratio": 0.25},
    {"method": "visionzip", "budget": 24, "saliency": "feature_norm"},
]
CASES = [(c, 0, 1) for c in ONE]
CASES += [({"method": "promprune", "budget": 12}, 1, 1), ({"method": "temporal", "ratio": 0.3}, 0, 2)]
CASES += [({"method": "cdpruner", "budget": 10}, 1, 2)]


def sized(config, name: str):
    """``config`` with its budget divided by the family's ``BUDGET_DIVISOR`` (LLaVA-OneVision's
    clips hold 72 tokens, not 256: half the budget keeps selections apart)."""
    div = BUDGET_DIVISOR.get(name, 1)
    if config is None or div == 1 or "budget" not in config:
        return config
    return dict(config, budget=max(1, config["budget"] // div))


def media(images: int, videos: int):
    return [random_image(i) for i in range(images)], [
        random_video(i, size=224, still=0.5) for i in range(videos)
    ]


@pytest.fixture(scope="module", params=VIDEO_FAMILIES)
def served(request, tiny_dir, tmp_path_factory):
    name = request.param
    model = tiny_dir(name)
    tmp = tmp_path_factory.mktemp(f"video-{name}")
    reqs = []
    for config, n_img, n_vid in CASES:
        ims, vids = media(n_img, n_vid)
        reqs.append(
            {
                "prompt": prompt(n_img, n_vid, name),
                "images": image_files(tmp, ims),
                "videos": video_files(tmp, vids),
                "vlmprune": sized(config, name),
            }
        )
    return name, model, reqs, run_vllm(tmp, model, reqs)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[json.dumps(c[0]) for c in CASES])
def test_video_equals_hf(served, index):
    name, model, _, outs = served
    config, n_img, n_vid = CASES[index]
    config = sized(config, name)
    ims, vids = media(n_img, n_vid)
    tokens, logprobs, kept = hf_reference(name, model, prompt(n_img, n_vid, name), ims, config, videos=vids)
    got = outs[index]
    assert got["tokens"] == tokens, (config, got["tokens"], tokens)
    assert max(abs(a - b) for a, b in zip(got["logprobs"], logprobs)) < 2e-4, config
    if kept is not None and (n_img, n_vid) == (0, 1):  # K placeholders instead of N
        cut = sum(n - len(k) for k, n in kept)
        cut += SEPARATORS.get(name, 0) if cut else 0  # a pruned video's separators go too
        assert outs[0]["prompt_len"] - got["prompt_len"] == cut


def test_the_tiny_models_tell_video_selections_apart(served):
    _, _, _, outs = served
    assert len({tuple(o["tokens"]) for o in outs}) >= 8


@pytest.mark.families("qwen2_5_vl")
def test_video_keep_all_equals_stock_vllm(served, tiny_dir, tmp_path):
    name, _, reqs, outs = served
    stock_model = tiny_dir(name, stock_keys=True)  # the same weights under vLLM 0.32's key names
    stock = run_vllm(tmp_path, stock_model, [dict(reqs[0], vlmprune=None)], plugin=False)[0]
    assert outs[0]["tokens"] == stock["tokens"] and outs[0]["prompt_len"] == stock["prompt_len"]
    assert max(abs(a - b) for a, b in zip(outs[0]["logprobs"], stock["logprobs"])) < 1e-5


def test_evs_and_vlmprune_together_fail_at_start_in_one_line(tiny_dir):
    """vLLM's own video pruning (EVS) and the plugin would both cut the same videos."""
    model = tiny_dir("qwen2_5_vl")
    last = start_fails(
        model, "video_pruning_rate=0.5, hf_overrides={'vlmprune': {'method': 'temporal', 'ratio': 0.5}}"
    )
    assert last.startswith("vlmprune.integrations.vllm.config.ConfigError: vlmprune: vLLM's EVS"), last


@pytest.mark.parametrize("name", ["qwen2_5_vl", pytest.param("qwen3_vl", marks=pytest.mark.full)])
def test_video_chunked_prefill_prefix_cache_and_overrides(tiny_dir, tmp_path, name):
    """A server-wide ``temporal`` with per-request overrides, videos split across 16-token prefill
    steps, then served again from the prefix cache. Qwen3-VL: runs of text and kept rows, every
    position an embedding, so budgets whose runs (52 timestamp and marker tokens besides) fit the
    64-token encoder cache vLLM sizes for this model at 16-token steps (a stock run of 256 would not)."""
    small = name == "qwen3_vl"
    server = {"method": "temporal", "budget": 10} if small else {"method": "temporal", "ratio": 0.3}
    b1, b2 = (8, 6) if small else (24, 20)
    model = tiny_dir(name)
    cases = [(None, server, 0, 1), ({"method": "divprune", "budget": b1}, None, 0, 1)]
    cases += [({"budget": b2}, {"method": "temporal", "budget": b2}, 1, 1)]
    reqs = []
    for request, _, n_img, n_vid in cases:
        ims, vids = media(n_img, n_vid)
        p = prompt(n_img, n_vid)
        reqs.append(
            {"prompt": p, "images": image_files(tmp_path, ims), "videos": video_files(tmp_path, vids)}
        )
        reqs[-1]["vlmprune"] = request
    engine = {
        "hf_overrides": {"vlmprune": server},
        "max_num_batched_tokens": 16,
        "enable_chunked_prefill": True,
    }
    engine.update(enable_prefix_caching=True, block_size=32)
    outs = run_vllm(tmp_path, model, reqs, repeat=True, **engine)
    for i, (request, effective, n_img, n_vid) in enumerate(cases):
        effective = effective or request
        ims, vids = media(n_img, n_vid)
        tokens, logprobs, _ = hf_reference(name, model, prompt(n_img, n_vid), ims, effective, videos=vids)
        first, again = outs[i], outs[len(cases) + i]
        assert first["tokens"] == tokens, effective
        assert max(abs(a - b) for a, b in zip(first["logprobs"], logprobs)) < 2e-4, effective
        assert again["tokens"] == tokens and again["cached"] > 0
