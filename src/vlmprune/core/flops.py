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
              GQA-aware (e.g. 4 KV heads for 28 query heads), every matmul the stock Hugging Face decoder layer
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
        """Build from a transformers decoder config
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
    """Shape of a VLM vision tower (and its connector into the LLM), as far as compute is concerned.

    ``num_layers`` blocks of width ``hidden`` with MLP width ``intermediate`` (``gated_mlp``: three
    matrices, else two), ``num_heads`` heads; ``patch_size`` x ``patch_size`` (x
    ``temporal_patch_size``) patches of ``in_channels`` channels. Fixed-size towers set
    ``image_size`` (a square crop; ``cls_token`` adds one token per crop, dropped before the
    connector; ``feature_layer`` is the VLM's ``vision_feature_layer``). Merged-patch towers set
    ``spatial_merge_size`` (``m x m`` patches per output token) and, when windowed,
    ``window_size`` in pixels and ``fullatt_block_indexes`` (None: every block full attention).
    The connector is a two-matrix MLP on each output token: ``connector_hidden`` wide, with
    ``connector_out`` (the LLM width) outputs; its input is ``hidden * m²`` wide; ``connectors``
    such MLPs run on the same patches (e.g. DeepStack's extra mergers). The family
    adapters build it from a model config (``vlmprune.adapters.family(name).vision_shape``).
    """

    num_layers: int
    hidden: int
    intermediate: int
    num_heads: int
    patch_size: int
    in_channels: int = 3
    gated_mlp: bool = False
    image_size: int | None = None
    cls_token: bool = False
    temporal_patch_size: int = 1
    spatial_merge_size: int = 1
    window_size: int | None = None
    fullatt_block_indexes: tuple[int, ...] | None = None
    connector_hidden: int | None = None
    connector_out: int | None = None
    connectors: int = 1
    feature_layer: int | None = None

    @property
    def has_cls(self) -> bool:
        return self.cls_token

    @property
    def patches_per_crop(self) -> int:
        """Fixed-size towers only: patch tokens per crop, ``(image_size / patch_size)²`` (576 for 336/14)."""
        if self.image_size is None:
            raise ValueError("patches_per_crop is defined for fixed-size towers only")
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens(self) -> int:
        """Fixed-size towers only: tokens the encoder runs on per crop, patches (+ CLS)."""
        return self.patches_per_crop + int(self.cls_token)


def _window_lengths(h: int, w: int, merge: int, window_merged: int) -> list[int]:
    """Windowed vision attention: patch counts of the windows of one ``h × w`` (patches) frame.

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
        raise ValueError("grid_thw is required for merged-patch towers: (t, h, w) in patches per image")
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
    FLOPs with ``macs=False``): patch embedding ``P·C·p²(·tp)·D``; per block q, k, v, o projections
    ``4ND²``, attention ``2·D·Σ_s s²`` over the attention segments ``s`` (each crop or frame for
    full attention, the windows of windowed blocks), MLP ``2NDI`` (``3NDI`` gated). Connector
    (``include_connector``) per output token (patches / m², the CLS token dropped):
    ``c_in·c_hidden + c_hidden·c_out`` with ``c_in = D·m²``.

    * Fixed-size towers: ``num_crops`` crops of ``image_size`` (e.g. 1 for a single crop, 5 for an
      anyres image at twice the crop size); ``truncate_at_feature_layer=True`` counts only the
      layers the ``feature_layer`` needs (stock runs them all).
    * Merged-patch towers: ``grid_thw`` — one ``(t, h, w)`` in patches, or a list / ``[B, 3]``
      tensor of them (the processor's ``image_grid_thw``); full attention is per frame.
    """
    if vshape.image_size is not None:
        g = vshape.image_size // vshape.patch_size
        grids = [(1, g, g)] * num_crops
    else:
        grids = _normalise_grids(grid_thw)
    layers = vshape.num_layers
    if truncate_at_feature_layer and vshape.feature_layer is not None:
        fl = vshape.feature_layer
        layers = fl if fl >= 0 else vshape.num_layers + 1 + fl
    total = sum(_grid_flops(vshape, grid, layers, include_connector) for grid in grids)
    return total if macs else 2 * total


def _grid_flops(vshape: VisionShape, grid, layers: int, include_connector: bool) -> int:
    """MACs of the tower on one image (or crop) of ``grid = (t, h, w)`` patches."""
    t, h, w = grid
    D, mg = vshape.hidden, vshape.spatial_merge_size
    patches = t * h * w
    n = patches + t * int(vshape.cls_token)  # tokens per block
    total = patches * vshape.in_channels * vshape.temporal_patch_size * vshape.patch_size**2 * D
    full_sq = t * (h * w + int(vshape.cls_token)) ** 2  # full attention per frame
    full_blocks = (
        set(range(layers)) if vshape.fullatt_block_indexes is None else set(vshape.fullatt_block_indexes)
    )
    win_sq = full_sq
    if vshape.window_size is not None and len(full_blocks) < vshape.num_layers:
        window_merged = vshape.window_size // mg // vshape.patch_size
        win_sq = t * sum(s * s for s in _window_lengths(h, w, mg, window_merged))
    mlp_mats = 3 if vshape.gated_mlp else 2
    for i in range(layers):
        sq = full_sq if i in full_blocks else win_sq
        total += 4 * n * D * D + 2 * sq * D + mlp_mats * n * D * vshape.intermediate
    if include_connector and vshape.connector_out is not None:
        c_in, c_mid = D * mg * mg, vshape.connector_hidden or vshape.connector_out
        total += vshape.connectors * (patches // (mg * mg)) * (c_in * c_mid + c_mid * vshape.connector_out)
    return total


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
