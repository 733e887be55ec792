"""The benchmark loop of ``vlmprune bench`` (see :mod:`vlmprune.apps.bench` for what is measured)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from vlmprune.apps import zoo
from vlmprune.apps.bench.inputs import make_bench_inputs, text_token_count
from vlmprune.apps.bench.models import BenchModel, load_bench_model, parse_image_size
from vlmprune.apps.bench.oracle import build_oracle
from vlmprune.apps.bench.report import build_meta, build_rows, merge_sizes
from vlmprune.apps.bench.timing import LayerLengths, cache_bytes, load_average, stamps, sync
from vlmprune.apps.errors import UsageError
from vlmprune.apps.options import progress as progress_bar
from vlmprune.core.budget import resolve_budget
from vlmprune.core.flops import LLMShape, prefill_flops

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: each repeat times full, pruned and oracle in one of these orders, rotating, so drift hits all alike
ORDERS = (
    ("full", "oracle", "pruned"),
    ("oracle", "pruned", "full"),
    ("pruned", "full", "oracle"),
    ("full", "pruned", "oracle"),
    ("pruned", "oracle", "full"),
    ("oracle", "full", "pruned"),
)


@dataclass
class BenchSettings:
    """What ``vlmprune bench`` measures (defaults = the command line's)."""

    model: str = field(default_factory=lambda: zoo.default_name())
    methods: list[str] | None = None
    budgets: list[int] | None = None
    ratios: list[float] | None = None
    device: str = "cpu"
    dtype: str | None = None
    batch: int = 1
    text_tokens: int = 64
    repeats: int = 5
    warmup: int = 1
    decode_tokens: int = 8
    convention: str = "fastv"
    tiny_arch: bool = False
    image_size: str | None = None  # "W", "WxH", or several, comma-separated: one run per size
    attn: str = "sdpa"
    threads: int | None = None
    seed: int = 0
    video_frames: int = 0  # one video of this many frames per row instead of an image
    #: peak memory per row: CPU rows each in a process of its own (None: on for the CPU)
    memory: bool | None = None


def image_sizes(value) -> list:
    """The image sizes of a ``--image-size`` value: ``[None]`` (the family's default), or each of
    ``"448,896x672,1344"`` / a list, as ``(W, H)``; ``UsageError`` naming ``--image-size``."""
    if value is None:
        return [None]
    parts = value if isinstance(value, (list, tuple)) and not isinstance(value[0], int) else None
    if parts is None:
        parts = (
            [value] if isinstance(value, (list, tuple)) else [p for p in str(value).split(",") if p.strip()]
        )
    if not parts:
        raise UsageError("--image-size", f"expected W or WxH in pixels, got {value!r}")
    return [parse_image_size(p.strip() if isinstance(p, str) else p) for p in parts]


@dataclass
class Bench:
    """The state of one run: the model and inputs, the configurations, and every measurement."""

    settings: BenchSettings
    bm: BenchModel
    device: torch.device
    inputs: dict
    shape: LLMShape
    n_tokens: int
    grid: tuple
    configs: list
    budgets: list | None
    ratios: list | None
    methods: list[str]
    gc: object
    full_lengths: list = field(default_factory=list)
    full_kv: int = 0
    oracles: dict = field(default_factory=dict)
    jobs: list = field(default_factory=list)

    @property
    def batch(self) -> int:
        return int(self.inputs["input_ids"].shape[0])

    def kept_of(self, kind: str, value) -> int:
        return resolve_budget(
            value if kind == "budget" else None, value if kind == "ratio" else None, self.n_tokens
        )

    def flops(self, lengths: list[int]) -> int:
        return self.batch * prefill_flops(self.shape, lengths, self.settings.convention, macs=True)


def default_budgets(adapter, num_tokens: int) -> tuple[list[int] | None, list[float] | None]:
    """Default ``(budgets, ratios)`` for a family whose images have ``num_tokens`` visual tokens:
    the family's ``bench_ratios`` (dynamic resolution), or its ``bench_budgets`` rescaled to
    ``num_tokens`` when that differs from the reference count."""
    if adapter.bench_ratios is not None:
        return None, list(adapter.bench_ratios)
    ref, budgets = adapter.bench_budgets
    if num_tokens == ref:
        return list(budgets), None
    return sorted({max(1, round(b * num_tokens / ref)) for b in budgets}, reverse=True), None


def _gen_config(model, new_tokens: int):
    gc = copy.deepcopy(model.generation_config)
    gc.max_new_tokens = new_tokens
    gc.min_new_tokens = new_tokens
    gc.do_sample = False
    gc.num_beams = 1
    gc.eos_token_id = None
    for attr in ("temperature", "top_p", "top_k"):
        if hasattr(gc, attr):
            setattr(gc, attr, None)
    return gc


def prepare(settings: BenchSettings) -> Bench:
    """Load the model, build the inputs, probe the token count and resolve the configurations."""
    import vlmprune

    if settings.threads:
        torch.set_num_threads(int(settings.threads))
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device", "cuda was asked for but torch.cuda.is_available() is False")
    dtype = DTYPES[settings.dtype] if settings.dtype and settings.dtype != "auto" else None
    bm = load_bench_model(
        settings.model, device=str(device), dtype=dtype, tiny_arch=settings.tiny_arch,
        image_size=settings.image_size, attn=settings.attn, seed=settings.seed,
    )  # fmt: skip
    if settings.video_frames and not bm.adapter.prunes_video:
        raise UsageError("--video-frames", f"{bm.family} does not prune videos")
    inputs = make_bench_inputs(bm, settings.batch, settings.text_tokens, device, settings.video_frames)
    methods = settings.methods or vlmprune.list_methods()
    probe = vlmprune.get_method("random", budget=1)
    with torch.no_grad(), probe(bm.model) as session:
        bm.model(**inputs, logits_to_keep=1)
    n_tokens, grid = int(session.selections[0].num_tokens), tuple(session.selections[0].grid)
    budgets, ratios = settings.budgets, settings.ratios
    if budgets and ratios:
        raise UsageError("--budgets", "give --budgets or --ratios, not both")
    if not budgets and not ratios:
        budgets, ratios = default_budgets(bm.adapter, n_tokens)
    configs = [("budget", int(b)) for b in budgets] if budgets else [("ratio", float(q)) for q in ratios]
    too_big = [v for kind, v in configs if kind == "budget" and v >= n_tokens]
    if too_big:
        raise UsageError(
            "--budgets",
            f"{too_big[0]} keeps every one of the model's {n_tokens} visual tokens; give budgets below {n_tokens}",
        )
    gc = _gen_config(bm.model, 1 + max(0, settings.decode_tokens))
    shape = bm.adapter.llm_shape(bm.model.config)
    return Bench(settings, bm, device, inputs, shape, n_tokens, grid, configs, budgets, ratios, methods, gc)


def _instrumented(b: Bench, call) -> tuple[list[int], int]:
    """Sequence length at each decoder layer and KV-cache bytes after prefill, of one untimed call."""
    rec = LayerLengths(b.bm.model.model.language_model.layers)
    try:
        with torch.no_grad():
            out = call()
    finally:
        rec.remove()
    return rec.lengths, cache_bytes(out.past_key_values)


def instrument(b: Bench, log) -> None:
    """Untimed instrumented passes: layer lengths, KV-cache bytes, oracles, and each method's
    validation (a method failing on this model is reported in its row, not fatal)."""
    import vlmprune

    model, inputs = b.bm.model, b.inputs
    b.full_lengths, b.full_kv = _instrumented(b, lambda: model(**inputs, use_cache=True, logits_to_keep=1))
    for kind, value in b.configs:
        k = b.kept_of(kind, value)
        if k not in b.oracles:
            oracle = build_oracle(model, inputs, k)
            with torch.no_grad():
                o_kwargs = oracle.prepare()
            lengths, kv = _instrumented(b, lambda o=o_kwargs: model(**o, use_cache=True, logits_to_keep=1))
            b.oracles[k] = {"oracle": oracle, "lengths": lengths, "kv": kv}
    for name in b.methods:
        for kind, value in b.configs:
            method = vlmprune.get_method(name, **{kind: value})
            job = {"name": name, "kind": kind, "value": value, "method": method, "k": b.kept_of(kind, value)}
            job.update(runs={"full": [], "pruned": [], "oracle": []}, error=None)
            try:
                with method(model) as session:
                    lengths, kv = _instrumented(b, lambda: model(**inputs, use_cache=True, logits_to_keep=1))
                sel = session.selections[0]
                job.update(lengths=lengths, kv=kv, stage=sel.stage, tokens_before=int(sel.num_tokens))
                job["tokens_after"] = int(sel.kept.numel())
            except Exception as err:
                job["error"] = f"{type(err).__name__}: {err}"
                log(f"[bench] {name} {kind}={value}: {job['error']}")
            b.jobs.append(job)


def run_once(b: Bench, kind: str, method=None, k: int | None = None):
    """A callable running one ``generate`` of ``kind`` (full; oracle at ``k`` tokens; pruned by
    ``method``) on the bench inputs, untimed (:mod:`vlmprune.apps.bench.memory` measures it)."""
    model = b.bm.model
    if kind == "oracle":
        oracle = build_oracle(model, b.inputs, k)
        return lambda: model.generate(**oracle.prepare(), generation_config=b.gc)
    if kind == "pruned":

        def pruned():
            with method(model):
                model.generate(**b.inputs, generation_config=b.gc)

        return pruned
    return lambda: model.generate(**b.inputs, generation_config=b.gc)


def _timed(b: Bench, kind: str, job) -> dict:
    """One timed ``generate`` of ``kind`` (full, pruned or oracle) for ``job``."""
    from transformers import LogitsProcessorList

    device, model = b.device, b.bm.model
    clock = stamps(device)
    procs = LogitsProcessorList([clock])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    sel_ms = None
    if kind == "pruned":
        with job["method"](model) as session:
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            model.generate(**b.inputs, generation_config=b.gc, logits_processor=procs)
        sel_ms = sum(s.selection_ms for s in session.selections)
    elif kind == "oracle":
        c0, t0 = time.process_time(), time.perf_counter()
        with torch.no_grad():
            kwargs = b.oracles[job["k"]]["oracle"].prepare()
        model.generate(**kwargs, generation_config=b.gc, logits_processor=procs)
    else:
        c0, t0 = time.process_time(), time.perf_counter()
        model.generate(**b.inputs, generation_config=b.gc, logits_processor=procs)
    sync(device)
    t = clock.times
    decode = (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else None
    return {
        "prefill_ms": (t[0] - t0) * 1e3,
        "prefill_cpu_ms": (clock.cpu - c0) * 1e3,
        "decode_tok_s": decode,
        "selection_ms": sel_ms,
        "peak_mem_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }


def time_all(b: Bench, show_progress: bool, log) -> tuple[float, list]:
    """Every repeat of every live job, full/pruned/oracle in a rotating order. Returns the elapsed
    seconds and the load average at the start and the end."""
    s = b.settings
    live = [j for j in b.jobs if j["error"] is None]
    bar = (
        progress_bar((s.warmup + s.repeats) * 3 * len(live), f"bench {b.bm.name}") if show_progress else None
    )
    load_start, t_start = load_average(), time.perf_counter()
    try:
        with torch.no_grad():
            for rep in range(s.warmup + s.repeats):
                for j_i, job in enumerate(live):
                    if job["error"] is None:
                        _repeat(b, job, ORDERS[(rep + j_i) % len(ORDERS)], rep >= s.warmup, log)
                    if bar is not None:
                        bar.update(3)
    finally:
        if bar is not None:
            bar.close()
    return time.perf_counter() - t_start, [load_start, load_average()]


def _repeat(b: Bench, job, order, keep: bool, log) -> None:
    got = {}
    try:
        for kind in order:
            got[kind] = _timed(b, kind, job)
    except Exception as err:
        job["error"] = f"{type(err).__name__}: {err}"
        log(f"\n[bench] {job['name']} {job['kind']}={job['value']}: {job['error']}")
        return
    if keep:
        for kind in order:
            job["runs"][kind].append(got[kind])


def measure_memory(b: Bench, rows: list[dict], log) -> None:
    """Peak memory of every CPU row, each configuration in a process of its own
    (:mod:`vlmprune.apps.bench.memory`); CUDA rows keep the allocator's peak of their timed runs."""
    from vlmprune.apps.bench.memory import available, measure

    if b.device.type != "cpu" or not available():
        return
    size = list(b.bm.image_size)
    for row in rows:
        if row.get("error") and row.get("prefill_ms") is None:
            continue
        if row["method"] == "full":
            got = measure(b.settings, size, "full")
        elif row["method"] == "oracle":
            got = measure(b.settings, size, "oracle", config=(row["budget"],))
        else:
            kind = "ratio" if row.get("ratio") is not None else "budget"
            config = (kind, row["ratio"] if kind == "ratio" else row["budget"])
            got = measure(b.settings, size, "pruned", row["method"], config)
        row.update(got)
        if got["peak_mem_bytes"] is None:
            log(f"[bench] peak memory of {row['method']} K={row['budget']} could not be measured")


def memory_child() -> None:
    """The child process of :func:`vlmprune.apps.bench.memory.measure`: the configuration as JSON
    on stdin, its peak memory as one line of JSON on stdout."""
    import json
    import sys

    import vlmprune
    from vlmprune.apps.bench.memory import in_child

    spec = json.loads(sys.stdin.read())
    b = prepare(BenchSettings(**{**spec["settings"], "image_size": spec["image_size"]}))
    kind, config = spec["kind"], spec["config"]
    method = vlmprune.get_method(spec["method"], **{config[0]: config[1]}) if kind == "pruned" else None
    with torch.no_grad():
        got = in_child(run_once(b, kind, method, int(config[0]) if kind == "oracle" else None))
    print(json.dumps(got))


def run_size(settings: BenchSettings, progress: bool, log) -> dict:
    """The benchmark at one image size (``settings.image_size`` a single size or None)."""
    b = prepare(settings)
    instrument(b, log)
    elapsed, loads = time_all(b, progress, log)
    text_len = text_token_count(b.bm.model, b.inputs)
    rows = build_rows(b, text_len)
    if settings.memory or (settings.memory is None and b.device.type == "cpu"):
        measure_memory(b, rows, log)
    return {"meta": build_meta(b, text_len, elapsed, loads), "rows": rows}


def run_bench(settings: BenchSettings, progress: bool = True, log=None) -> dict:
    """Run the benchmark described by ``settings``, once per image size of ``settings.image_size``.
    Returns ``{"meta": {...}, "rows": [...]}``: per size, one row for the full model, one
    ``oracle`` row per budget, one row per (method, budget) (fields:
    :data:`~vlmprune.apps.bench.report.CSV_FIELDS`, plus the raw per-repeat samples under
    ``"samples"``); ``meta`` describes the first size and lists every size under ``"sizes"``."""
    import dataclasses
    import sys

    log = log or (lambda msg: print(msg, file=sys.stderr))
    parts = []
    for size in image_sizes(settings.image_size):
        size_str = None if size is None else f"{size[0]}x{size[1]}"
        parts.append(run_size(dataclasses.replace(settings, image_size=size_str), progress, log))
    return merge_sizes(parts)
