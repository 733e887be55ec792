"""Selection cost on a GPU is launch-bound: each dispatched tensor operation is at least one kernel
launch and each host sync stalls the stream. These tests count both for one image's selection at
LLaVA-1.5-7B's size (N = 576 tokens, D = 4096, pre-projector width 1024, K = 64), with a
``TorchDispatchMode``: a count, not a timing, so it is stable on a noisy machine.

Every pre-LLM method of the registry is held to ``BOUND`` operations and ``SYNCS`` host syncs in
the form an accelerator runs (``greedy.HOST_READS`` empty: no loop length read on the host, no
CPU-only form), and in the CPU's form to the same bounds unless listed in ``CPU_OVER`` (a CPU form
that spends operations to save arithmetic, where an operation costs no launch).
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from method_inputs import accelerator_form
from torch.utils._python_dispatch import TorchDispatchMode

import vlmprune
from vlmprune.core import greedy
from vlmprune.core.types import ImageTokens, Region
from vlmprune.methods.vispruner import remove_duplicates

N_SIDE, D, DV, K = 24, 4096, 1024, 64
BOUND = 400
SYNCS = 2
# CPU forms above the bound, with the count they are held to (docs/benchmarks.md says why)
CPU_OVER = {"vispruner": 600}
# operations that make the host wait for the device
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive"}

PRE_LLM = [n for n in vlmprune.list_methods() if vlmprune.get_method(n, budget=K).llm_layer is None]


class Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops, self.syncs = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.syncs += func.overloadpacket.__name__ in SYNC_OPS
        return func(*args, **(kwargs or {}))


def llava_sized_image(seed: int = 0) -> ImageTokens:
    g = torch.Generator().manual_seed(seed)
    n = N_SIDE * N_SIDE
    return ImageTokens(
        features=torch.randn(n, D, generator=g),
        budget=K,
        regions=[Region(torch.arange(n), (N_SIDE, N_SIDE))],
        grid=(N_SIDE, N_SIDE),
        pre_features=torch.randn(n, DV, generator=g),
        saliency=torch.rand(n, generator=g),
        keys=torch.randn(n, DV, generator=g),
        text=torch.randn(12, D, generator=g),
    )


def count(name: str, image: ImageTokens) -> Counter:
    method = vlmprune.get_method(name, budget=K)
    image = dataclasses.replace(image, budget=method.keep_count(image.num_tokens))
    method.select_images([image])  # warm-up: lazy initialisation is not the steady state
    with torch.no_grad(), Counter() as c:
        kept = method.select_images([image])[0]
    assert kept.indices.numel() == K
    return c


@pytest.mark.parametrize("form", ["accelerator", "cpu"])
@pytest.mark.parametrize("name", PRE_LLM)
def test_selection_dispatches_few_operations_and_syncs(name, form):
    with accelerator_form() if form == "accelerator" else contextlib.nullcontext():
        c = count(name, llava_sized_image())
    assert c.syncs <= SYNCS, f"{name}: {c.syncs} host syncs"
    bound = CPU_OVER.get(name, BOUND) if form == "cpu" else BOUND
    assert c.ops <= bound, f"{name}: {c.ops} operations"


def test_greedy_steps_cost_a_constant():
    """The greedy methods' loops cost a constant per step: 32 more picks cost at most 6 x 32 more
    operations (DPP: five per step; max-min diversity: three)."""
    image = llava_sized_image()
    for name in ("cdpruner", "divprune", "promprune"):
        method = vlmprune.get_method(name, budget=32)
        small = dataclasses.replace(image, budget=32)
        with accelerator_form():
            method.select_images([small])
            with torch.no_grad(), Counter() as c32:
                method.select_images([small])
            c64 = count(name, image)
        assert c64.ops - c32.ops <= 6 * 32, (name, c32.ops, c64.ops)


def test_cpu_form_runs_only_the_coverage_steps_and_picks_the_same():
    """On the CPU PromPrune reads the largest T_cov and runs that many DPP steps, not K: fewer
    operations, one more read, the same kept set as the accelerator form."""
    g = torch.Generator().manual_seed(1)
    n = N_SIDE * N_SIDE
    noise = 0.8 * torch.randn(n, D, generator=g)
    few = torch.randn(n, 8, generator=g) @ torch.randn(8, D, generator=g) + noise
    image = dataclasses.replace(llava_sized_image(), features=few)  # 8 strong directions: T_cov = 43
    method = vlmprune.get_method("promprune", budget=K)
    with accelerator_form():
        fixed = count("promprune", image)
        want = method.select_images([image])[0].indices
    on_cpu = count("promprune", image)
    assert torch.equal(method.select_images([image])[0].indices, want)
    assert (fixed.syncs, on_cpu.syncs) == (1, 2)
    assert on_cpu.ops < fixed.ops


def test_loops_capture_whole_and_pick_the_same():
    """Opting in (`compile_loops`) takes each greedy loop whole (fullgraph: no host sync, no
    data-dependent shape, which a CUDA graph needs); traced on the CPU, the picks equal the eager
    loops' and the pivots agree to rounding. Switched off afterwards."""

    x = torch.nn.functional.normalize(
        torch.randn(1, 200, 32, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    kernel = x @ x.transpose(1, 2)  # (1, N, N)
    dist = 1.0 - kernel
    dist.diagonal(dim1=1, dim2=2).fill_(float("-inf"))
    first = torch.tensor([7])
    features = torch.randn(150, 16, generator=torch.Generator().manual_seed(1))

    def loops():
        return (
            greedy.dpp_steps(kernel.clone(), 24),
            greedy.max_min_steps(dist, first, 24),
            remove_duplicates(features, 20, 8),  # VisPruner's rounds, the CPU form
        )

    def accelerator_rounds():
        with accelerator_form():
            return remove_duplicates(features, 20, 8)

    eager, eager_rounds = loops(), accelerator_rounds()
    try:
        greedy.compile_loops(devices=("cpu",), backend="eager")
        got, got_rounds = loops(), accelerator_rounds()
        assert len(greedy._COMPILED.cache) == 4  # every loop went through torch.compile
    finally:
        greedy.compile_loops(devices=())
    assert torch.equal(got[0][0], eager[0][0]) and torch.equal(got[1], eager[1])
    assert torch.equal(got[2], eager[2]) and torch.equal(got_rounds, eager_rounds)
    assert torch.equal(got_rounds, eager[2])
    torch.testing.assert_close(got[0][1], eager[0][1], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="devices"):
        greedy.compile_loops(devices="cuda")


QWEN_SIDE, QWEN_D, QWEN_DV = 48, 256, 64  # a 1344 x 1344 image on the bench Qwen: N = 2304 > D
# methods allowed an (N, N) buffer at this size, and why (docs/benchmarks.md)
DENSE = {"divprune": "up to 4096 tokens the dense max-min distances (64 MiB) beat the row-wise form"}


class Largest(TorchDispatchMode):
    """Counts host syncs and keeps the largest tensor any operation returns (in elements)."""

    def __init__(self):
        super().__init__()
        self.largest, self.syncs = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.syncs += func.overloadpacket.__name__ in SYNC_OPS
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if torch.is_tensor(t):
                self.largest = max(self.largest, t.numel())
        return out


def qwen_sized_image(seed: int = 0) -> ImageTokens:
    g = torch.Generator().manual_seed(seed)
    n = QWEN_SIDE * QWEN_SIDE
    low = torch.randn(n, 16, generator=g)  # image-like: a few strong directions, then noise
    return ImageTokens(
        features=low @ torch.randn(16, QWEN_D, generator=g) + torch.randn(n, QWEN_D, generator=g),
        budget=511,
        regions=[Region(torch.arange(n), (QWEN_SIDE, QWEN_SIDE))],
        grid=(1, QWEN_SIDE, QWEN_SIDE),
        pre_features=low @ torch.randn(16, QWEN_DV, generator=g) + torch.randn(n, QWEN_DV, generator=g),
        saliency=torch.rand(n, generator=g),
        text=torch.randn(12, QWEN_D, generator=g),
    )


@pytest.mark.parametrize("name", PRE_LLM)
def test_selection_at_high_resolution_syncs_little_and_holds_no_square(name):
    """2304 tokens of width 256 (more tokens than dimensions): at most ``SYNCS`` host syncs in
    either form, and on the CPU no tensor of N x N elements, unless the method is in ``DENSE``."""
    image = qwen_sized_image()
    n = image.num_tokens
    method = vlmprune.get_method(name, ratio=0.222)
    image = dataclasses.replace(image, budget=method.keep_count(n))
    for form in ("accelerator", "cpu"):
        with accelerator_form() if form == "accelerator" else contextlib.nullcontext():
            method.select_images([image])  # warm-up: lazy initialisation is not the steady state
            with torch.no_grad(), Largest() as c:
                kept = method.select_images([image])[0]
        assert kept.indices.numel() == image.budget
        assert c.syncs <= SYNCS, f"{name} ({form} form): {c.syncs} host syncs"
        if form == "cpu" and name not in DENSE:
            assert c.largest < n * n, f"{name}: a tensor of {c.largest} elements (N x N = {n * n})"
