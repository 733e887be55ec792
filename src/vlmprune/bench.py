"""``vlmprune bench``: what pruning buys, measured the same way for every method and budget.

For each (method, budget) the benchmark times three runs of ``model.generate`` side by side, in a
rotating order inside every repeat so that machine drift hits all three alike:

* **full**   - the stock model, no pruning (``N`` visual tokens per image);
* **pruned** - the same call inside ``with method(model):``;
* **oracle** - the stock model fed only ``K`` visual tokens per image, chosen by nobody. Timed
  region: the stock vision tower + projector (``model.model.get_image_features``, as the stock
  forward runs it, so the oracle pays for the encoder like the pruned run does), the first ``K``
  feature rows of each image kept, the text embeddings of the shortened prompt (``K`` placeholders
  per image) looked up and the features scattered in (``masked_scatter``, as stock), for Qwen the
  stock ``get_rope_index`` on the unpruned prompt and a gather of the kept tokens' M-RoPE positions,
  then ``model.generate(inputs_embeds=..., attention_mask=...)`` on the ``L - N + K`` long sequence.
  ``pruned / oracle`` is therefore the overhead of *choosing* (side signals captured in the vision
  tower, the selection itself, the hooks' gathers), ``full / pruned`` the speedup.

Per run: prefill latency = time to first token (from the call of ``generate`` to the moment the
first token's logits are available, measured by a logits processor, with ``torch.cuda.synchronize``
on GPU), decode tokens/s over the next ``--decode-tokens`` tokens (greedy, EOS ignored), peak memory
(``torch.cuda.max_memory_allocated`` on GPU; on CPU no per-run allocator statistics exist, peak RSS
is not measured per run and ``peak_mem_bytes`` is empty: the KV-cache bytes are reported instead),
the selection time (``Selection.selection_ms`` summed over the images of the call). Medians and
spread (quartiles, min, max) over ``--repeats`` after ``--warmup`` untimed repeats; the ratios are
medians of the per-repeat paired ratios.

Accounting (one untimed instrumented forward per configuration): the sequence length each decoder
layer actually saw (forward pre-hooks on the decoder layers), from which the analytic LLM prefill
FLOPs (:mod:`vlmprune.flops`, ``--convention fastv|swiglu|exact``, unit MACs = the "FLOPs" of
FastV-style papers, whole batch) and the layer-averaged equivalent visual tokens follow; in-LLM
methods (FastV, DART) thus get their per-layer schedule. The vision tower FLOPs are reported apart
(unchanged by every method here). KV-cache bytes are read from the cache object after prefill.

Models (``--model``):

* ``tiny-llava`` (default): the built-in small LLaVA-1.5, random weights, built offline. Same
  structure and token count as LLaVA-1.5 (CLIP tower with CLS, patch 14 at 336 px -> 24x24 = 576
  visual tokens, ``vision_feature_layer=-2``, MLP projector, Llama decoder), shrunk so that one
  full prefill (640 tokens, 4.8 GMACs) takes about 0.2 s on one idle CPU core and the whole default
  run a few minutes: CLIP 4 layers x 64 wide, Llama 8 layers, d = 256, m = 688 (the 7B's m/d
  ratio), 4 heads of 64. The LLM dominates prefill compute (vision tower + projector 0.35 GMACs,
  7%), so speedups are visible; the attention term ``2n²d`` weighs more than at d = 4096 and a
  fixed selection cost weighs more against a small LLM, so neither the CPU speedups nor the
  ``pruned / oracle`` overheads here are those of a 7B model. Budgets 192, 128, 64 as in the
  LLaVA-1.5 papers. Default: ``--repeats 5 --warmup 1 --decode-tokens 8``; torch's thread count
  (set ``OMP_NUM_THREADS=1`` on a shared machine).
* ``tiny-llava-next`` (168 px crops, 336x336 image: 5 crops x 144 = 720 content tokens; budgets 160,
  80 = the 640/320 of 2880 scaled), ``tiny-qwen2.5-vl`` / ``tiny-qwen2-vl`` (672x672 image: 24x24 =
  576 merged tokens; ratio 0.222), same LLM size.
* ``testbed`` / ``testbed-qwen`` (or a checkpoint directory): the trained testbed VLMs of
  :mod:`vlmprune.testbed` read from ``./testbed/llava`` / ``./testbed/qwen`` (336x336 images).
* an architecture of :func:`vlmprune.archs.list_archs` (``llava-1.5-7b``, ``llava-next-7b``,
  ``qwen2.5-vl-7b``, ``qwen2-vl-7b``): the real-size model with random weights (speed does not
  depend on weight values), for GPUs; ``--tiny-arch`` builds its shrunk variant (CPU smoke runs).
  Inputs come from the stock image processors and an offline tokenizer (token ids mapped onto the
  architecture's special ids): LLaVA 336 px (576 tokens), LLaVA-NeXT a 672x672 image (5 crops, 2880
  content tokens), Qwen a 672x672 image (576 merged tokens; ``--image-size`` to change).

``--tiny-arch`` on a ``tiny-*`` model builds the test-suite size (:mod:`vlmprune.testing` defaults,
a handful of tokens): for smoke tests only, its timings mean nothing.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

MODELS = ("tiny-llava", "tiny-llava-next", "tiny-qwen2.5-vl", "tiny-qwen2-vl")
_FAMILY = {
    "tiny-llava": "llava",
    "tiny-llava-next": "llava_next",
    "tiny-qwen2.5-vl": "qwen2_5_vl",
    "tiny-qwen2-vl": "qwen2_vl",
    "llava-1.5-7b": "llava",
    "llava-next-7b": "llava_next",
    "qwen2.5-vl-7b": "qwen2_5_vl",
    "qwen2-vl-7b": "qwen2_vl",
}

# The LLM of the built-in bench models: Llama/Qwen2 decoder, 8 layers, d=256, m=688 (m/d of the 7B
# models), 4 heads of 64 (Qwen: 2 KV heads, M-RoPE sections 8:12:12, the 16:24:24 of the 7B halved).
_BENCH_TEXT = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "head_dim": 64,
}
_BENCH_CLIP = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4}
_BENCH_QWEN25_VISION = {
    "depth": 4,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 4,
    "window_size": 112,
}
_BENCH_QWEN2_VISION = {"depth": 4, "embed_dim": 64, "num_heads": 4, "mlp_ratio": 4}

# Default images (W, H) in pixels and default budgets / ratios per model.
_DEFAULT_IMAGE = {
    "tiny-llava": (336, 336),
    "tiny-llava-next": (336, 336),
    "tiny-qwen2.5-vl": (672, 672),
    "tiny-qwen2-vl": (672, 672),
    "llava-1.5-7b": (336, 336),
    "llava-next-7b": (672, 672),
    "qwen2.5-vl-7b": (672, 672),
    "qwen2-vl-7b": (672, 672),
}
# (reference visual tokens, budgets) or (None, ratios); budgets are rescaled when the model's token
# count differs from the reference (``--tiny-arch``).
_DEFAULT_BUDGETS = {
    "llava": (576, (192, 128, 64)),
    "llava_next": (2880, (640, 320)),
}
_DEFAULT_RATIOS = {"qwen2_5_vl": (0.222,), "qwen2_vl": (0.222,)}
_TINY_NEXT_REF = 720  # tiny-llava-next content tokens: its budgets are the 640/320 of 2880 scaled

ORACLE_DEFINITION = (
    "oracle = stock model fed K visual tokens per image (the first K of each image's feature rows), no "
    "selection; timed: vision tower + projector (get_image_features), text-embedding lookup of the "
    "shortened prompt + masked_scatter of the K features, Qwen: stock get_rope_index on the unpruned "
    "prompt + gather of the kept positions, then generate(inputs_embeds=...) on the shortened sequence"
)
MEMORY_NOTE_CPU = (
    "CPU: no per-run allocator statistics; peak RSS is not measured per run (peak_mem_bytes empty); "
    "kv_cache_bytes is read from the cache object after prefill"
)
MEMORY_NOTE_CUDA = "CUDA: peak_mem_bytes = torch.cuda.max_memory_allocated during the run (weights included)"

CSV_FIELDS = (
    "model",
    "device",
    "dtype",
    "method",
    "stage",
    "budget",
    "ratio",
    "tokens_before",
    "tokens_after",
    "seq_len",
    "full_seq_len",
    "prefill_ms",
    "prefill_ms_q1",
    "prefill_ms_q3",
    "prefill_ms_min",
    "prefill_ms_max",
    "full_prefill_ms",
    "full_prefill_ms_q1",
    "full_prefill_ms_q3",
    "oracle_prefill_ms",
    "oracle_prefill_ms_q1",
    "oracle_prefill_ms_q3",
    "pruned_over_oracle",
    "pruned_over_oracle_q1",
    "pruned_over_oracle_q3",
    "full_over_pruned",
    "full_over_pruned_q1",
    "full_over_pruned_q3",
    "prefill_cpu_ms",
    "full_prefill_cpu_ms",
    "oracle_prefill_cpu_ms",
    "pruned_over_oracle_cpu",
    "full_over_pruned_cpu",
    "selection_ms",
    "selection_ms_q1",
    "selection_ms_q3",
    "decode_tok_s",
    "full_decode_tok_s",
    "peak_mem_bytes",
    "full_peak_mem_bytes",
    "kv_cache_bytes",
    "full_kv_cache_bytes",
    "flops",
    "full_flops",
    "flops_reduction",
    "flops_convention",
    "flops_unit",
    "vision_flops",
    "equivalent_tokens",
    "batch",
    "text_tokens",
    "repeats",
    "error",
)


# ---------------------------------------------------------------------------------------------
# Models and inputs
# ---------------------------------------------------------------------------------------------


@dataclass
class BenchModel:
    """A model ready to benchmark: ``model`` (stock HF class, eval mode), ``processor`` (callable
    like the stock processors), ``family`` (``"llava"``, ``"llava_next"``, ``"qwen2_5_vl"``,
    ``"qwen2_vl"``), ``name`` as given to ``--model``, ``image_size`` (W, H) of the input images,
    ``token_map`` {processor token id: model token id} applied to ``input_ids`` (real-size
    architectures use their published special ids, the offline tokenizer its own)."""

    model: object
    processor: object
    family: str
    name: str
    image_size: tuple[int, int]
    token_map: dict = field(default_factory=dict)
    description: str = ""


def _parse_image_size(value) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    text = str(value).lower()
    if "x" in text:
        w, h = text.split("x", 1)
        return int(w), int(h)
    return int(text), int(text)


def _rebuild(small, text_over: dict, vision_over: dict, dtype, device, attn: str, seed: int):
    """The stock class of ``small`` rebuilt from its config with the given text / vision overrides
    (same special token ids, vocabulary and structure), random weights seeded with ``seed``."""
    d = small.config.to_dict()
    d["text_config"] = {**d["text_config"], **copy.deepcopy(text_over)}
    d["vision_config"] = {**d["vision_config"], **copy.deepcopy(vision_over)}
    d["text_config"].pop("layer_types", None)  # rebuilt from num_hidden_layers
    for key in ("dtype", "torch_dtype"):
        d.pop(key, None)
        d["text_config"].pop(key, None)
        d["vision_config"].pop(key, None)
    config = type(small.config).from_dict(d)
    torch.manual_seed(seed)
    with torch.device(device):
        model = type(small)._from_config(config, dtype=dtype, attn_implementation=attn)
    if hasattr(model.model, "image_newline"):  # stock init leaves it at zero (see testing.tiny_llava_next)
        with torch.no_grad():
            model.model.image_newline.normal_()
    return model.eval()


def _set_generation_defaults(model) -> None:
    gc = model.generation_config
    if gc.pad_token_id is None:
        pad = getattr(model.config.get_text_config(), "pad_token_id", None)
        gc.pad_token_id = pad if pad is not None else 0


def load_bench_model(
    name: str = "tiny-llava",
    *,
    device: str = "cpu",
    dtype=None,
    tiny_arch: bool = False,
    image_size=None,
    attn: str = "sdpa",
    seed: int = 0,
) -> BenchModel:
    """Build the model named ``name`` (see the module docstring) and its processor, offline.

    ``dtype`` defaults to float32 on CPU and bfloat16 on CUDA; ``image_size`` (W, H) or ``"WxH"``
    overrides the default input image size.
    """
    from vlmprune import testing
    from vlmprune.archs import arch_info, build_model, list_archs

    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    size = _parse_image_size(image_size)
    if name in _TESTBED_DIRS or os.path.isdir(name):
        return _load_testbed(name, device, dtype, attn, size)
    if name not in _FAMILY:
        raise ValueError(
            f"--model must be one of {', '.join(MODELS)}, an arch of {', '.join(list_archs())}, "
            f"testbed / testbed-qwen, or a testbed checkpoint directory; got {name!r}"
        )
    family = _FAMILY[name]

    if name in MODELS:
        if tiny_arch:  # the test-suite size: a few tokens, for smoke tests only
            kwargs = {"attn": attn, "seed": seed, "dtype": dtype}
            if family.startswith("qwen"):
                size = size or (112, 112)
                kwargs["max_pixels"] = size[0] * size[1]
            model, proc = testing.tiny_model(family, **kwargs)
            model.to(device)
            size = size or ((84, 84) if family == "llava" else (112, 112))
            desc = f"{name} at the test-suite size (vlmprune.testing defaults): smoke runs only"
        else:
            if family == "llava":
                small, proc = testing.tiny_llava(image_size=336, attn=attn)
                vision = dict(_BENCH_CLIP)
            elif family == "llava_next":
                small, proc = testing.tiny_llava_next(image_size=168, attn=attn)
                vision = dict(_BENCH_CLIP)
            else:
                default = _DEFAULT_IMAGE[name]
                w, h = size or default
                builder = testing.tiny_qwen2_5_vl if family == "qwen2_5_vl" else testing.tiny_qwen2_vl
                small, proc = builder(attn=attn, max_pixels=w * h)
                if family == "qwen2_5_vl":
                    vision = {**_BENCH_QWEN25_VISION, "out_hidden_size": _BENCH_TEXT["hidden_size"]}
                else:
                    vision = {**_BENCH_QWEN2_VISION, "hidden_size": _BENCH_TEXT["hidden_size"]}
            text = dict(_BENCH_TEXT)
            if family.startswith("qwen"):
                text["num_key_value_heads"] = 2
                rope = dict(small.config.text_config.to_dict().get("rope_parameters") or {})
                rope["mrope_section"] = [8, 12, 12]
                text["rope_parameters"] = rope
            else:
                text["num_key_value_heads"] = _BENCH_TEXT["num_attention_heads"]
            model = _rebuild(small, text, vision, dtype, device, attn, seed)
            model.generation_config = small.generation_config
            size = size or _DEFAULT_IMAGE[name]
            desc = (
                f"{name}: built-in bench model, random weights; LLM {text['num_hidden_layers']} layers, "
                f"d={text['hidden_size']}, m={text['intermediate_size']}, {text['num_attention_heads']} heads"
            )
        _set_generation_defaults(model)
        return BenchModel(model, proc, family, name, size, {}, desc)

    # real-size architecture (random weights), or its shrunk variant
    info = arch_info(name)
    model = build_model(name, dtype=dtype, device=device, attn_implementation=attn, tiny=tiny_arch, seed=seed)
    config = model.config
    vcfg = config.vision_config
    if family == "llava":
        _, proc = testing.tiny_llava(image_size=int(vcfg.image_size), attn=attn)
        size = size or (int(vcfg.image_size), int(vcfg.image_size))
    elif family == "llava_next":
        crop = int(vcfg.image_size)
        _, proc = testing.tiny_llava_next(image_size=crop, attn=attn)
        proc.image_processor.image_grid_pinpoints = [list(p) for p in config.image_grid_pinpoints]
        size = size or (2 * crop, 2 * crop)
    else:
        default = (112, 112) if tiny_arch else _DEFAULT_IMAGE[name]
        size = size or default
        builder = testing.tiny_qwen2_5_vl if family == "qwen2_5_vl" else testing.tiny_qwen2_vl
        _, proc = builder(attn=attn, max_pixels=size[0] * size[1])
    tok = proc.tokenizer
    pairs = [("<image>", "image_token_id")]
    if family.startswith("qwen"):
        pairs = [
            ("<|image_pad|>", "image_token_id"),
            ("<|video_pad|>", "video_token_id"),
            ("<|vision_start|>", "vision_start_token_id"),
            ("<|vision_end|>", "vision_end_token_id"),
        ]
    token_map = {}
    for token, attr in pairs:
        src, dst = tok.convert_tokens_to_ids(token), getattr(config, attr, None)
        if dst is not None and src != dst:
            token_map[int(src)] = int(dst)
    _set_generation_defaults(model)
    desc = f"{info['hub_id']} architecture, random weights" + (" (shrunk: --tiny-arch)" if tiny_arch else "")
    return BenchModel(model, proc, family, name, size, token_map, desc)


_TESTBED_DIRS = {"testbed": "testbed/llava", "testbed-llava": "testbed/llava", "testbed-qwen": "testbed/qwen"}


def _load_testbed(name: str, device, dtype, attn: str, size) -> BenchModel:
    """A trained testbed checkpoint (``vlmprune.testbed``): ``testbed`` / ``testbed-llava`` /
    ``testbed-qwen`` read ``./testbed/llava`` / ``./testbed/qwen``; any other directory is loaded
    as given. Input images 336x336 by default (the testbed's scenes)."""
    path = _TESTBED_DIRS.get(name, name)
    if not os.path.isdir(path):
        raise ValueError(
            f"--model {name}: no testbed checkpoint at {path!r} (train one with `python -m vlmprune.testbed.train`, "
            "or pass the checkpoint directory as --model)"
        )
    from vlmprune.testbed.model import load_testbed

    model, proc, _ = load_testbed(path, dtype=dtype, device=device, attn=attn)
    family = {"llava": "llava", "qwen2_5_vl": "qwen2_5_vl", "qwen2_vl": "qwen2_vl"}.get(
        model.config.model_type
    )
    if family is None:
        raise ValueError(f"{path}: unsupported testbed model_type {model.config.model_type!r}")
    _set_generation_defaults(model)
    return BenchModel(
        model, proc, family, name, size or (336, 336), {}, f"testbed checkpoint {path} (trained weights)"
    )


def make_bench_inputs(bm: BenchModel, batch: int = 1, text_tokens: int = 64, device="cpu"):
    """Inputs of ``batch`` identical-length rows: one image each (``bm.image_size``, different
    content per row) and a question sized so that the prompt holds about ``text_tokens`` non-image
    tokens (template included; the exact count is ``text_token_count(inputs)``).

    Returns a ``BatchFeature`` on ``device``: ``input_ids`` (B, L), ``attention_mask`` (B, L),
    ``pixel_values`` and the family's image metadata.
    """
    from vlmprune.testing import _CORPUS, make_inputs, random_image

    words = _CORPUS.split()
    images = [[random_image(100 + i, bm.image_size)] for i in range(batch)]
    image_id = _image_token_id(bm)

    def build(n_words: int):
        q = " ".join(words[i % len(words)] for i in range(n_words)) or "?"
        inputs = make_inputs(bm.family, bm.processor, [q] * batch, images)
        return inputs, int((inputs["input_ids"][0] != _proc_image_id(bm)).sum())

    lo, hi = 1, 1
    while build(hi)[1] < text_tokens and hi < 8192:
        lo, hi = hi, hi * 2
    while lo < hi:  # smallest word count reaching text_tokens
        mid = (lo + hi) // 2
        if build(mid)[1] < text_tokens:
            lo = mid + 1
        else:
            hi = mid
    inputs, count = build(lo)
    if count > text_tokens:  # BPE merges overshoot: drop the surplus question tokens after the image
        keep = torch.ones(inputs["input_ids"].shape[1], dtype=torch.bool)
        img = torch.nonzero(inputs["input_ids"][0] == _proc_image_id(bm)).flatten()
        start = int(img[-1]) + 2
        keep[start : start + count - text_tokens] = False
        for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
            if key in inputs:
                inputs[key] = inputs[key][:, keep]
    ids = inputs["input_ids"].clone()
    for src, dst in bm.token_map.items():
        ids[inputs["input_ids"] == src] = dst
    inputs["input_ids"] = ids
    assert (ids == image_id).any(), "no image placeholder in the prompt"
    return inputs.to(device)


def _proc_image_id(bm: BenchModel) -> int:
    token = "<|image_pad|>" if bm.family.startswith("qwen") else "<image>"
    return int(bm.processor.tokenizer.convert_tokens_to_ids(token))


def _image_token_id(bm_or_model) -> int:
    model = bm_or_model.model if isinstance(bm_or_model, BenchModel) else bm_or_model
    return int(model.config.image_token_id)


def text_token_count(model, inputs) -> int:
    """Non-image tokens of the first row (the ``text_tokens`` of the FLOPs accounting)."""
    ids = inputs["input_ids"][0]
    return int((ids != _image_token_id(model)).sum())


# ---------------------------------------------------------------------------------------------
# Oracle
# ---------------------------------------------------------------------------------------------


@dataclass
class Oracle:
    """The stock model fed only ``k`` visual tokens per image (the first ``k`` feature rows).

    ``index`` (B, L') positions of the unpruned prompt that survive (every text token, the first
    ``k`` placeholders of each image); ``input_ids`` / ``attention_mask`` (B, L') the shortened
    prompt (``k`` placeholders per image); ``vision_kwargs`` the stock ``get_image_features``
    arguments; ``full_inputs`` the unpruned inputs (Qwen's ``get_rope_index`` needs them).
    """

    model: object
    k: int
    index: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    vision_kwargs: dict
    full_inputs: dict
    family: str

    @property
    def visual_tokens(self) -> torch.Tensor:
        """(B,) visual tokens per row of the shortened prompt."""
        return (self.input_ids == _image_token_id(self.model)).sum(dim=1)

    def prepare(self) -> dict:
        """The timed part before the LLM: vision tower + projector, the first ``k`` rows of each
        image, embeddings of the shortened prompt with the features scattered in, positions.
        Returns ``generate``/``forward`` kwargs: ``inputs_embeds`` (B, L', D), ``attention_mask``
        (B, L'), and for Qwen ``position_ids`` (3, B, L')."""
        base = self.model.model
        feats = base.get_image_features(**self.vision_kwargs).pooler_output  # per image (n_i, D)
        kept = torch.cat([f[: self.k] for f in feats], dim=0)  # (B*k, D)
        embeds = base.get_input_embeddings()(self.input_ids)  # (B, L', D)
        mask = (self.input_ids == _image_token_id(self.model)).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(mask, kept.to(embeds.dtype))
        out = {"inputs_embeds": embeds, "attention_mask": self.attention_mask}
        if self.family.startswith("qwen"):
            fi = self.full_inputs
            pos, _ = base.get_rope_index(
                fi["input_ids"],
                mm_token_type_ids=fi["mm_token_type_ids"],
                image_grid_thw=fi["image_grid_thw"],
                attention_mask=fi["attention_mask"],
            )  # (3, B, L)
            out["position_ids"] = pos.gather(2, self.index.unsqueeze(0).expand(pos.shape[0], -1, -1))
        return out


def build_oracle(model, inputs, k: int, family: str) -> Oracle:
    """The :class:`Oracle` keeping ``k`` visual tokens per image of ``inputs`` (one or more images
    per row, each a contiguous placeholder run; every row must shorten to the same length)."""
    ids = inputs["input_ids"]
    image_id = _image_token_id(model)
    rows = []
    for b in range(ids.shape[0]):
        is_img = ids[b] == image_id
        keep = ~is_img
        pos = torch.nonzero(is_img).flatten()
        if pos.numel():
            starts = torch.cat([pos[:1], pos[1:][pos[1:] != pos[:-1] + 1]])  # first placeholder of each run
            ends = torch.cat([pos[:-1][pos[1:] != pos[:-1] + 1], pos[-1:]])
            for s, e in zip(starts.tolist(), ends.tolist()):
                keep[s : min(e + 1, s + k)] = True
        rows.append(torch.nonzero(keep).flatten())
    lengths = {int(r.numel()) for r in rows}
    if len(lengths) != 1:
        raise ValueError(
            "the oracle needs rows that shorten to the same length (same images and prompt per row)"
        )
    index = torch.stack(rows)  # (B, L')
    mask = inputs.get("attention_mask")
    short_mask = mask.gather(1, index) if mask is not None else torch.ones_like(index)
    vision_kwargs = {"pixel_values": inputs["pixel_values"]}
    for key in ("image_sizes", "image_grid_thw"):
        if inputs.get(key) is not None:
            vision_kwargs[key] = inputs[key]
    return Oracle(model, k, index, ids.gather(1, index), short_mask, vision_kwargs, dict(inputs), family)


# ---------------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stamps(device):
    """A logits processor recording (after a device sync) when each step's logits exist:
    ``times[0]`` is the end of prefill (first token), ``times[i]`` the end of decode step ``i``;
    ``cpu`` the process CPU time at the first step (``time.process_time``)."""
    from transformers import LogitsProcessor

    class _Stamps(LogitsProcessor):
        def __init__(self):
            self.times: list[float] = []
            self.cpu: float | None = None

        def __call__(self, input_ids, scores):
            _sync(device)
            self.times.append(time.perf_counter())
            if self.cpu is None:
                self.cpu = time.process_time()
            return scores

    return _Stamps()


def _cache_bytes(cache) -> int:
    """Bytes held by a transformers cache object (keys + values of every layer)."""
    total = 0
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if torch.is_tensor(t):
                    total += t.numel() * t.element_size()
        return total
    for name in ("key_cache", "value_cache"):  # older caches
        for t in getattr(cache, name, []) or []:
            if torch.is_tensor(t):
                total += t.numel() * t.element_size()
    return total


class _LayerLengths:
    """Forward pre-hooks on the decoder layers recording the sequence length each layer sees
    (registered after a pruning session's own hooks, so they see the shortened hidden states)."""

    def __init__(self, layers):
        self.lengths: list[int] = []
        self._handles = [layer.register_forward_pre_hook(self._hook, with_kwargs=True) for layer in layers]

    def _hook(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self.lengths.append(int(hidden.shape[1]))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3) of ``values`` (inclusive method; one value -> itself three times)."""
    vals = sorted(values)
    if len(vals) == 1:
        return vals[0], vals[0], vals[0]
    q1, q2, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    return q1, q2, q3


def _summary(values: list[float], prefix: str) -> dict:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {
            prefix: None,
            f"{prefix}_q1": None,
            f"{prefix}_q3": None,
            f"{prefix}_min": None,
            f"{prefix}_max": None,
        }
    q1, med, q3 = _quartiles(vals)
    return {
        prefix: med,
        f"{prefix}_q1": q1,
        f"{prefix}_q3": q3,
        f"{prefix}_min": min(vals),
        f"{prefix}_max": max(vals),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU: {name}, {torch.get_num_threads()} torch thread(s), {os.cpu_count()} logical cores visible"


def _load_average() -> float | None:
    """1-minute system load average (None where unavailable): how shared the machine was."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


class _Progress:
    """tqdm on stderr when installed, else a plain counter; silent when ``enabled`` is False."""

    def __init__(self, total: int, enabled: bool = True, desc: str = "bench"):
        self.total, self.n, self.enabled, self.desc = total, 0, enabled, desc
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, file=sys.stderr, unit="run", dynamic_ncols=True)
            except ImportError:
                self._bar = None

    def update(self, n: int = 1, note: str = "") -> None:
        self.n += n
        if not self.enabled:
            return
        if self._bar is not None:
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(n)
        elif self.n == self.total or self.n % max(1, self.total // 50) == 0:
            print(f"\r[{self.desc}] {self.n}/{self.total} {note:<30}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            print(file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


@dataclass
class BenchSettings:
    """What ``vlmprune bench`` measures (defaults = the command line's)."""

    model: str = "tiny-llava"
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
    image_size: str | None = None
    attn: str = "sdpa"
    threads: int | None = None
    seed: int = 0


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def default_budgets(
    family: str, num_tokens: int, name: str = ""
) -> tuple[list[int] | None, list[float] | None]:
    """Default ``(budgets, ratios)`` for a model whose images have ``num_tokens`` visual tokens:
    LLaVA 192/128/64 of 576, LLaVA-NeXT 640/320 of 2880 (rescaled to ``num_tokens`` when it differs,
    e.g. ``tiny-llava-next`` 160/80 of 720), Qwen ratio 0.222."""
    if family in _DEFAULT_RATIOS:
        return None, list(_DEFAULT_RATIOS[family])
    ref, budgets = _DEFAULT_BUDGETS[family]
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


def _flops_for(shape, lengths: list[int], batch: int, convention: str) -> int:
    from vlmprune.flops import prefill_flops

    return batch * prefill_flops(shape, lengths, convention, macs=True)


def _vision_flops(model, inputs, family: str) -> int | None:
    from vlmprune.flops import VisionShape, vision_flops

    try:
        vshape = VisionShape.from_config(model.config)
        if family.startswith("qwen"):
            return vision_flops(vshape, grid_thw=inputs["image_grid_thw"])
        pv = inputs["pixel_values"]
        crops = pv.shape[0] * (pv.shape[1] if pv.dim() == 5 else 1)
        return vision_flops(vshape, num_crops=crops)
    except Exception:  # pragma: no cover - accounting is best effort for unknown towers
        return None


def run_bench(settings: BenchSettings, progress: bool = True, log=None) -> dict:
    """Run the benchmark described by ``settings``. Returns ``{"meta": {...}, "rows": [...]}``:
    one row for the full model, one ``oracle`` row per budget, one row per (method, budget)
    (fields: :data:`CSV_FIELDS`, plus the raw per-repeat samples under ``"samples"``)."""
    import vlmprune
    from vlmprune.flops import LLMShape, equivalent_tokens

    log = log or (lambda msg: print(msg, file=sys.stderr))
    if settings.threads:
        torch.set_num_threads(int(settings.threads))
    device = torch.device(settings.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch.cuda.is_available() is False")
    dtype = _DTYPES[settings.dtype] if settings.dtype else None
    bm = load_bench_model(
        settings.model,
        device=str(device),
        dtype=dtype,
        tiny_arch=settings.tiny_arch,
        image_size=settings.image_size,
        attn=settings.attn,
        seed=settings.seed,
    )
    model, family = bm.model, bm.family
    inputs = make_bench_inputs(bm, settings.batch, settings.text_tokens, device)
    batch = int(inputs["input_ids"].shape[0])
    shape = LLMShape.from_config(model.config)
    layers = model.model.language_model.layers
    methods = settings.methods or vlmprune.list_methods()
    for name in methods:
        vlmprune.registry.method_class(name)  # KeyError listing the known ones

    # probe: visual tokens per image and grid
    probe = vlmprune.get_method("random", budget=1)
    with torch.no_grad(), probe(model):
        model(**inputs, logits_to_keep=1)
    n_tokens = int(probe.last_selection[0].num_tokens)
    grid = tuple(probe.last_selection[0].grid)
    budgets, ratios = settings.budgets, settings.ratios
    if budgets and ratios:
        raise ValueError("give --budgets or --ratios, not both")
    if not budgets and not ratios:
        budgets, ratios = default_budgets(family, n_tokens, bm.name)
    configs = [("budget", int(b)) for b in budgets] if budgets else [("ratio", float(q)) for q in ratios]
    from vlmprune.core.base import resolve_budget

    def kept_of(kind, value):
        return resolve_budget(
            value if kind == "budget" else None, value if kind == "ratio" else None, n_tokens
        )

    gc = _gen_config(model, 1 + max(0, settings.decode_tokens))
    text_len = text_token_count(model, inputs)
    full_len = int(inputs["input_ids"].shape[1])
    vflops = _vision_flops(model, inputs, family)

    # -- untimed instrumented passes: layer lengths, KV-cache bytes, and validation -------------
    def instrumented(call) -> tuple[list[int], int]:
        rec = _LayerLengths(layers)
        try:
            with torch.no_grad():
                out = call()
        finally:
            rec.remove()
        return rec.lengths, _cache_bytes(out.past_key_values)

    full_lengths, full_kv = instrumented(lambda: model(**inputs, use_cache=True, logits_to_keep=1))
    full_flops = _flops_for(shape, full_lengths, batch, settings.convention)
    oracles = {}
    for kind, value in configs:
        k = kept_of(kind, value)
        if k not in oracles:
            oracle = build_oracle(model, inputs, k, family)
            with torch.no_grad():
                o_kwargs = oracle.prepare()
            lengths, kv = instrumented(
                lambda o_kwargs=o_kwargs: model(**o_kwargs, use_cache=True, logits_to_keep=1)
            )
            oracles[k] = {"oracle": oracle, "lengths": lengths, "kv": kv, "runs": [], "full": []}

    jobs = []
    for name in methods:
        for kind, value in configs:
            method = vlmprune.get_method(name, **{kind: value})
            job = {
                "name": name,
                "kind": kind,
                "value": value,
                "method": method,
                "k": kept_of(kind, value),
                "runs": {"full": [], "pruned": [], "oracle": []},
                "error": None,
            }
            try:
                with method(model):
                    lengths, kv = instrumented(lambda: model(**inputs, use_cache=True, logits_to_keep=1))
                sels = method.last_selection
                job.update(
                    lengths=lengths,
                    kv=kv,
                    stage=sels[0].stage if sels else "none",
                    tokens_before=int(sels[0].num_tokens),
                    tokens_after=int(sels[0].kept.numel()),
                )
            except Exception as err:  # a method failing on this model is reported, not fatal
                job["error"] = f"{type(err).__name__}: {err}"
                log(f"[bench] {name} {kind}={value}: {job['error']}")
            jobs.append(job)

    # -- timed runs ----------------------------------------------------------------------------
    def timed(kind: str, job) -> dict:
        from transformers import LogitsProcessorList

        stamps = _stamps(device)

        procs = LogitsProcessorList([stamps])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        if kind == "pruned":
            method = job["method"]
            with method(model):
                _sync(device)
                c0, t0 = time.process_time(), time.perf_counter()
                model.generate(**inputs, generation_config=gc, logits_processor=procs)
            sel_ms = sum(s.selection_ms for s in method.last_selection)
        elif kind == "oracle":
            oracle = oracles[job["k"]]["oracle"]
            c0, t0 = time.process_time(), time.perf_counter()
            with torch.no_grad():
                kwargs = oracle.prepare()
            model.generate(**kwargs, generation_config=gc, logits_processor=procs)
            sel_ms = None
        else:
            c0, t0 = time.process_time(), time.perf_counter()
            model.generate(**inputs, generation_config=gc, logits_processor=procs)
            sel_ms = None
        _sync(device)
        t = stamps.times
        ttft = (t[0] - t0) * 1e3
        cpu = (stamps.cpu - c0) * 1e3
        decode = (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else None
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        return {
            "prefill_ms": ttft,
            "prefill_cpu_ms": cpu,
            "decode_tok_s": decode,
            "selection_ms": sel_ms,
            "peak_mem_bytes": peak,
        }

    orders = [
        ("full", "oracle", "pruned"),
        ("oracle", "pruned", "full"),
        ("pruned", "full", "oracle"),
        ("full", "pruned", "oracle"),
        ("pruned", "oracle", "full"),
        ("oracle", "full", "pruned"),
    ]
    live = [j for j in jobs if j["error"] is None]
    total = (settings.warmup + settings.repeats) * 3 * len(live)
    bar = _Progress(total, enabled=progress, desc=f"bench {bm.name}")
    load_start = _load_average()
    t_start = time.perf_counter()
    try:
        with torch.no_grad():
            for rep in range(settings.warmup + settings.repeats):
                timed_rep = rep >= settings.warmup
                for j_i, job in enumerate(live):
                    if job["error"] is not None:
                        bar.update(3)
                        continue
                    order = orders[(rep + j_i) % len(orders)]
                    got = {}
                    try:
                        for kind in order:
                            got[kind] = timed(kind, job)
                    except Exception as err:
                        job["error"] = f"{type(err).__name__}: {err}"
                        log(f"\n[bench] {job['name']} {job['kind']}={job['value']}: {job['error']}")
                        bar.update(3)
                        continue
                    if timed_rep:
                        for kind in order:
                            job["runs"][kind].append(got[kind])
                    bar.update(3, note=f"{job['name']} K={job['k']}")
    finally:
        bar.close()
    elapsed = time.perf_counter() - t_start

    # -- rows ----------------------------------------------------------------------------------
    common = {
        "model": bm.name,
        "device": _device_name(device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "flops_convention": settings.convention,
        "flops_unit": "MACs (paper 'FLOPs'), LLM prefill, whole batch",
        "vision_flops": vflops,
        "batch": batch,
        "text_tokens": text_len,
        "repeats": settings.repeats,
        "full_seq_len": full_len,
    }

    def col(runs, key):
        return [r[key] for r in runs if r.get(key) is not None]

    def median_of(runs, key):
        vals = col(runs, key)
        return statistics.median(vals) if vals else None

    def paired(num, den, key):
        return [a[key] / b[key] for a, b in zip(num, den) if a.get(key) and b.get(key)]

    def peak(runs):
        vals = col(runs, "peak_mem_bytes")
        return max(vals) if vals else None

    def timing(pruned: list, full: list, oracle: list | None) -> dict:
        """Timing fields of a row from its runs (``pruned``, ``full``, ``oracle``: per-repeat
        dicts of :func:`timed`, index i of each from the same repeat)."""
        out = {**_summary(col(pruned, "prefill_ms"), "prefill_ms")}
        out.update({f"full_{k}": v for k, v in _summary(col(full, "prefill_ms"), "prefill_ms").items()})
        out["prefill_cpu_ms"] = median_of(pruned, "prefill_cpu_ms")
        out["full_prefill_cpu_ms"] = median_of(full, "prefill_cpu_ms")
        for name, (num, den) in {
            "full_over_pruned": (full, pruned),
            "pruned_over_oracle": (pruned, oracle),
        }.items():
            if den is None:
                continue
            q1, med, q3 = _quartiles(paired(num, den, "prefill_ms")) if num else (None, None, None)
            out.update({name: med, f"{name}_q1": q1, f"{name}_q3": q3})
            cpu = paired(num, den, "prefill_cpu_ms")
            out[f"{name}_cpu"] = statistics.median(cpu) if cpu else None
        if oracle is not None:
            out.update(
                {f"oracle_{k}": v for k, v in _summary(col(oracle, "prefill_ms"), "prefill_ms").items()}
            )
            out["oracle_prefill_cpu_ms"] = median_of(oracle, "prefill_cpu_ms")
        out.update(
            decode_tok_s=median_of(pruned, "decode_tok_s"),
            full_decode_tok_s=median_of(full, "decode_tok_s"),
            peak_mem_bytes=peak(pruned),
            full_peak_mem_bytes=peak(full),
        )
        out["samples"] = {
            "prefill_ms": col(pruned, "prefill_ms"),
            "full_prefill_ms": col(full, "prefill_ms"),
            "oracle_prefill_ms": col(oracle or [], "prefill_ms"),
            "prefill_cpu_ms": col(pruned, "prefill_cpu_ms"),
            "full_prefill_cpu_ms": col(full, "prefill_cpu_ms"),
            "oracle_prefill_cpu_ms": col(oracle or [], "prefill_cpu_ms"),
        }
        return out

    def accounting(lengths: list[int], kv: int) -> dict:
        flops = _flops_for(shape, lengths, batch, settings.convention)
        return {
            "seq_len": lengths[-1] if lengths else None,
            "kv_cache_bytes": kv,
            "full_kv_cache_bytes": full_kv,
            "flops": flops,
            "full_flops": full_flops,
            "flops_reduction": 1 - flops / full_flops,
            "equivalent_tokens": equivalent_tokens(lengths, text_len),
            "tokens_per_layer": lengths,
        }

    common = {**dict.fromkeys(CSV_FIELDS), **common}
    all_full = [r for j in live for r in j["runs"]["full"]]
    rows = [
        {
            **common,
            "method": "full",
            "stage": "none",
            "budget": n_tokens,
            "ratio": 1.0,
            "tokens_before": n_tokens,
            "tokens_after": n_tokens,
            **timing(all_full, all_full, None),
            **accounting(full_lengths, full_kv),
        }
    ]
    seen_oracle = set()
    for kind, value in configs:
        k = kept_of(kind, value)
        if k in seen_oracle:
            continue
        seen_oracle.add(k)
        o = oracles[k]
        o_jobs = [j for j in live if j["k"] == k]
        o_runs = [r for j in o_jobs for r in j["runs"]["oracle"]]
        f_runs = [r for j in o_jobs for r in j["runs"]["full"]]
        rows.append(
            {
                **common,
                "method": "oracle",
                "stage": "oracle",
                "budget": k,
                "ratio": value if kind == "ratio" else None,
                "tokens_before": n_tokens,
                "tokens_after": int(o["oracle"].visual_tokens[0]),
                **timing(o_runs, f_runs, o_runs),
                **accounting(o["lengths"], o["kv"]),
            }
        )

    for job in jobs:
        row = {
            **common,
            "method": job["name"],
            "budget": job["k"],
            "ratio": job["value"] if job["kind"] == "ratio" else None,
            "error": job["error"],
            "tokens_before": job.get("tokens_before", n_tokens),
        }
        runs = job["runs"]
        if job["error"] is not None and not runs["pruned"]:
            rows.append(row)
            continue
        sel = col(runs["pruned"], "selection_ms")
        selq = _quartiles(sel) if sel else (None, None, None)
        row.update(
            {
                "stage": job["stage"],
                "tokens_after": job["tokens_after"],
                **timing(runs["pruned"], runs["full"], runs["oracle"]),
                **accounting(job["lengths"], job["kv"]),
                "selection_ms": selq[1],
                "selection_ms_q1": selq[0],
                "selection_ms_q3": selq[2],
            }
        )
        row["samples"]["selection_ms"] = sel
        rows.append(row)

    meta = {
        "model": bm.name,
        "model_description": bm.description,
        "family": family,
        "model_class": type(model).__name__,
        "device": _device_name(device),
        "device_type": device.type,
        "dtype": str(model.dtype).replace("torch.", ""),
        "attn_implementation": settings.attn,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "vlmprune": vlmprune.__version__,
        "threads": torch.get_num_threads(),
        "batch": batch,
        "image_size": list(bm.image_size),
        "visual_tokens_per_image": n_tokens,
        "grid": list(grid),
        "text_tokens": text_len,
        "prompt_length": full_len,
        "llm": {
            "layers": shape.num_layers,
            "d": shape.d,
            "m": shape.m,
            "heads": shape.num_heads,
            "kv_heads": shape.num_kv_heads,
            "head_dim": shape.head_dim,
        },
        "repeats": settings.repeats,
        "warmup": settings.warmup,
        "decode_tokens": settings.decode_tokens,
        "flops_convention": settings.convention,
        "flops_unit": "MACs (the 'FLOPs' of FastV-style papers; true FLOPs are 2x), LLM prefill of the whole batch",
        "vision_flops": vflops,
        "oracle": ORACLE_DEFINITION,
        "memory": MEMORY_NOTE_CUDA if device.type == "cuda" else MEMORY_NOTE_CPU,
        "prefill": "time to first token: generate() call -> first logits (logits processor, synchronised), "
        "median over repeats; ratios = median of per-repeat paired ratios (full/pruned/oracle "
        "interleaved in a rotating order inside each repeat)",
        "budgets": budgets,
        "ratios": ratios,
        "methods": methods,
        "elapsed_s": round(elapsed, 1),
        "load_average_start_end": [load_start, _load_average()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    return {"meta": meta, "rows": rows}


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _fmt(v, spec: str, dash: str = "-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return dash
    return format(v, spec)


def format_table(result: dict) -> str:
    """The result as a text table (one line per row; the accounting in the header)."""
    meta, rows = result["meta"], result["rows"]
    head = (
        f"{'method':<10} {'K':>5} {'tokens':>9} {'prefill ms [IQR]':>20} {'full ms':>8} {'oracle ms':>9} "
        f"{'pr/orc':>6} {'(cpu)':>6} {'speedup':>7} {'sel ms':>7} {'dec t/s':>7} {'KV MB':>6} {'peak MB':>7} "
        f"{'FLOPs G':>8} {'red.':>6} {'eq.tok':>6}"
    )
    lines = [
        f"vlmprune bench: {meta['model']} ({meta['model_class']}, {meta['dtype']}, {meta['attn_implementation']}) "
        f"on {meta['device']}",
        f"batch {meta['batch']}, {meta['visual_tokens_per_image']} visual tokens/image (grid {meta['grid']}), "
        f"{meta['text_tokens']} text tokens, prompt {meta['prompt_length']}; {meta['repeats']} repeats after "
        f"{meta['warmup']} warm-up; decode {meta['decode_tokens']} tokens; load average (start, end) "
        f"{meta.get('load_average_start_end')}",
        f"FLOPs: {meta['flops_convention']} convention, {meta['flops_unit']}; vision tower "
        f"{_fmt(meta['vision_flops'] and meta['vision_flops'] / 1e9, '.2f')} G (apart, unchanged by pruning)",
        head,
        "-" * len(head),
    ]
    for r in rows:
        if r.get("error") and r.get("prefill_ms") is None:
            lines.append(f"{r['method']:<10} {r['budget']:>5}  ERROR {r['error'][:100]}")
            continue
        iqr = f"{_fmt(r.get('prefill_ms'), '.1f')} [{_fmt(r.get('prefill_ms_q1'), '.1f')}-{_fmt(r.get('prefill_ms_q3'), '.1f')}]"
        tokens = f"{r['tokens_before']}->{r['tokens_after']}"
        kv = r.get("kv_cache_bytes")
        pk = r.get("peak_mem_bytes")
        lines.append(
            f"{r['method']:<10} {r['budget']:>5} {tokens:>9} {iqr:>20} {_fmt(r.get('full_prefill_ms'), '.1f'):>8} "
            f"{_fmt(r.get('oracle_prefill_ms'), '.1f'):>9} {_fmt(r.get('pruned_over_oracle'), '.3f'):>6} "
            f"{_fmt(r.get('pruned_over_oracle_cpu'), '.3f'):>6} "
            f"{_fmt(r.get('full_over_pruned'), '.2f'):>7} {_fmt(r.get('selection_ms'), '.2f'):>7} "
            f"{_fmt(r.get('decode_tok_s'), '.0f'):>7} {_fmt(kv and kv / 2**20, '.2f'):>6} "
            f"{_fmt(pk and pk / 2**20, '.0f'):>7} {_fmt(r.get('flops') and r['flops'] / 1e9, '.2f'):>8} "
            f"{_fmt(r.get('flops_reduction') and 100 * r['flops_reduction'], '.1f') + '%':>6} "
            f"{_fmt(r.get('equivalent_tokens'), '.0f'):>6}"
        )
    lines.append(
        "pr/orc = pruned/oracle prefill (overhead of choosing), speedup = full/pruned prefill: medians of "
        "per-repeat paired ratios of wall-clock time to first token; (cpu) = the same ratio of process CPU "
        "time (robust to other processes on a shared CPU). " + meta["memory"] + "."
    )
    lines.append(meta["oracle"] + ".")
    return "\n".join(lines)


def write_results(result: dict, out_dir, plot: bool = True) -> dict:
    """Write ``bench.json`` (meta + rows with per-repeat samples), ``bench.csv`` (the scalar
    fields of :data:`CSV_FIELDS`) and, when matplotlib is installed, ``bench.png``. Returns
    ``{"json": path, "csv": path, "png": path or None}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "csv": out / "bench.csv", "png": None}
    paths["json"].write_text(json.dumps(result, indent=1, default=str) + "\n")
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_FIELDS), extrasaction="ignore")
        writer.writeheader()
        for r in result["rows"]:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    if plot:
        from vlmprune.bench_plot import plot_bench

        paths["png"] = plot_bench(result, out / "bench.png")
    return paths


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.replace(" ", "").split(",") if x]


def _float_list(text: str) -> list[float]:
    return [float(x) for x in text.replace(" ", "").split(",") if x]


def add_arguments(parser) -> None:
    """Options of ``vlmprune bench`` (see the module docstring for what is measured)."""
    parser.add_argument(
        "--model",
        default="tiny-llava",
        help="tiny-llava (default: built-in 576-token LLaVA-1.5-shaped model), tiny-llava-next, tiny-qwen2.5-vl, "
        "tiny-qwen2-vl, or a real-size architecture: llava-1.5-7b, llava-next-7b, qwen2.5-vl-7b, qwen2-vl-7b "
        "(random weights; for GPUs), testbed / testbed-qwen (trained testbed checkpoints in ./testbed/) or a "
        "testbed checkpoint directory",
    )
    parser.add_argument(
        "--tiny-arch",
        action="store_true",
        help="shrink the model (archs.tiny_variant for architectures, the test-suite size for tiny-*): "
        "CPU smoke runs, timings meaningless",
    )
    parser.add_argument(
        "--methods", default=None, help="comma-separated method names (default: every registered method)"
    )
    parser.add_argument(
        "--budgets",
        type=_int_list,
        default=None,
        help="visual tokens kept per image, comma-separated (default: 192,128,64 for 576-token "
        "LLaVA; 640,320 for LLaVA-NeXT at 2880, scaled for smaller models)",
    )
    parser.add_argument(
        "--ratios",
        type=_float_list,
        default=None,
        help="kept fractions instead of budgets, e.g. 0.222 (default for Qwen)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--dtype", default=None, choices=sorted(_DTYPES), help="default float32 on CPU, bfloat16 on CUDA"
    )
    parser.add_argument("--attn", default="sdpa", help="attn_implementation of the model (default sdpa)")
    parser.add_argument("--batch", type=int, default=1, help="prompts per call (one image each; default 1)")
    parser.add_argument(
        "--text-tokens",
        type=int,
        default=64,
        help="non-image tokens in the prompt, template included (default 64)",
    )
    parser.add_argument(
        "--image-size", default=None, help="input image W or WxH in pixels (default per model)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up repeats (default 1)")
    parser.add_argument(
        "--decode-tokens",
        type=int,
        default=8,
        help="tokens decoded after the first, for decode tokens/s (default 8; 0: prefill only)",
    )
    parser.add_argument(
        "--convention",
        default="fastv",
        choices=("fastv", "swiglu", "exact"),
        help="FLOPs convention (default fastv: 4nd^2 + 2n^2d + 2ndm per layer)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="random weights seed (default 0)")
    parser.add_argument("--out", default=None, help="output directory (default results/bench/<model>)")
    parser.add_argument("--no-plot", action="store_true", help="skip bench.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")


def settings_from_args(args) -> BenchSettings:
    methods = None
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        if methods == ["all"]:
            methods = None
    if args.budgets and args.ratios:
        raise ValueError("give --budgets or --ratios, not both")
    return BenchSettings(
        model=args.model,
        methods=methods,
        budgets=args.budgets,
        ratios=args.ratios,
        device=args.device,
        dtype=args.dtype,
        batch=args.batch,
        text_tokens=args.text_tokens,
        repeats=args.repeats,
        warmup=args.warmup,
        decode_tokens=args.decode_tokens,
        convention=args.convention,
        tiny_arch=args.tiny_arch,
        image_size=args.image_size,
        attn=args.attn,
        threads=args.threads,
        seed=args.seed,
    )


def main(args) -> int:
    """``vlmprune bench``: run, print the table (or JSON), write bench.json / bench.csv / bench.png."""
    try:
        settings = settings_from_args(args)
        if settings.repeats < 1:
            raise ValueError("--repeats must be >= 1")
        if settings.batch < 1:
            raise ValueError("--batch must be >= 1")
        result = run_bench(settings, progress=not args.quiet)
    except (ValueError, KeyError, RuntimeError) as err:
        print(f"vlmprune bench: {err}", file=sys.stderr)
        return 2
    slug = Path(settings.model).name if os.path.isdir(settings.model) else settings.model
    out_dir = args.out or os.path.join("results", "bench", slug + ("-tiny" if settings.tiny_arch else ""))
    plot = not args.no_plot
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "vlmprune bench: matplotlib is not installed, skipping bench.png "
                "(pip install 'vlmprune[bench]')",
                file=sys.stderr,
            )
            plot = False
    paths = write_results(result, out_dir, plot=plot)
    result["meta"]["files"] = {k: str(v) for k, v in paths.items() if v}
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        print(format_table(result))
        print("wrote " + ", ".join(str(p) for p in paths.values() if p))
    return 0
