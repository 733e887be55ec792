"""Run one vLLM engine over a list of requests and write what it generated (a test helper).

``python run_engine.py SPEC.json OUT.json``. SPEC: ``{"model": DIR, "engine": {LLM kwargs},
"requests": [{"prompt": str, "images": [PNG paths], "videos": [NPY paths of (T, H, W, 3) uint8 frames],
"image_embeds": {"image_embeds": NPY path, "image_grid_thw": [[t, h, w]]} (Qwen), "vlmprune": dict |
null}], "max_tokens": n, "each": bool}``.
OUT: one ``{"tokens", "logprobs", "prompt_len", "cached"}`` per request, in order; with ``"each"``
the requests go one at a time and a refused one gives ``{"error": its last line}``. All requests go
to the engine in one ``generate`` call (continuous batching), after one warm request when
``"repeat"`` asks to run them twice (the second pass hits the prefix cache).
Run in its own process: vLLM registers plugins per process, and ``VLLM_PLUGINS`` decides which.
``"encoder_batches": true`` runs the engine core in this process and also writes
``OUT.batches.json``: the number of items of each ``embed_multimodal`` call of the plugin's model.
"""

import json
import os
import sys

import numpy as np
from PIL import Image
from vllm_helpers import video_metadata


def requests(spec):
    out = []
    for r in spec["requests"]:
        images = [Image.open(p).convert("RGB") for p in r["images"]]
        videos = [np.load(p) for p in r.get("videos", [])]  # (T, H, W, 3) uint8 frames
        videos = [(v, dict(video_metadata(v.shape[0]), do_sample_frames=False)) for v in videos]
        req = {"prompt": r["prompt"]}
        data = {}
        if images:
            data["image"] = images if len(images) > 1 else images[0]
        # precomputed embeddings: {"image_embeds": NPY, "image_grid_thw": [[t, h, w]]}
        if r.get("image_embeds"):
            import torch

            given = r["image_embeds"]
            data["image"] = {
                "image_embeds": torch.from_numpy(np.load(given["image_embeds"])),
                "image_grid_thw": torch.tensor(given["image_grid_thw"]),
            }
        if videos:
            data["video"] = videos if len(videos) > 1 else videos[0]
        if data:
            req["multi_modal_data"] = data
        if r.get("vlmprune") is not None:
            req["mm_processor_kwargs"] = {"vlmprune": r["vlmprune"]}
        out.append(req)
    return out


def count_encoder_batches() -> list[int]:
    """Record, unchanged, how many items each of the plugin model's encoder calls returns."""
    from vlmprune.integrations.vllm import common

    batches, stock = [], common.PruningModel.embed_multimodal

    def counting(self, **kwargs):
        out = stock(self, **kwargs)
        batches.append(len(out))
        return out

    common.PruningModel.embed_multimodal = counting
    return batches


def main(spec_path, out_path):
    spec = json.load(open(spec_path))
    if spec.get("encoder_batches"):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams

    batches = count_encoder_batches() if spec.get("encoder_batches") else None
    engine = dict(
        dtype="float32", gpu_memory_utilization=0.25, max_model_len=4096, enforce_eager=True, seed=0
    )
    engine.update(spec.get("engine", {}))
    llm = LLM(model=spec["model"], **engine)
    params = SamplingParams(
        temperature=0.0, max_tokens=spec.get("max_tokens", 6), ignore_eos=True, logprobs=0
    )
    reqs = requests(spec)
    passes = []
    if spec.get("each"):  # one request at a time, a refused one recorded as its error's last line
        outs = []
        for req in reqs:
            try:
                outs += llm.generate([req], params, use_tqdm=False)
            except Exception as e:  # noqa: BLE001 - what the engine answered is the result
                outs.append(f"{type(e).__name__}: {e}".splitlines()[-1])
        passes.append(outs)
    else:
        for _ in range(2 if spec.get("repeat") else 1):
            passes.append(llm.generate(reqs, params, use_tqdm=False))
    result = []
    for outs in passes:
        for o in outs:
            if isinstance(o, str):
                result.append({"error": o})
                continue
            toks = list(o.outputs[0].token_ids)
            lps = [lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, toks)]
            result.append(
                {
                    "tokens": toks,
                    "logprobs": lps,
                    "prompt_len": len(o.prompt_token_ids),
                    "cached": o.num_cached_tokens or 0,
                    "text": o.outputs[0].text,
                }
            )
    json.dump(result, open(out_path, "w"))
    if batches is not None:
        json.dump(batches, open(out_path + ".batches.json", "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
