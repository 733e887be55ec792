"""Analytic compute of a VLM vision tower and its connector (MACs unless ``macs=False``; the
units and conventions are :mod:`vlmprune.core.flops`'s, which re-exports these names)."""

from __future__ import annotations

from dataclasses import dataclass


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
