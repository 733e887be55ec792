"""Qwen2-VL (``Qwen2VLForConditionalGeneration``): no CLS, 2x2 patch merger, M-RoPE.

Visual tokens: ``t * h * w / 4`` merged tokens per image in raster order over the merged
``(t, h/2, w/2)`` grid (each merge group is 4 consecutive patches in the vision tower).
Saliency (no CLS, methods.md): ``"attention_received"`` (default): attention received per patch in
the last full-attention vision block, mean over heads and queries, summed over each 2x2 merge
group; ``"feature_norm"``: L2 norm of the merged token. Positions: always ``"original"`` (the
gathered M-RoPE positions of the unpruned sequence); compact renumbering would destroy the 2-D
layout M-RoPE encodes, so it is refused.
Only images are pruned; video tokens pass through untouched.
"""

from __future__ import annotations

import torch

from vlmprune.adapters.base import Adapter, ImageLayout, register_adapter
from vlmprune.core.base import Region
from vlmprune.core.saliency import qwen_attention_received


class QwenVisionMixin:
    default_positions = "original"
    supports_compact = False
    default_saliency = "attention_received"
    saliency_signals = ("attention_received", "feature_norm")

    def vision_module(self):
        return self.base.visual

    def _full_attention_block(self) -> int:
        return len(self.base.visual.blocks) - 1

    def _window_index(self, grid_thw) -> torch.Tensor | None:
        """Permutation of merged tokens into window order (None: the tower keeps raster order)."""
        return None

    def vision_hooks(self, on_record, needs):
        visual = self.base.visual
        handles = []

        def grab_grid(module, args, kwargs):
            grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
            on_record().raw["grid_thw"] = grid

        handles.append(visual.register_forward_pre_hook(grab_grid, with_kwargs=True))
        if "saliency" in needs and self.saliency == "attention_received":
            attn = visual.blocks[self._full_attention_block()].attn

            def grab_received(module, args, kwargs):
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                with torch.no_grad():
                    rec = qwen_attention_received(
                        module, hidden, kwargs["cu_seqlens"], kwargs["position_embeddings"]
                    )
                on_record().raw["received"] = rec

            handles.append(attn.register_forward_pre_hook(grab_received, with_kwargs=True))
        if "pre_features" in needs:

            def grab_pre(module, args):
                on_record().raw["merger_in"] = args[0].detach()

            handles.append(visual.merger.register_forward_pre_hook(grab_pre))
        return handles

    def _merge_unit(self) -> int:
        return self.config.vision_config.spatial_merge_size**2

    def _to_raster(self, per_group: torch.Tensor, grid_thw) -> torch.Tensor:
        """(G, ...) merged-token values in the tower's order -> raster order over all images."""
        window = self._window_index(grid_thw)
        if window is None:
            return per_group
        return per_group[torch.argsort(window.to(per_group.device))]

    def image_layouts(self, call, record):
        grid = call.get("image_grid_thw")
        if grid is None and record is not None:  # generate() passes mm_encoder_outputs without the grid
            grid = record.raw.get("grid_thw")
        if grid is None:
            raise ValueError(f"{self.family}: `image_grid_thw` is required to prune images")
        m = self.config.vision_config.spatial_merge_size
        layouts = []
        for t, h, w in torch.as_tensor(grid).tolist():
            n = t * (h // m) * (w // m)
            region = (
                Region(torch.arange(n), (h // m, w // m))
                if t == 1
                else Region(torch.arange(n), (t * h // m, w // m))
            )
            layouts.append(ImageLayout(n, torch.arange(n), [region], (t, h // m, w // m)))
        return layouts

    def image_signals(self, record, index, layout):
        raw = record.raw if record is not None else {}
        grid = raw.get("grid_thw")
        if grid is None:
            return {}
        counts = (grid.prod(-1) // self._merge_unit()).tolist()
        start = sum(counts[:index])
        n = counts[index]
        out = {}
        unit = self._merge_unit()
        if "received" in raw:
            groups = raw["received"].view(-1, unit).sum(-1)  # (S,) -> (G,) summed over each 2x2 group
            out["saliency"] = self._to_raster(groups, grid)[start : start + n]
        if "merger_in" in raw:
            hidden = raw["merger_in"]
            groups = hidden.view(-1, unit, hidden.shape[-1]).mean(1)  # (S, Dv) -> (G, Dv)
            out["pre_features"] = self._to_raster(groups, grid)[start : start + n]
        return out


@register_adapter
class Qwen2VLAdapter(QwenVisionMixin, Adapter):
    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
