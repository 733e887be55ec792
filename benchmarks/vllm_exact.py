"""Exactness of the vLLM plugin on this machine, before anything is timed: per family, tiny random
checkpoints served by vLLM with the plugin (CUDA graphs on where there is a GPU) against
vlmprune's HF session (float32, on the CPU), every pre-LLM method plus keep-all, and on the
families that prune videos a clip with ``temporal`` and DivPrune.

    python benchmarks/vllm_exact.py --out OUT/vllm-exact.json [--families qwen2_5_vl,...]

Exits 1 naming each request whose greedy tokens differ or whose log-probabilities differ by more
than ``--tol`` (default 1e-3 on a GPU, whose kernels differ from the CPU reference's; 2e-4 on the
CPU). Reuses the vLLM tests' helpers (tests/vllm), so it runs from a source checkout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "vllm"))

from vllm_helpers import (  # noqa: E402
    FAMILIES,
    PRE_LLM,
    hf_reference,
    image_files,
    random_video,
    run_vllm,
    save_tiny,
    video_files,
)

from vlmprune.adapters import family  # noqa: E402
from vlmprune.testing import random_image  # noqa: E402

VIDEO_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
VIDEO = "system user <|vision_start|><|video_pad|><|vision_end|>What happens? assistant"


def cases(name: str) -> list[tuple[dict | None, list, list, str]]:
    """(configuration, images, videos, prompt) per request."""
    prompt = family(name).tiny_prompt("What is shown in the picture here?", 1)
    out = [(c, [random_image(0)], [], prompt) for c in [None, *({"method": m, "budget": 5} for m in PRE_LLM)]]
    if name in VIDEO_FAMILIES:
        clip = [random_video(0, size=224, still=0.5)]
        out += [({"method": m, "budget": 24}, [], clip, VIDEO) for m in ("temporal", "divprune")]
    return out


def check(name: str, tmp: Path, engine: dict, tol: float) -> list[dict]:
    model = save_tiny(name, tmp / name)
    todo = cases(name)
    reqs = [
        {"prompt": p, "images": image_files(tmp, ims), "videos": video_files(tmp, vids), "vlmprune": c}
        for c, ims, vids, p in todo
    ]
    outs = run_vllm(tmp, model, reqs, **engine)
    rows = []
    for (config, ims, vids, prompt), got in zip(todo, outs):
        tokens, logprobs, _ = hf_reference(name, model, prompt, ims, config, videos=vids)
        diff = max(abs(a - b) for a, b in zip(got["logprobs"], logprobs))
        ok = got["tokens"] == tokens and diff < tol
        rows.append(
            {"family": name, "config": config, "video": bool(vids), "max_logprob_diff": diff, "ok": ok}
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tol", type=float, default=None)
    args = ap.parse_args(argv)
    import torch

    gpu = torch.cuda.is_available()
    # CUDA graphs on (vLLM's default mode, FULL_AND_PIECEWISE) on a GPU; the CPU has none
    engine = {"enforce_eager": False, "gpu_memory_utilization": 0.3} if gpu else {}
    tol = args.tol if args.tol is not None else (1e-3 if gpu else 2e-4)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.families.split(","):
            rows += check(name, Path(tmp), engine, tol)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"device": "cuda" if gpu else "cpu", "tol": tol, "requests": rows}, indent=1)
    )
    bad = [r for r in rows if not r["ok"]]
    for r in bad:
        print(
            f"vllm_exact: {r['family']} {json.dumps(r['config'])}: differs (logprob diff {r['max_logprob_diff']:.2e})"
        )
    print(f"vllm_exact: {len(rows) - len(bad)} of {len(rows)} requests equal the HF session ({args.out})")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
