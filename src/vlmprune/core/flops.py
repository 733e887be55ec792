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

Hybrid decoders (softmax-attention layers alternating with Gated DeltaNet linear-attention layers)
count their linear-attention layers with :func:`linear_layer_flops`: projections, a depthwise
convolution and a ``key_dim x value_dim`` recurrent state per value head, all linear in ``n``.

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

from vlmprune.core.vision_flops import VisionShape as VisionShape  # re-exported: one public module
from vlmprune.core.vision_flops import _window_lengths as _window_lengths
from vlmprune.core.vision_flops import vision_flops as vision_flops

CONVENTIONS = ("fastv", "swiglu", "exact")


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


# --------------------------------------------------------------------------------------------
# LLM decoder
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearAttentionShape:
    """A gated linear-attention (Gated DeltaNet) token mixer: ``key_heads`` x ``key_dim`` keys and
    queries, ``value_heads`` x ``value_dim`` values, a depthwise causal convolution of ``conv_kernel``
    taps over the q, k, v channels, one ``key_dim x value_dim`` recurrent state per value head."""

    key_heads: int
    key_dim: int
    value_heads: int
    value_dim: int
    conv_kernel: int

    def token_macs(self, d: int) -> int:
        """MACs per token of the mixer (no MLP): projections in (q, k, v, output gate ``z``, the
        two per-head scalars ``a``, ``b``) and out, the convolution, and the recurrence of the
        delta rule (``k^T S``, the rank-1 state update, the read-out ``q^T S``: three
        ``key_dim x value_dim`` products per value head)."""
        keys, values = self.key_heads * self.key_dim, self.value_heads * self.value_dim
        proj = d * (2 * keys + 2 * values + 2 * self.value_heads) + values * d
        conv = (2 * keys + values) * self.conv_kernel
        return proj + conv + 3 * self.value_heads * self.key_dim * self.value_dim


@dataclass(frozen=True)
class LLMShape:
    """Shape of a decoder-only LLM, as far as compute is concerned.

    ``d`` hidden size, ``m`` MLP intermediate size, ``num_layers`` decoder layers, ``num_heads``
    query heads, ``num_kv_heads`` key/value heads (GQA: fewer than ``num_heads``), ``head_dim``
    per-head width, ``vocab`` LM-head rows. Hybrid decoders set ``linear_layers`` (the indices of
    their linear-attention layers) and ``linear`` (their mixer's shape); the other layers are
    softmax attention. ``attn_gate``: the query projection also yields a per-channel output gate
    (``n·d·attn_dim`` more, counted by the ``"exact"`` convention).
    """

    d: int
    m: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab: int
    linear_layers: tuple[int, ...] = ()
    linear: LinearAttentionShape | None = None
    attn_gate: bool = False

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


def linear_layer_flops(n: int, shape: LLMShape, convention: str = "fastv", *, macs: bool = True) -> int:
    """Compute of one linear-attention layer of a hybrid decoder on ``n`` tokens: its mixer
    (:meth:`LinearAttentionShape.token_macs`, linear in ``n``: no ``n²`` term) plus the MLP of the
    convention (``2ndm`` for ``"fastv"``, ``3ndm`` otherwise). The count is the recurrent form's; a
    chunked kernel spends more multiplies on intra-chunk products. Unit as in :func:`layer_flops`."""
    _check_convention(convention)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    mlp = (2 if convention == "fastv" else 3) * n * shape.d * shape.m
    value = n * shape.linear.token_macs(shape.d) + mlp
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
    total = 0
    for i, n in enumerate(tokens):
        if i in shape.linear_layers:
            total += linear_layer_flops(n, shape, convention)
        else:
            total += layer_flops(
                n, shape.d, shape.m, convention, attn_dim=shape.attn_dim, kv_dim=shape.kv_dim
            )
            if shape.attn_gate and convention == "exact":
                total += n * shape.d * shape.attn_dim
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
    vision_flops: int | None = None  # noqa: F811 (the report's field, not the function)
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
