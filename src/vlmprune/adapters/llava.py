"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP tower, CLS dropped, MLP projector, Llama.

Visual tokens: ``(image_size // patch_size)**2`` per image (576 at 336 px / patch 14), raster
order, one contiguous ``<image>`` run each. Saliency: the CLS query's attention in the vision layer
that produced the selected features (methods.md), recomputed from that layer's input.
"""

from __future__ import annotations

import torch

from vlmprune.adapters.base import Adapter, ImageLayout, VisionRecord, register_adapter
from vlmprune.core.base import Region
from vlmprune.core.saliency import cls_attention
from vlmprune.errors import UnsupportedModelError


class ClipTowerMixin:
    """Hooks shared by the CLIP-tower families (LLaVA, LLaVA-NeXT)."""

    def _check_clip(self):
        vcfg = self.config.vision_config
        if getattr(vcfg, "model_type", "") != "clip_vision_model":
            raise UnsupportedModelError(
                f"{self.family}: only CLIP vision towers are supported, got {getattr(vcfg, 'model_type', None)!r}"
            )
        strategy = self.config.vision_feature_select_strategy
        if strategy != "default":
            raise UnsupportedModelError(
                f"{self.family}: vision_feature_select_strategy={strategy!r} is not supported (only 'default')"
            )
        layer = self.config.vision_feature_layer
        if not isinstance(layer, int):
            raise UnsupportedModelError(
                f"{self.family}: a list vision_feature_layer={layer!r} is not supported"
            )
        n_states = vcfg.num_hidden_layers + 1  # hidden_states: embeddings + one per layer
        self.saliency_layer = (layer if layer >= 0 else layer + n_states) - 1
        self.side = vcfg.image_size // vcfg.patch_size

    def vision_module(self):
        return self.base.vision_tower

    def vision_hooks(self, on_record, needs):
        handles = []
        if needs & {"saliency", "keys"} and self.saliency == "cls_attention":
            tower = self.base.vision_tower
            tower = getattr(tower, "vision_model", tower)  # 5.x CLIPVisionModel holds the encoder itself
            attn = tower.encoder.layers[self.saliency_layer].self_attn

            def grab_cls(module, args, kwargs):
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                with torch.no_grad():
                    sal, keys = cls_attention(module, hidden)
                rec = on_record().raw
                rec.setdefault("saliency", []).append(sal)
                rec.setdefault("keys", []).append(keys)

            handles.append(attn.register_forward_pre_hook(grab_cls, with_kwargs=True))
        if "pre_features" in needs:

            def grab_pre(module, args):
                on_record().raw.setdefault("pre_features", []).append(args[0].detach())

            handles.append(self.base.multi_modal_projector.register_forward_pre_hook(grab_pre))
        return handles

    def _views(self, record: VisionRecord, key: str):
        got = record.raw.get(key) if record is not None else None
        return None if not got else torch.cat(got, dim=0)


@register_adapter
class LlavaAdapter(ClipTowerMixin, Adapter):
    family = "llava"
    model_types = ("llava",)
    default_positions = "compact"
    supports_compact = True

    def __init__(self, model, saliency="auto"):
        super().__init__(model, saliency)
        self._check_clip()

    def image_layouts(self, call, record):
        n = self.side * self.side
        ids = call["input_ids"]
        n_images = int((ids == self.image_token_id).sum()) // n
        for key in ("saliency", "pre_features"):  # the tower's own count (generate may repeat rows)
            views = self._views(record, key)
            if views is not None:
                n_images = int(views.shape[0])
                break
        region = Region(torch.arange(n), (self.side, self.side))
        return [ImageLayout(n, torch.arange(n), [region], (self.side, self.side)) for _ in range(n_images)]

    def image_signals(self, record, index, layout):
        out = {}
        for key in ("saliency", "keys"):
            views = self._views(record, key)
            if views is not None:
                out[key] = views[index, 1:]  # drop the CLS column/row: (T,) -> (N,)
        pre = self._views(record, "pre_features")
        if pre is not None:
            out["pre_features"] = pre[index]
        return out
