"""Selection micro-benchmark: one image's selection per pre-LLM method at LLaVA-1.5-7B's size.

N = 576 tokens of width D = 4096 (pre-projector width 1024), K = 64, batch 1, on ``--device``:
median wall time over ``--repeats`` after ``--warmup`` (device-synchronised), dispatched operations
and host syncs (a ``TorchDispatchMode`` count, as ``tests/test_dispatch.py``), as run on the device
and in the accelerator form (no loop length read on the host; the same on a GPU).

    python benchmarks/selection_bench.py --device cuda --out sel.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_dispatch import Counter, accelerator_form, llava_sized_image  # noqa: E402

import vlmprune  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def on_device(img, device: str):
    """``img`` with every tensor (regions included) moved to ``device``."""
    moved = {
        f.name: getattr(img, f.name).to(device)
        for f in dataclasses.fields(img)
        if torch.is_tensor(getattr(img, f.name))
    }
    regions = [dataclasses.replace(r, indices=r.indices.to(device)) for r in img.regions]
    return dataclasses.replace(img, regions=regions, **moved)


def _times(method, img, device: str, repeats: int, warmup: int) -> list[float]:
    """Wall times (ms) of ``repeats`` selections after ``warmup``, device-synchronised."""
    for _ in range(warmup):
        method.select_images([img])
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        method.select_images([img])
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def bench(name: str, device: str, repeats: int, warmup: int, k: int, count: bool = True) -> dict:
    img = on_device(llava_sized_image(), device)
    method = vlmprune.get_method(name, budget=k)
    img = dataclasses.replace(img, budget=method.keep_count(img.num_tokens))
    with torch.no_grad():
        times = _times(method, img, device, repeats, warmup)
        if not count:  # a dispatch mode cannot run under torch.compile
            return {"method": name, "ms": statistics.median(times), "repeats": repeats}
        with Counter() as c:
            method.select_images([img])
        with accelerator_form(), Counter() as acc:  # what a GPU launches (no host-read lengths)
            method.select_images([img])
        acc_times = times  # on a GPU the accelerator form is the one timed above
        if device == "cpu":
            with accelerator_form():
                acc_times = _times(method, img, device, repeats, warmup)
    return {
        "method": name,
        "ms": statistics.median(times),
        "ms_accelerator_form": statistics.median(acc_times),
        "ops": c.ops,
        "syncs": c.syncs,
        "ops_accelerator": acc.ops,
        "syncs_accelerator": acc.syncs,
        "repeats": repeats,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--budget", type=int, default=64)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--compiled", action="store_true", help="also time the opt-in compiled greedy loops")
    a = p.parse_args(argv)
    names = [n for n in vlmprune.list_methods() if vlmprune.get_method(n, budget=1).llm_layer is None]
    rows = [bench(n, a.device, a.repeats, a.warmup, a.budget) for n in names]
    if a.compiled:  # the opt-in compiled loops (CUDA graphs on a GPU); warm-up includes compilation
        from vlmprune.core.greedy import compile_loops

        compile_loops(devices=(torch.device(a.device).type,))
        for row in rows:
            row["ms_compiled"] = bench(
                row["method"], a.device, a.repeats, a.warmup + 2, a.budget, count=False
            )["ms"]
        compile_loops(devices=())
    dev = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "cpu"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"device": dev, "N": 576, "D": 4096, "K": a.budget, "rows": rows}, indent=1))
    for r in rows:
        extra = f"  compiled {r['ms_compiled']:8.3f} ms" if "ms_compiled" in r else ""
        acc = (
            f"  (accelerator form {r['ops_accelerator']} ops, {r['syncs_accelerator']} syncs,"
            f" {r['ms_accelerator_form']:.3f} ms)"
        )
        print(f"{r['method']:10s} {r['ms']:8.3f} ms  {r['ops']:5d} ops  {r['syncs']} syncs{acc}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
