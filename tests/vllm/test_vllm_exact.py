"""vLLM with the plugin equals vlmprune's HF session, token for token, on tiny random models.

One engine per family serves every pre-LLM method (and keep-all, a ratio, a budget above the
token count, a two-image prompt and one of two images of other shapes) as per-request configurations in one batch; each request is
compared with the stock HF model under ``with method(model)`` (LLaVA: compact positions, the
family's default; Qwen2.5-VL: the original M-RoPE positions). Keep-all is also compared with
stock vLLM, the plugin not loaded.
"""

from __future__ import annotations

import pytest
from vllm_helpers import FAMILIES, PRE_LLM, hf_reference, image_files, run_vllm

from vlmprune.adapters import family
from vlmprune.testing import random_image

QUESTION = "What is shown in the picture here?"
CASES = [None, *({"method": m, "budget": 5} for m in PRE_LLM)]
CASES += [{"method": "divprune", "ratio": 0.25}, {"method": "promprune", "budget": 10_000}]
CASES += [{"method": "visionzip", "budget": 5, "saliency": "feature_norm"}]
TWO_IMAGES = [{"method": "random", "budget": 4}, {"method": "cdpruner", "budget": 4}]
#: a wide 84x56 image beside a square one (LLaVA-NeXT: 3 crops unpadded to 4x6 tiles' tokens, and 5)
SHAPES = [{"method": "visionzip", "budget": 4}, {"method": "pool", "budget": 4}]


def case_id(config) -> str:
    return "keep-all" if config is None else "-".join(str(v) for v in config.values())


@pytest.fixture(scope="module", params=FAMILIES)
def served(request, tiny_dir, tmp_path_factory):
    """(family, model dir, [(config, images, prompt)], vLLM outputs) for every case, one engine."""
    name = request.param
    model = tiny_dir(name)
    tmp = tmp_path_factory.mktemp(f"exact-{name}")
    one, two = [random_image(0)], [random_image(1), random_image(2)]
    cases = [(c, one, family(name).tiny_prompt(QUESTION, 1)) for c in CASES]
    cases += [(c, two, family(name).tiny_prompt(QUESTION, 2)) for c in TWO_IMAGES]
    shapes = [random_image(3, (84, 56)), random_image(4)]
    cases += [(c, shapes, family(name).tiny_prompt(QUESTION, 2)) for c in SHAPES]
    reqs = [{"prompt": p, "images": image_files(tmp, ims), "vlmprune": c} for c, ims, p in cases]
    return name, model, cases, run_vllm(tmp, model, reqs)


@pytest.mark.parametrize("index", range(len(CASES) + len(TWO_IMAGES) + len(SHAPES)))
def test_vllm_equals_hf(served, index):
    name, model, cases, outs = served
    config, images, prompt = cases[index]
    tokens, logprobs, kept, llm_len = hf_reference(name, model, prompt, images, config, llm_len=True)
    got = outs[index]
    assert got["tokens"] == tokens, (case_id(config), got["tokens"], tokens)
    assert max(abs(a - b) for a, b in zip(got["logprobs"], logprobs)) < 2e-4, case_id(config)
    # the prompt holds K placeholders per image instead of N (and no separators where it prunes):
    # as long as the sequence the HF session gives the LLM
    assert got["prompt_len"] == llm_len, case_id(config)
    if kept is not None and len(images) == 1:
        assert llm_len < outs[0]["prompt_len"] or all(len(k) == n for k, n in kept)


def test_the_tiny_models_tell_selections_apart(served):
    """The comparison can fail: different kept sets give different greedy continuations."""
    _, _, _, outs = served
    assert len({tuple(o["tokens"]) for o in outs}) >= 6


@pytest.mark.families("llava", "qwen2_5_vl", "internvl")
def test_keep_all_equals_stock_vllm(served, tiny_dir, tmp_path):
    name, _, cases, outs = served
    stock_model = tiny_dir(name, stock_keys=True)  # the same weights under vLLM 0.32's key names
    images = image_files(tmp_path, cases[0][1])
    stock = run_vllm(tmp_path, stock_model, [{"prompt": cases[0][2], "images": images}], plugin=False)[0]
    for i, (config, _, _) in enumerate(cases):
        if config is None or config.get("budget") == 10_000:
            assert outs[i]["tokens"] == stock["tokens"]
            assert outs[i]["prompt_len"] == stock["prompt_len"]
            assert max(abs(a - b) for a, b in zip(outs[i]["logprobs"], stock["logprobs"])) < 1e-5
