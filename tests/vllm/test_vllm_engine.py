"""The plugin under the engine's features: a server-wide configuration (``hf_overrides``) with
per-request overrides, chunked prefill (an image split across steps), the prefix cache (the same
requests again) and continuous batching; a bad configuration fails at start-up in one line."""

from __future__ import annotations

import json
import os

import pytest
from vllm_helpers import FAMILIES, hf_reference, image_files, run_vllm, start_fails

from vlmprune.adapters import family
from vlmprune.testing import random_image

SERVER = {"method": "promprune", "budget": 6}
REQUESTS = [None, {"budget": 3}, {"method": "divprune", "ratio": 0.5}, {"ratio": 0.25}]
EFFECTIVE = [SERVER, {"method": "promprune", "budget": 3}, {"method": "divprune", "ratio": 0.5}]
EFFECTIVE += [{"method": "promprune", "ratio": 0.25}]


@pytest.mark.families("llava", "qwen3_vl")
@pytest.mark.parametrize("name", FAMILIES)
def test_server_config_chunked_prefill_and_prefix_cache(name, tiny_dir, tmp_path):
    model = tiny_dir(name)
    questions = (
        "What is this? Describe every object in the picture and where it is.",
        "Which colour is the shape at the top left, and is there a small one next to it?",
    )
    prompts = [family(name).tiny_prompt(q, 1) for q in questions]
    cases = [(r, e, random_image(i % 2), prompts[i % 2]) for i, (r, e) in enumerate(zip(REQUESTS, EFFECTIVE))]
    reqs = [{"prompt": p, "images": image_files(tmp_path, [im]), "vlmprune": r} for r, _, im, p in cases]
    engine = {
        "hf_overrides": {"vlmprune": SERVER},
        "max_num_batched_tokens": 16,
        "enable_chunked_prefill": True,
    }
    engine.update(enable_prefix_caching=True, block_size=32)
    outs = run_vllm(tmp_path, model, reqs, repeat=True, **engine)
    first, again = outs[: len(reqs)], outs[len(reqs) :]
    for (_, effective, image, prompt), got, cached in zip(cases, first, again):
        tokens, logprobs, _ = hf_reference(name, model, prompt, [image], effective)
        assert got["tokens"] == tokens, effective
        assert max(abs(a - b) for a, b in zip(got["logprobs"], logprobs)) < 2e-4
        assert cached["tokens"] == tokens and cached["cached"] > 0
    assert max(o["prompt_len"] for o in first) > 16  # every prompt was prefilled in several chunks


BAD = [
    ({"method": "nope", "budget": 4}, "unknown method 'nope'"),
    ({"method": "fastv", "budget": 4}, "`layer`=2 asks for pruning inside the LLM"),
    ({"method": "sppruner", "budget": 8, "llm_layer": 2}, "`llm_layer`=2 asks for pruning inside the LLM"),
    ({"method": "divprune"}, "give exactly one of `budget`"),
    ({"method": "divprune", "budget": 4, "positions": "compact"}, "'positions' must be one of"),
    ({"method": "promprune", "ratio": 0.2, "mu": "x", "bogus": 1}, "unexpected keyword argument 'bogus'"),
]


@pytest.mark.parametrize("config,message", BAD, ids=[b[1] for b in BAD])
def test_bad_server_config_fails_at_start_in_one_line(config, message, tiny_dir):
    model = tiny_dir("qwen2_5_vl")
    last = start_fails(model, f"hf_overrides={{'vlmprune': {json.loads(json.dumps(config))!r}}}")
    assert last.startswith("vlmprune.integrations.vllm.config.ConfigError: vlmprune: "), last
    assert message in last, last


def test_bad_requests_are_refused_in_one_line_and_the_engine_serves_on(tiny_dir, tmp_path):
    """Requests asking for what the engine lacks fail alone, naming the option: an in-LLM stage,
    and embeddings given in place of pixels (the tower, whose signals a selection reads, never
    runs on them). The requests after them are served: pruned, and the same embeddings unpruned."""
    import numpy as np

    model = tiny_dir("qwen2_5_vl")
    prompt = family("qwen2_5_vl").tiny_prompt("What is shown in the picture here?", 1)
    image = image_files(tmp_path, [random_image(0)])
    np.save(tmp_path / "embeds.npy", np.random.default_rng(0).standard_normal((64, 128), dtype=np.float32))
    embeds = {"image_embeds": str(tmp_path / "embeds.npy"), "image_grid_thw": [[1, 16, 16]]}  # 8 x 8 merged
    reqs = [
        {"prompt": prompt, "images": image, "vlmprune": {"method": "sppruner", "budget": 8, "llm_layer": 2}},
        {
            "prompt": prompt,
            "images": [],
            "image_embeds": embeds,
            "vlmprune": {"method": "divprune", "budget": 8},
        },
        {"prompt": prompt, "images": image, "vlmprune": {"method": "divprune", "budget": 8}},
        {"prompt": prompt, "images": [], "image_embeds": embeds},
    ]
    outs = run_vllm(tmp_path, model, reqs, each=True, enable_mm_embeds=True)
    assert (
        "ConfigError: vlmprune: sppruner: `llm_layer`=2 asks for pruning inside the LLM" in outs[0]["error"]
    )
    assert outs[1]["error"].endswith(
        "vlmprune: qwen2_5_vl prunes images given as pixels, not as `image_embeds`"
    )
    tokens, _, _ = hf_reference("qwen2_5_vl", model, prompt, [random_image(0)], reqs[2]["vlmprune"])
    assert outs[2]["tokens"] == tokens
    assert outs[3]["prompt_len"] == outs[2]["prompt_len"] - 8 + 64  # every embedding row, unpruned


@pytest.mark.full
@pytest.mark.parametrize("name", FAMILIES)
def test_tensor_parallel_two_ranks(name, tiny_dir, tmp_path, monkeypatch):
    """Two tensor-parallel CPU workers: the vision towers' heads are split across the ranks, so
    the saliency and keys are all-reduced; the outputs still equal the one-process HF session."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPU cores")
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # one core per rank (one NUMA node here)
    model = tiny_dir(name)
    prompt = family(name).tiny_prompt("What is shown in the picture here?", 1)
    configs = [
        None,
        *({"method": m, "budget": 5} for m in ("promprune", "visionzip", "vispruner", "cdpruner")),
    ]
    reqs = [
        {"prompt": prompt, "images": image_files(tmp_path, [random_image(0)]), "vlmprune": c} for c in configs
    ]
    outs = run_vllm(tmp_path, model, reqs, tensor_parallel_size=2, distributed_executor_backend="mp")
    for config, got in zip(configs, outs):
        tokens, logprobs, _ = hf_reference(name, model, prompt, [random_image(0)], config)
        assert got["tokens"] == tokens, config
        assert max(abs(a - b) for a, b in zip(got["logprobs"], logprobs)) < 1e-3, config
