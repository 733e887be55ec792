"""Run one vLLM engine in this process and save the ``ImageTokens`` the plugin built for each
image (a test helper): ``python record_tokens.py SPEC.json OUT.pt``, SPEC as ``run_engine.py``'s.

The engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the plugin's one
``ImageTokens`` builder can be wrapped to keep a CPU copy of what it returns, unchanged.
"""

import json
import os
import sys

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

FIELDS = ("features", "budget", "grid", "pre_features", "saliency", "keys", "text", "seed", "kind")


def cpu(value):
    import torch

    return value.detach().float().cpu() if torch.is_tensor(value) else value


def main(spec_path, out_path):
    import torch
    from run_engine import requests
    from vllm import LLM, SamplingParams

    from vlmprune.integrations.vllm import common

    built = []
    builder = common.image_tokens

    def recording(*args, **kwargs):
        tokens = builder(*args, **kwargs)
        row = {f: cpu(getattr(tokens, f)) for f in FIELDS}
        row["regions"] = [(r.indices.cpu(), tuple(r.grid)) for r in tokens.regions]
        built.append(row)
        return tokens

    common.image_tokens = recording
    spec = json.load(open(spec_path))
    engine = dict(
        dtype="float32", gpu_memory_utilization=0.25, max_model_len=4096, enforce_eager=True, seed=0
    )
    llm = LLM(model=spec["model"], **engine)
    params = SamplingParams(temperature=0.0, max_tokens=1)
    per_request = []
    for req in requests(spec):  # one request at a time: each one's images in order
        start = len(built)
        llm.generate([req], params, use_tqdm=False)
        per_request.append(built[start:])
    torch.save(per_request, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
