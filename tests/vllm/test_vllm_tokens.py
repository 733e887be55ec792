"""The HF session and the vLLM plugin build the same ``ImageTokens`` for the same image and prompt:
field by field (features, signals, text, budget, layout), for every family the plugin serves.

Both engines call the one builder (``vlmprune.core.tokens.image_tokens``); the signal math lives
in ``vlmprune.adapters.signals``. Here each engine's builder is wrapped to keep a copy of what it
returns (the tokens are not changed), the vLLM engine in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers
from vllm_helpers import FAMILIES, HERE, _hf_model, image_files

import vlmprune
from vlmprune.adapters import family
from vlmprune.session import engine as hf_engine
from vlmprune.testing import random_image

#: methods that together ask for every side signal: saliency and keys, pre-connector features, text
CONFIGS = [
    {"method": "visionzip", "budget": 5},
    {"method": "vispruner", "budget": 5},
    {"method": "cdpruner", "budget": 5},
    {"method": "promprune", "budget": 5, "saliency": "feature_norm"},
]
QUESTION = "What is shown in the picture here?"
FIELDS = ("features", "budget", "grid", "pre_features", "saliency", "keys", "text", "seed", "kind")


def vllm_tokens(tmp, model, reqs):
    spec_path, out_path = tmp / "spec.json", tmp / "tokens.pt"
    spec_path.write_text(json.dumps({"model": str(model), "requests": reqs}))
    env = dict(os.environ, VLLM_PLUGINS="vlmprune", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, str(HERE / "record_tokens.py"), str(spec_path), str(out_path)],
        env=env, capture_output=True, text=True, timeout=900, cwd=HERE,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return torch.load(out_path)


def hf_tokens(name, model_dir, prompt, images, config, monkeypatch):
    model = _hf_model(family(name).model_class, str(model_dir))
    proc = transformers.AutoProcessor.from_pretrained(str(model_dir))
    inputs = proc(text=[prompt], images=list(images), return_tensors="pt")
    built = []

    def recording(*args, **kwargs):
        tokens = builder(*args, **kwargs)
        row = {f: getattr(tokens, f) for f in FIELDS}
        row = {k: v.detach().float().cpu() if torch.is_tensor(v) else v for k, v in row.items()}
        row["regions"] = [(r.indices.cpu(), tuple(r.grid)) for r in tokens.regions]
        built.append(row)
        return tokens

    builder = hf_engine.image_tokens
    monkeypatch.setattr(hf_engine, "image_tokens", recording)
    options = {k: v for k, v in config.items() if k not in ("method", "saliency")}
    method = vlmprune.get_method(config["method"], **options)
    with method(model, saliency=config.get("saliency", "auto")), torch.no_grad():
        model(**inputs)
    return built


@pytest.mark.families("llava_next", "qwen2_5_vl", "internvl")
@pytest.mark.parametrize("name", FAMILIES)
def test_image_tokens_equal_field_by_field(name, tiny_dir, tmp_path, monkeypatch):
    model = tiny_dir(name)
    prompt = family(name).tiny_prompt(QUESTION, 1)
    images = [random_image(0)]
    files = image_files(tmp_path, images)
    reqs = [{"prompt": prompt, "images": files, "vlmprune": c} for c in CONFIGS]
    got = vllm_tokens(tmp_path, model, reqs)
    for config, vllm_rows in zip(CONFIGS, got):
        hf_rows = hf_tokens(name, model, prompt, images, config, monkeypatch)
        assert len(hf_rows) == len(vllm_rows) == 1, config
        hf, vl = hf_rows[0], vllm_rows[0]
        for field in ("budget", "seed", "kind"):
            assert hf[field] == vl[field], (config, field)
        assert tuple(hf["grid"]) == tuple(vl["grid"]), config
        assert len(hf["regions"]) == len(vl["regions"])
        for (hi, hg), (vi, vg) in zip(hf["regions"], vl["regions"]):
            assert torch.equal(hi, vi) and hg == vg
        for field in ("features", "pre_features", "saliency", "keys", "text"):
            a, b = hf[field], vl[field]
            assert (a is None) == (b is None), (config, field)
            if a is not None:
                assert a.shape == b.shape, (config, field)
                torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=f"{config} {field}")
        sal = {"visionzip", "vispruner", "promprune"}
        assert (hf["saliency"] is not None) == (config["method"] in sal)  # each signal was compared
    assert any(r[0]["text"] is not None for r in got) and any(r[0]["pre_features"] is not None for r in got)
