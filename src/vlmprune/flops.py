"""Analytic compute accounting for visual token pruning.

Units (read this first)
-----------------------
Every formula below counts **multiply-accumulates (MACs)**: one ``a*b + c`` on a scalar is one
unit, so multiplying an ``(n, k)`` matrix by a ``(k, o)`` matrix is ``n*k*o`` units. FastV's
formula ``4nd² + 2n²d + 2ndm`` is such a count even though the FastV paper (Chen et al. 2024,
"An Image is Worth 1/2 Tokens After Layer 2") and the papers that reuse it call it "FLOPs":
``nd²`` is exactly the MAC count of one ``d×d`` projection of ``n`` tokens, and a true
floating-point-operation count of the same work is twice that (one multiply plus one add).

* ``macs=True`` (the default everywhere here): the formula value as printed, i.e. MACs; this is the
  number papers quote as "FLOPs" when they use FastV's formula (the ``"paper"`` unit).
* ``macs=False``: ``2 ×`` that, true FLOPs, the unit of ``torch.utils.flop_counter.FlopCounterMode``
  and of hardware peak TFLOP/s figures.

Reductions (``1 - pruned/full``) do not depend on the unit. Every report names its convention and
unit (:class:`FlopsReport`).

Conventions (per decoder layer, ``n`` tokens, hidden ``d``, MLP intermediate ``m``)
-----------------------------------------------------------------------------------
``"fastv"``   ``4nd² + 2n²d + 2ndm`` — FastV's: q, k, v, o projections (``4nd²``), attention scores
              ``QKᵀ`` and the weighted sum ``AV`` (``n²d`` each), and a two-matrix MLP (``2ndm``).
              LLaMA-family MLPs are gated (SwiGLU: gate, up, down = three ``d×m`` matrices), so this
              undercounts the MLP by a third; it is kept because published reductions use it.
``"swiglu"``  ``4nd² + 2n²d + 3ndm`` — the same with the three-matrix SwiGLU MLP.
``"exact"``   ``n·d·(h·hd) [q] + n·(h·hd)·d [o] + 2·n·d·(kv·hd) [k, v] + 2·n²·(h·hd) [QKᵀ, AV]
              + 3ndm [SwiGLU]`` with ``h`` query heads, ``kv`` key/value heads, head size ``hd`` —
              GQA-aware (Qwen2/2.5: 4 KV heads), every matmul the stock Hugging Face decoder layer
              runs and nothing else. With ``macs=False`` it equals what ``FlopCounterMode`` counts
              inside a decoder layer (``tests/test_flops.py`` checks this on stock models).

All three count the full ``n × n`` attention (a causal mask does not halve the count; FlashAttention
kernels skip masked blocks, dense kernels and FlopCounterMode do not). None count norms, rotary
embeddings, softmax, activations or residual adds (elementwise, ``O(nd)``), nor the embedding
lookup. The LM head (``n·d·vocab``) is excluded unless asked for (``lm_head_tokens``): ``generate``
computes logits only for the last position during prefill.

Which tokens each layer sees
----------------------------
``prefill_flops`` takes ``tokens_per_layer``: the sequence length at each decoder layer. Pre-LLM
pruning (PromPrune, VisionZip, DivPrune, ...) shortens every layer; in-LLM pruning at layer ``K``
(FastV, DART) shortens layers ``>= K`` only (:func:`token_schedule` builds both). In-LLM methods
often report the layer-averaged token count (:func:`equivalent_tokens`).

The vision tower is accounted separately (:func:`vision_flops`); it is not changed by pruning
methods that act after the encoder.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

CONVENTIONS = ("fastv", "swiglu", "exact")


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


# --------------------------------------------------------------------------------------------
# LLM decoder
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LLMShape:
    """Shape of a decoder-only LLM, as far as compute is concerned.

    ``d`` hidden size, ``m`` MLP intermediate size, ``num_layers`` decoder layers, ``num_heads``
    query heads, ``num_kv_heads`` key/value heads (GQA: fewer than ``num_heads``), ``head_dim``
    per-head width, ``vocab`` LM-head rows.
    """

    d: int
    m: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab: int

    @property
    def attn_dim(self) -> int:
        """Width of the query / attention output (``num_heads * head_dim``; equals ``d`` here)."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the key and value projections (``num_kv_heads * head_dim``)."""
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_config(cls, config) -> LLMShape:
        """Build from a transformers text config (``LlamaConfig``, ``Qwen2_5_VLTextConfig``, ...)
        or from a full VLM config (its ``get_text_config()`` is used)."""
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        d = int(config.hidden_size)
        heads = int(config.num_attention_heads)
        kv = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or d // heads
        return cls(
            d=d,
            m=int(config.intermediate_size),
            num_layers=int(config.num_hidden_layers),
            num_heads=heads,
            num_kv_heads=int(kv),
            head_dim=int(head_dim),
            vocab=int(config.vocab_size),
        )


def layer_flops(
    n: int,
    d: int,
    m: int,
    convention: str = "fastv",
    *,
    macs: bool = True,
    attn_dim: int | None = None,
    kv_dim: int | None = None,
) -> int:
    """Compute of one decoder layer on ``n`` tokens (see the module docstring for the formulas).

    ``convention``: ``"fastv"`` ``4nd² + 2n²d + 2ndm``; ``"swiglu"`` ``4nd² + 2n²d + 3ndm``;
    ``"exact"`` ``2n·d·attn_dim + 2n·d·kv_dim + 2n²·attn_dim + 3ndm`` (``attn_dim`` =
    heads·head_dim, ``kv_dim`` = kv_heads·head_dim, both default to ``d``; only ``"exact"`` uses
    them). ``macs=True`` returns the formula value (multiply-accumulates, what papers quoting FastV
    call FLOPs); ``macs=False`` returns true FLOPs (``2 ×``).
    """
    _check_convention(convention)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if convention == "fastv":
        value = 4 * n * d * d + 2 * n * n * d + 2 * n * d * m
    elif convention == "swiglu":
        value = 4 * n * d * d + 2 * n * n * d + 3 * n * d * m
    else:
        a = d if attn_dim is None else attn_dim
        kv = d if kv_dim is None else kv_dim
        value = 2 * n * d * a + 2 * n * d * kv + 2 * n * n * a + 3 * n * d * m
    return value if macs else 2 * value


def token_schedule(
    num_layers: int,
    text_tokens: int,
    visual_tokens: int,
    kept: int | None = None,
    *,
    layer: int = 0,
    stages: dict[int, int] | None = None,
) -> list[int]:
    """Sequence length seen by each of ``num_layers`` decoder layers.

    Full model: ``text_tokens + visual_tokens`` everywhere. ``kept`` visual tokens from ``layer``
    on: ``layer=0`` is pre-LLM pruning (every layer shortened), ``layer=K`` in-LLM pruning (FastV:
    layers ``< K`` see all tokens, layers ``>= K`` see ``text_tokens + kept``). ``stages``
    ``{layer: kept}`` describes progressive pruning (several drops); it replaces ``kept``/``layer``.

    >>> token_schedule(4, 64, 576, 64, layer=2)
    [640, 640, 128, 128]
    """
    if stages is None:
        stages = {} if kept is None else {layer: kept}
    elif kept is not None:
        raise ValueError("give either kept (with layer) or stages, not both")
    for k, v in stages.items():
        if not 0 <= k < num_layers:
            raise ValueError(f"pruning layer {k} outside 0..{num_layers - 1}")
        if v < 0:
            raise ValueError(f"kept must be >= 0, got {v}")
    out, current = [], visual_tokens
    for i in range(num_layers):
        if i in stages:
            current = min(current, stages[i])
        out.append(text_tokens + current)
    return out


def prefill_flops(
    shape: LLMShape,
    tokens_per_layer: Sequence[int],
    convention: str = "fastv",
    *,
    macs: bool = True,
    lm_head_tokens: int = 0,
) -> int:
    """Prefill compute of the decoder stack: ``Σ_i layer_flops(tokens_per_layer[i])``.

    ``tokens_per_layer`` (length ``shape.num_layers``) is the sequence length at each layer
    (:func:`token_schedule`). ``lm_head_tokens`` adds ``lm_head_tokens · d · vocab`` MACs for the
    positions whose logits are computed (0 by default, as in the papers; ``generate`` uses 1).
    Unit as in :func:`layer_flops`.
    """
    tokens = list(tokens_per_layer)
    if len(tokens) != shape.num_layers:
        raise ValueError(
            f"tokens_per_layer has {len(tokens)} entries, the model has {shape.num_layers} layers"
        )
    total = sum(
        layer_flops(n, shape.d, shape.m, convention, macs=True, attn_dim=shape.attn_dim, kv_dim=shape.kv_dim)
        for n in tokens
    )
    total += lm_head_tokens * shape.d * shape.vocab
    return total if macs else 2 * total


def equivalent_tokens(tokens_per_layer: Iterable[int], text_tokens: int = 0) -> float:
    """Layer-averaged token count, ``mean(tokens_per_layer) - text_tokens``.

    In-LLM methods report this as their "equivalent" visual-token budget: FastV keeping 64 of 576
    from layer 2 of 32 averages ``(2·576 + 30·64) / 32 = 96`` visual tokens (pass the visual counts,
    or the full counts with ``text_tokens``). It averages tokens, not compute: the ``n²`` term makes
    the FLOPs of that schedule differ slightly from a pre-LLM budget of the same size.
    """
    tokens = list(tokens_per_layer)
    if not tokens:
        raise ValueError("tokens_per_layer is empty")
    return sum(tokens) / len(tokens) - text_tokens


def reduction(full: float, pruned: float) -> float:
    """Fraction of compute saved, ``1 - pruned / full`` (0.608 means 60.8% fewer FLOPs)."""
    if full <= 0:
        raise ValueError(f"full must be > 0, got {full}")
    return 1.0 - pruned / full


# --------------------------------------------------------------------------------------------
# Vision tower
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VisionShape:
    """Shape of a VLM vision tower (and its connector), as far as compute is concerned.

    ``kind``: ``"clip"`` (CLIP ViT of LLaVA / LLaVA-NeXT: CLS token, LayerNorm, two-matrix
    QuickGELU MLP, full attention, 2-layer GELU projector into the LLM), ``"qwen2_vl"`` (no CLS,
    two-matrix QuickGELU MLP, full attention per frame, 2×2 patch merger MLP) or ``"qwen2_5_vl"``
    (no CLS, SwiGLU MLP, window attention except ``fullatt_block_indexes``, 2×2 patch merger).

    ``num_layers`` blocks of width ``hidden`` with MLP width ``intermediate`` (``gated_mlp``: three
    matrices), ``num_heads`` heads; ``patch_size`` × ``patch_size`` (× ``temporal_patch_size``)
    patches of ``in_channels`` channels. CLIP: ``image_size`` (square crop), ``projector_out`` the
    LLM width (projector ``hidden → projector_out → projector_out``), ``feature_layer`` the
    ``vision_feature_layer``. Qwen: ``spatial_merge_size``, ``window_size`` in pixels,
    ``fullatt_block_indexes`` (``None``: every block full attention), ``merger_out`` the merger's
    output width (the LLM width).
    """

    kind: str
    num_layers: int
    hidden: int
    intermediate: int
    num_heads: int
    patch_size: int
    in_channels: int = 3
    gated_mlp: bool = False
    image_size: int | None = None
    temporal_patch_size: int = 1
    spatial_merge_size: int = 1
    window_size: int | None = None
    fullatt_block_indexes: tuple[int, ...] | None = None
    merger_out: int | None = None
    projector_out: int | None = None
    feature_layer: int | None = None

    @property
    def has_cls(self) -> bool:
        return self.kind == "clip"

    @property
    def patches_per_crop(self) -> int:
        """CLIP only: patch tokens per crop, ``(image_size / patch_size)²`` (576 for 336/14)."""
        if self.image_size is None:
            raise ValueError("patches_per_crop is defined for fixed-size (CLIP) towers only")
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens(self) -> int:
        """CLIP only: tokens the encoder runs on per crop, patches + CLS (577 for 336/14)."""
        return self.patches_per_crop + 1

    @classmethod
    def from_config(cls, config) -> VisionShape:
        """Build from a full VLM config (LLaVA / LLaVA-NeXT / Qwen2-VL / Qwen2.5-VL) or from a
        vision sub-config alone (then the LLaVA projector width is unknown and left ``None``)."""
        vision = getattr(config, "vision_config", None)
        full = config if vision is not None else None
        vision = vision if vision is not None else config
        mt = vision.model_type
        if mt in ("clip_vision_model", "clip"):
            projector_out = None
            if full is not None:
                projector_out = int(full.get_text_config().hidden_size)
            return cls(
                kind="clip",
                num_layers=int(vision.num_hidden_layers),
                hidden=int(vision.hidden_size),
                intermediate=int(vision.intermediate_size),
                num_heads=int(vision.num_attention_heads),
                patch_size=int(vision.patch_size),
                in_channels=int(getattr(vision, "num_channels", 3)),
                image_size=int(vision.image_size),
                projector_out=projector_out,
                feature_layer=getattr(full, "vision_feature_layer", None) if full is not None else None,
            )
        if mt in ("qwen2_5_vl_vision", "qwen2_5_vl"):
            return cls(
                kind="qwen2_5_vl",
                num_layers=int(vision.depth),
                hidden=int(vision.hidden_size),
                intermediate=int(vision.intermediate_size),
                num_heads=int(vision.num_heads),
                patch_size=int(vision.patch_size),
                in_channels=int(vision.in_channels),
                gated_mlp=True,
                temporal_patch_size=int(vision.temporal_patch_size),
                spatial_merge_size=int(vision.spatial_merge_size),
                window_size=int(vision.window_size),
                fullatt_block_indexes=tuple(int(i) for i in vision.fullatt_block_indexes),
                merger_out=int(vision.out_hidden_size),
            )
        if mt in ("qwen2_vl_vision", "qwen2_vl"):
            return cls(
                kind="qwen2_vl",
                num_layers=int(vision.depth),
                hidden=int(vision.embed_dim),
                intermediate=int(vision.embed_dim * vision.mlp_ratio),
                num_heads=int(vision.num_heads),
                patch_size=int(vision.patch_size),
                in_channels=int(vision.in_channels),
                temporal_patch_size=int(vision.temporal_patch_size),
                spatial_merge_size=int(vision.spatial_merge_size),
                merger_out=int(vision.hidden_size),
            )
        raise ValueError(f"unsupported vision tower model_type {mt!r}")


def _window_lengths(h: int, w: int, merge: int, window_merged: int) -> list[int]:
    """Qwen2.5-VL window attention: patch counts of the windows of one ``h × w`` (patches) frame.

    Windows tile the merged grid ``(h/merge) × (w/merge)`` in ``window_merged²`` squares (edge
    windows are smaller); each merged unit holds ``merge²`` patches. Same as
    ``transformers.vision_utils.get_vision_window_index``.
    """
    gh, gw = h // merge, w // merge
    rows = [min(window_merged, gh - r) for r in range(0, gh, window_merged)]
    cols = [min(window_merged, gw - c) for c in range(0, gw, window_merged)]
    return [r * c * merge * merge for r in rows for c in cols]


def _normalise_grids(grid_thw) -> list[tuple[int, int, int]]:
    if grid_thw is None:
        raise ValueError("grid_thw is required for Qwen vision towers: (t, h, w) in patches per image")
    if hasattr(grid_thw, "tolist"):
        grid_thw = grid_thw.tolist()
    grid_thw = list(grid_thw)
    if grid_thw and isinstance(grid_thw[0], int):
        grid_thw = [grid_thw]
    return [tuple(int(x) for x in g) for g in grid_thw]


def vision_flops(
    vshape: VisionShape,
    *,
    grid_thw=None,
    num_crops: int = 1,
    macs: bool = True,
    include_connector: bool = True,
    truncate_at_feature_layer: bool = False,
) -> int:
    """Compute of the vision tower (plus the connector into the LLM), reported apart from the LLM.

    Counts every matmul / convolution the stock tower runs, in the ``"exact"`` sense (MACs, or
    FLOPs with ``macs=False``): patch embedding ``N·C·p²(·tp)·D``; per block q, k, v, o projections
    ``4ND²``, attention ``2·D·Σ_s s²`` over the attention segments ``s`` (the whole crop / frame for
    full attention, the windows for Qwen2.5-VL's windowed blocks), MLP ``2NDI`` (``3NDI`` gated).
    Connector (``include_connector``): LLaVA projector on the patch tokens (CLS dropped, strategy
    ``"default"``) ``P·(D·d + d·d)``; Qwen merger ``(N/mg²)·(mg²D·mg²D + mg²D·d_out)``.

    * CLIP (LLaVA, LLaVA-NeXT): per crop ``N = P + 1`` tokens (577 at 336 px); ``num_crops`` crops
      (LLaVA-1.5: 1; LLaVA-NeXT anyres at 672×672: 5). Stock transformers runs all layers although
      LLaVA reads ``hidden_states[-2]``; ``truncate_at_feature_layer=True`` counts only the layers
      that feature needs (23 of 24).
    * Qwen2-VL / Qwen2.5-VL: ``grid_thw`` — one ``(t, h, w)`` in patches, or a list / ``[B, 3]``
      tensor of them (the processor's ``image_grid_thw``); ``N = t·h·w``; full attention is per
      frame.
    """
    if vshape.kind == "clip":
        P = vshape.patches_per_crop
        n = P + 1
        D, mlp = vshape.hidden, vshape.intermediate
        layers = vshape.num_layers
        if truncate_at_feature_layer and vshape.feature_layer is not None:
            fl = vshape.feature_layer
            layers = fl if fl >= 0 else vshape.num_layers + 1 + fl
        per_crop = P * vshape.in_channels * vshape.patch_size**2 * D
        per_crop += layers * (4 * n * D * D + 2 * n * n * D + (3 if vshape.gated_mlp else 2) * n * D * mlp)
        if include_connector and vshape.projector_out is not None:
            d = vshape.projector_out
            per_crop += P * (D * d + d * d)
        total = num_crops * per_crop
    elif vshape.kind in ("qwen2_vl", "qwen2_5_vl"):
        D, mlp = vshape.hidden, vshape.intermediate
        mg = vshape.spatial_merge_size
        mlp_mats = 3 if vshape.gated_mlp else 2
        full_blocks = (
            set(range(vshape.num_layers))
            if vshape.fullatt_block_indexes is None
            else set(vshape.fullatt_block_indexes)
        )
        total = 0
        for t, h, w in _normalise_grids(grid_thw):
            n = t * h * w
            total += n * vshape.in_channels * vshape.temporal_patch_size * vshape.patch_size**2 * D
            full_sq = t * (h * w) ** 2
            if vshape.window_size is not None and len(full_blocks) < vshape.num_layers:
                window_merged = vshape.window_size // mg // vshape.patch_size
                win_sq = t * sum(s * s for s in _window_lengths(h, w, mg, window_merged))
            else:
                win_sq = full_sq
            for i in range(vshape.num_layers):
                sq = full_sq if i in full_blocks else win_sq
                total += 4 * n * D * D + 2 * sq * D + mlp_mats * n * D * mlp
            if include_connector and vshape.merger_out is not None:
                c = D * mg * mg
                total += (n // (mg * mg)) * (c * c + c * vshape.merger_out)
    else:
        raise ValueError(f"unknown vision kind {vshape.kind!r}")
    return total if macs else 2 * total


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


@dataclass
class FlopsReport:
    """Prefill compute of one (pruned) run next to the unpruned run.

    ``flops`` / ``full_flops``: LLM decoder prefill for the pruned / full token schedules
    (``tokens_per_layer`` / ``full_tokens_per_layer``), under ``convention`` and unit ``macs``
    (True: MACs, the number FastV-style papers call FLOPs; False: true FLOPs). ``vision_flops``:
    the vision tower and connector, same unit, reported apart (``None`` when not computed).
    """

    flops: int
    full_flops: int
    convention: str
    tokens_per_layer: list[int]
    vision_flops: int | None = None
    full_tokens_per_layer: list[int] = field(default_factory=list)
    macs: bool = True

    @property
    def reduction(self) -> float:
        return reduction(self.full_flops, self.flops)

    @property
    def unit(self) -> str:
        return "MACs (paper 'FLOPs')" if self.macs else "FLOPs"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["reduction"] = self.reduction
        out["unit"] = self.unit
        out["equivalent_tokens"] = equivalent_tokens(self.tokens_per_layer)
        return out

    @classmethod
    def compute(
        cls,
        shape: LLMShape,
        tokens_per_layer: Sequence[int],
        full_tokens_per_layer: Sequence[int],
        convention: str = "fastv",
        *,
        macs: bool = True,
        vision_flops: int | None = None,
    ) -> FlopsReport:
        return cls(
            flops=prefill_flops(shape, tokens_per_layer, convention, macs=macs),
            full_flops=prefill_flops(shape, full_tokens_per_layer, convention, macs=macs),
            convention=convention,
            tokens_per_layer=list(tokens_per_layer),
            vision_flops=vision_flops,
            full_tokens_per_layer=list(full_tokens_per_layer),
            macs=macs,
        )


# --------------------------------------------------------------------------------------------
# Headline table
# --------------------------------------------------------------------------------------------

#: Text tokens assumed by the headline tables. 64 reproduces the published LLaVA-1.5 reductions
#: (60.8 / 70.7 / 80.5% at 192 / 128 / 64 visual tokens) and LLaVA-NeXT's 88.5% (2880 -> 320).
DEFAULT_TEXT_TOKENS = 64

# (arch, full visual tokens, budgets) for the printed table; LLaVA-NeXT: 5 crops × 576 at 672×672.
_TABLE = (
    ("llava-1.5-7b", "LLaVA-1.5-7B", 576, (192, 128, 64), 1),
    ("llava-next-7b", "LLaVA-NeXT-7B", 2880, (640, 320, 160), 5),
)


def reduction_rows(text_tokens: int = DEFAULT_TEXT_TOKENS, fastv_layer: int = 2) -> list[dict]:
    """Rows of the reduction table: LLaVA-1.5-7B and LLaVA-NeXT-7B, pre-LLM pruning and FastV-style
    in-LLM pruning at ``fastv_layer``, under the ``"fastv"`` and ``"swiglu"`` conventions."""
    from vlmprune.archs import load_config

    rows = []
    for arch, label, full_visual, budgets, crops in _TABLE:
        config = load_config(arch)
        shape = LLMShape.from_config(config)
        vflops = vision_flops(VisionShape.from_config(config), num_crops=crops)
        full = token_schedule(shape.num_layers, text_tokens, full_visual)
        for kept in budgets:
            for where, layer in (("pre-LLM", 0), (f"in-LLM K={fastv_layer}", fastv_layer)):
                sched = token_schedule(shape.num_layers, text_tokens, full_visual, kept, layer=layer)
                row = {
                    "model": label,
                    "arch": arch,
                    "text_tokens": text_tokens,
                    "visual_full": full_visual,
                    "visual_kept": kept,
                    "where": where,
                    "equivalent_visual_tokens": equivalent_tokens(sched, text_tokens),
                    "vision_tflops_macs": vflops / 1e12,
                }
                for conv in ("fastv", "swiglu"):
                    rep = FlopsReport.compute(shape, sched, full, conv, vision_flops=vflops)
                    row[f"{conv}_full_tflops"] = rep.full_flops / 1e12
                    row[f"{conv}_tflops"] = rep.flops / 1e12
                    row[f"{conv}_reduction"] = rep.reduction
                rows.append(row)
    return rows


def format_reduction_table(rows: list[dict] | None = None) -> str:
    """The reduction table as text (see :func:`reduction_rows`)."""
    rows = reduction_rows() if rows is None else rows
    head = (
        f"{'model':<14} {'visual':>11} {'where':<12} {'eq.tok':>7}  "
        f"{'FastV T':>8} {'full':>7} {'red.':>6}  {'SwiGLU T':>8} {'full':>7} {'red.':>6}"
    )
    lines = [
        "LLM prefill compute, text tokens = "
        f"{rows[0]['text_tokens'] if rows else DEFAULT_TEXT_TOKENS}; T = 1e12 MACs (the 'FLOPs' of "
        "FastV-style papers; true FLOPs are 2x); vision tower not included",
        "FastV: 4nd^2 + 2n^2d + 2ndm per layer; SwiGLU: 4nd^2 + 2n^2d + 3ndm",
        head,
        "-" * len(head),
    ]
    for r in rows:
        lines.append(
            f"{r['model']:<14} {r['visual_full']:>5}->{r['visual_kept']:<5} {r['where']:<12} "
            f"{r['equivalent_visual_tokens']:>7.1f}  "
            f"{r['fastv_tflops']:>8.3f} {r['fastv_full_tflops']:>7.3f} {100 * r['fastv_reduction']:>5.1f}%  "
            f"{r['swiglu_tflops']:>8.3f} {r['swiglu_full_tflops']:>7.3f} {100 * r['swiglu_reduction']:>5.1f}%"
        )
    seen = {}
    for r in rows:
        seen.setdefault(r["model"], r["vision_tflops_macs"])
    lines.append(
        "vision tower + projector (unchanged by these methods, all layers as stock runs them): "
        + ", ".join(f"{m} {v:.3f} T" for m, v in seen.items())
    )
    return "\n".join(lines)


def print_reduction_table() -> None:
    """Print the LLaVA-1.5-7B / LLaVA-NeXT-7B reduction table under both conventions."""
    print(format_reduction_table())


def text_tokens_for_reduction(
    shape: LLMShape,
    full_visual: int,
    kept: int,
    target: float,
    convention: str = "fastv",
    *,
    decimals: int = 1,
    max_text: int = 4096,
) -> list[int]:
    """Text-token counts for which pre-LLM pruning ``full_visual -> kept`` gives ``target``
    (a percentage, e.g. 88.5) when rounded to ``decimals`` — how a paper's headline reduction
    pins down the prompt length it assumed."""
    out = []
    for t in range(max_text + 1):
        full = prefill_flops(shape, [t + full_visual] * shape.num_layers, convention)
        pruned = prefill_flops(shape, [t + kept] * shape.num_layers, convention)
        if math.isclose(round(100 * reduction(full, pruned), decimals), target, abs_tol=1e-9):
            out.append(t)
    return out


if __name__ == "__main__":
    print_reduction_table()
