"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): anyres crops, unpadding, ``image_newline``.

Each image is a base crop plus high-resolution tiles; ``pack_image_features`` puts the base crop
first (raster), then the tiles stitched into one grid, unpadded to the image's aspect ratio, with
``image_newline`` after each row. To learn that layout exactly, the adapter runs the model's own
``pack_image_features`` on a tensor of source indices (crop * N + patch) with a -1 "newline", so
the mapping from packed positions to (crop, patch) always follows the installed transformers.

Content tokens are the packed tokens without newlines (5 x 576 = 2880 at 672x672 before
unpadding); the newline tokens are dropped whenever a pre-LLM stage prunes (methods.md). Regions:
the base crop, then each tile's part of the unpadded grid.
"""

from __future__ import annotations

import functools

import torch

from vlmprune.adapters.base import Adapter, ImageLayout, InstanceAttributeHook, register_adapter
from vlmprune.adapters.llava import ClipTowerMixin
from vlmprune.core.base import Region


@register_adapter
class LlavaNextAdapter(ClipTowerMixin, Adapter):
    family = "llava_next"
    model_types = ("llava_next",)
    default_positions = "compact"
    supports_compact = True

    def __init__(self, model, saliency="auto"):
        super().__init__(model, saliency)
        self._check_clip()

    def vision_hooks(self, on_record, needs):
        handles = super().vision_hooks(on_record, needs)
        # generate() runs get_image_features before the forward and then passes only
        # `mm_encoder_outputs`, without `image_sizes`: record the sizes where they are used.
        original = self.base.get_image_features
        self._last_sizes = None

        @functools.wraps(original)  # generate() inspects this signature to route pixel_values
        def get_image_features(*args, **kwargs):
            sizes = kwargs.get("image_sizes", args[1] if len(args) > 1 else None)
            self._last_sizes = None if sizes is None else torch.as_tensor(sizes).detach().cpu()
            return original(*args, **kwargs)

        handles.append(InstanceAttributeHook(self.base, "get_image_features", get_image_features))
        return handles

    def _num_crops(self, image_size) -> int:
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        return int(
            image_size_to_num_patches(
                image_size=image_size,
                grid_pinpoints=self.config.image_grid_pinpoints,
                patch_size=self.config.vision_config.image_size,
            )
        )

    def _pack_sources(self, image_size, n_crops: int) -> torch.Tensor:
        """Packed sequence of one image as source indices (crop * N + patch), -1 for newlines."""
        n = self.side * self.side
        src = torch.arange(n_crops * n, dtype=torch.float64).view(n_crops, n, 1)  # (C, N, 1)
        packed, _ = self.base.pack_image_features(
            [src],
            image_size[None],
            self.config.vision_feature_select_strategy,
            torch.tensor([-1.0], dtype=torch.float64),
        )
        return packed[0][:, 0].round().long()  # (P,)

    def image_layouts(self, call, record):
        sizes = call.get("image_sizes")
        if sizes is None:
            sizes = getattr(self, "_last_sizes", None)
        if sizes is None:
            raise ValueError("llava_next: `image_sizes` is required to prune LLaVA-NeXT images")
        sizes = torch.as_tensor(sizes).cpu()
        n = self.side * self.side
        layouts = []
        self._sources, self._crops = [], []
        for size in sizes:
            n_crops = self._num_crops(size)
            packed = self._pack_sources(size, n_crops)  # (P,)
            content = torch.nonzero(packed >= 0).flatten()  # (N_content,)
            source = packed[content]  # (N_content,) crop * N + patch
            crop = source // n
            regions = [Region(torch.nonzero(crop == 0).flatten(), (self.side, self.side))]
            if n_crops > 1:
                n_rows = int((packed < 0).sum())  # one newline per unpadded row
                hi = torch.nonzero(crop > 0).flatten()  # content offsets of the high-res grid
                width = hi.numel() // n_rows
                local = torch.arange(hi.numel())
                rows, cols = local // width, local % width
                for c in range(1, n_crops):
                    sel = crop[hi] == c
                    if sel.any():
                        grid = (int(rows[sel].unique().numel()), int(cols[sel].unique().numel()))
                        regions.append(Region(hi[sel], grid))
            layouts.append(ImageLayout(int(packed.numel()), content, regions, (self.side, self.side)))
            self._sources.append(source)
            self._crops.append(n_crops)
        return layouts

    def image_signals(self, record, index, layout):
        start = sum(self._crops[:index])  # crops of earlier images precede this one's in the tower
        n_crops = self._crops[index]
        source = self._sources[index]
        out = {}
        for key in ("saliency", "keys"):
            views = self._views(record, key)
            if views is not None:
                per_patch = views[start : start + n_crops, 1:]  # (C, T, ...) -> (C, N, ...)
                out[key] = per_patch.reshape(-1, *per_patch.shape[2:])[source]
        pre = self._views(record, "pre_features")
        if pre is not None:
            per_patch = pre[start : start + n_crops]  # (C, N, Dv)
            out["pre_features"] = per_patch.reshape(-1, per_patch.shape[-1])[source]
        return out
