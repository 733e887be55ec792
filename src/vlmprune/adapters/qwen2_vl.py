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

import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from vlmprune.adapters.base import (
    Adapter,
    ImageLayout,
    ImagesOnlyProcessor,
    edges_to_boxes,
    register_adapter,
    single_view,
)
from vlmprune.adapters.signals import on_attention_calls, received, received_segments
from vlmprune.core.flops import VisionShape
from vlmprune.core.types import Region

QWEN_SPECIAL = (
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def vision_qk(attn, hidden, position_embeddings) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated queries and keys (S, H, hd), float32, of a Qwen vision attention module for its
    input ``hidden`` (S, Dv) (after ``norm1``) and the vision (cos, sin)."""
    rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision
    s = hidden.shape[0]
    bias = None if attn.qkv.bias is None else attn.qkv.bias.float()
    qkv = torch.nn.functional.linear(hidden.float(), attn.qkv.weight.float(), bias)
    q, k, _ = qkv.reshape(s, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)  # each (S, H, hd)
    cos, sin = position_embeddings
    return rotate(q, k, cos.float(), sin.float())


def attention_received(attn, hidden, cu_seqlens, position_embeddings, calls=()) -> torch.Tensor:
    """(S,) attention received per patch in a Qwen vision block with full attention.

    ``hidden`` (S, Dv): the attention module's input for every image concatenated; ``cu_seqlens``
    (n+1,) image (or frame) boundaries; ``position_embeddings`` the vision (cos, sin). For each key
    patch: softmax(q k^T * scale) averaged over heads and over the queries of its own segment.
    ``calls``: the module's own attention calls recorded with their log-sum-exp
    (:func:`~vlmprune.adapters.signals.on_attention_calls`), one per segment, float32; they make the
    signal one fused pass. Otherwise ``q``/``k`` are recomputed in float32 and it takes two.
    """
    heads = attn.num_heads
    if len(calls) == cu_seqlens.numel() - 1 and sum(c[0].shape[2] for c in calls) == hidden.shape[0]:
        # each call: query, key (1, H, S_i, hd), scale, lse (1, H, S_i) -> (S_i,)
        return torch.cat([received(q, k, s, lse)[0].sum(0) / (heads * q.shape[2]) for q, k, s, lse in calls])
    q, k = vision_qk(attn, hidden, position_embeddings)
    scale = getattr(attn, "scaling", None) or q.shape[-1] ** -0.5
    return received_segments(q, k, cu_seqlens, scale, heads)


@dataclass(kw_only=True)
class QwenImageProcessor(ImagesOnlyProcessor):
    """A Qwen processor for images without torchvision: the stock PIL image processor, then
    ``<|image_pad|>`` once per merged token, with the stock keys (``mm_token_type_ids`` too)."""

    merge_size: int = 2
    image_token: ClassVar[str] = "<|image_pad|>"

    def encode(self, images):
        img = self.image_processor(images, return_tensors="pt")
        counts = (img["image_grid_thw"].prod(-1) // self.merge_size**2).tolist()
        return {"pixel_values": img["pixel_values"], "image_grid_thw": img["image_grid_thw"]}, counts

    def finish(self, out: dict) -> None:
        image_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        video_id = self.tokenizer.convert_tokens_to_ids("<|video_pad|>")
        ids = out["input_ids"]
        out["mm_token_type_ids"] = ((ids == image_id).int() + 2 * (ids == video_id).int()).to(torch.int32)


class QwenVisionMixin:
    image_token = "<|image_pad|>"
    special_tokens = {
        "<|image_pad|>": "image_token_id",
        "<|video_pad|>": "video_token_id",
        "<|vision_start|>": "vision_start_token_id",
        "<|vision_end|>": "vision_end_token_id",
    }
    tiny_special = QWEN_SPECIAL
    prunes_video = True
    video_timestamps = False  # Qwen3-style prompts put a timestamp and its own markers around each frame
    default_positions = "original"
    supports_compact = False
    default_saliency = "attention_received"
    saliency_signals = ("attention_received", "feature_norm")
    saliency_doc = "attention received in the last full-attention vision block, or `feature_norm`"
    demo_size = {"max_pixels": 336 * 336}
    bench_image = (672, 672)
    bench_ratios = (0.222,)

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

            def grab_received(args, kwargs, calls):
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                with torch.no_grad():
                    rec = attention_received(
                        attn, hidden, kwargs["cu_seqlens"], kwargs["position_embeddings"], calls
                    )
                on_record().raw["received"] = rec

            handles += on_attention_calls(attn, grab_received)
        if "pre_features" in needs:

            def grab_pre(module, args):
                on_record().raw["merger_in"] = args[0].detach()

            handles.append(visual.merger.register_forward_pre_hook(grab_pre))
        return handles

    def _merge_unit(self) -> int:
        return self.config.vision_config.spatial_merge_size**2

    def media_tokens(self) -> dict[str, int]:
        return {"image": self.image_token_id, "video": int(self.config.video_token_id)}

    def media_layouts(self, kind, call, record):
        if kind == "image":
            return self.image_layouts(call, record)
        return self.video_layouts(call, record)

    @staticmethod
    def _run(record, kind: str) -> dict:
        """The tower run of ``kind``: the model encodes a call's images first, then its videos."""
        if record is None or not record.runs:
            return {}
        return record.runs[-1] if kind == "video" else record.runs[0]

    def _grid(self, call, record, kind: str):
        grid = call.get(f"{kind}_grid_thw")
        if grid is None:  # generate() passes mm_encoder_outputs without the grid
            grid = self._run(record, kind).get("grid_thw")
        if grid is None:
            raise ValueError(f"{self.family}: `{kind}_grid_thw` is required to prune {kind}s")
        return torch.as_tensor(grid).tolist()

    def image_layouts(self, call, record):
        m = self.config.vision_config.spatial_merge_size
        layouts = []
        for t, h, w in self._grid(call, record, "image"):
            n = t * (h // m) * (w // m)
            region = Region(torch.arange(n), (t * h // m, w // m))
            layouts.append(ImageLayout(n, torch.arange(n), [region], (t, h // m, w // m)))
        return layouts

    def video_layouts(self, call, record):
        """One layout per video: ``t`` frames (temporal patches) of ``h/m x w/m`` merged tokens, in
        the tower's frame-major raster order; each frame is a region."""
        m = self.config.vision_config.spatial_merge_size
        layouts = []
        for t, h, w in self._grid(call, record, "video"):
            per = (h // m) * (w // m)
            frames = [Region(torch.arange(i * per, (i + 1) * per), (h // m, w // m)) for i in range(t)]
            layouts.append(ImageLayout(t * per, torch.arange(t * per), frames, (t, h // m, w // m), "video"))
        return layouts

    def image_signals(self, record, index, layout):
        raw = self._run(record, layout.kind)
        grid = raw.get("grid_thw")
        if grid is None:
            return {}
        counts = (grid.prod(-1) // self._merge_unit()).tolist()
        start = sum(counts[:index])
        return {k: v[start : start + counts[index]] for k, v in self._raster_signals(raw).items()}

    def _raster_signals(self, raw: dict) -> dict:
        """The run's per-patch signals per merged token, in raster order over all its images:
        computed once per run (every image of a call slices the same tensors)."""
        if "raster" not in raw:
            unit, out = self._merge_unit(), {}
            if "received" in raw:
                out["saliency"] = raw["received"].view(-1, unit).sum(-1)  # (S,) -> (G,) summed per 2x2 group
            if "merger_in" in raw:
                hidden = raw["merger_in"]
                out["pre_features"] = hidden.view(-1, unit, hidden.shape[-1]).mean(1)  # (S, Dv) -> (G, Dv)
            window = self._window_index(raw["grid_thw"].cpu()) if out else None  # the grid, read once
            if window is not None:
                inverse = torch.argsort(window).to(next(iter(out.values())).device)
                out = {k: v[inverse] for k, v in out.items()}
            raw["raster"] = out
        return raw["raster"]

    def token_geometry(self, image_size, processor, selection=None):
        """Each merged token is a ``patch * merge`` px square of the image as resized (squashed) to
        the grid the model saw: the selection's grid, or the processor's ``image_grid_thw`` for
        this image size."""
        width, height = image_size
        if selection is not None:
            t, gh, gw = (int(x) for x in selection.grid)
        else:
            from PIL import Image

            ip = getattr(processor, "image_processor", processor)
            grid = ip([Image.new("RGB", (width, height))], return_tensors="pt")["image_grid_thw"][0]
            m = int(self.config.vision_config.spatial_merge_size)
            t, gh, gw = int(grid[0]), int(grid[1]) // m, int(grid[2]) // m
        if t != 1:
            raise ValueError(f"only images (t == 1) can be rendered, got grid {(t, gh, gw)}")
        f = int(self.config.vision_config.patch_size) * int(self.config.vision_config.spatial_merge_size)
        xs = np.arange(gw + 1) * (width / gw)
        ys = np.arange(gh + 1) * (height / gh)
        text = f"{self.label}: resize to {gw * f}x{gh * f}, {gh}x{gw} merged tokens of {f}x{f} px"
        return single_view(edges_to_boxes(xs, ys, width, height), (gh, gw), (width, height), text)

    @classmethod
    def prompt(cls, question: str, n_images: int = 1) -> str:
        img = "<|vision_start|><|image_pad|><|vision_end|>" * n_images
        return (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            f"{img}{question}<|im_end|>\n<|im_start|>assistant\n"
        )

    @classmethod
    def video_placeholder(cls, frames: int, per_frame: int, fps: float = 2.0) -> str:
        """The placeholder text of a video of ``frames`` temporal patches of ``per_frame`` tokens
        (expanded: one ``<|video_pad|>`` per token), as the stock processor writes it."""
        if not cls.video_timestamps:
            return "<|vision_start|>" + "<|video_pad|>" * (frames * per_frame) + "<|vision_end|>"
        step = 2 / fps  # a temporal patch spans two frames
        return "".join(
            f"<{i * step:.1f} seconds><|vision_start|>" + "<|video_pad|>" * per_frame + "<|vision_end|>"
            for i in range(frames)
        )

    @classmethod
    def tiny_video(cls, processor, videos: int, frames: int, seed: int = 0, patches=(8, 12)):
        """``(placeholder text, tensors)`` of ``videos`` random videos of ``frames`` frames and
        ``patches`` (h, w) vision patches, as the stock video processor lays them out
        (``pixel_values_videos`` rows of C x temporal x patch x patch values, ``video_grid_thw``)."""
        ip = processor.image_processor
        t, (h, w) = frames // ip.temporal_patch_size, patches
        per_frame = (h // ip.merge_size) * (w // ip.merge_size)
        g = torch.Generator().manual_seed(seed)
        width = 3 * ip.temporal_patch_size * ip.patch_size**2
        tensors = {
            "pixel_values_videos": torch.randn(videos * t * h * w, width, generator=g),
            "video_grid_thw": torch.tensor([[t, h, w]] * videos),
        }
        return cls.video_placeholder(t, per_frame), tensors

    @classmethod
    def tiny_prompt(cls, question: str, n_images: int = 1) -> str:
        img = "<|vision_start|><|image_pad|><|vision_end|>" * n_images
        return f"system You are a helpful assistant. user {img}{question} assistant"

    @classmethod
    def tiny_text(cls) -> dict:
        return {
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
        }

    @classmethod
    def tiny_ids(cls, tok) -> dict:
        return {attr: tok.convert_tokens_to_ids(token) for token, attr in cls.special_tokens.items()}

    @classmethod
    def tiny_processor(
        cls, tok, max_pixels: int = 168 * 168, patch_size: int = 14, chat_template: str | None = None
    ):
        from transformers import Qwen2VLImageProcessorPil

        ip = Qwen2VLImageProcessorPil(
            min_pixels=56 * 56,
            max_pixels=max_pixels,
            patch_size=patch_size,
            merge_size=2,
            temporal_patch_size=2,
        )
        return QwenImageProcessor(image_processor=ip, tokenizer=tok, chat_template=chat_template)

    @classmethod
    def fallback_processor(cls, path, config, tokenizer, chat_template):
        """The processor of a checkpoint directory when the stock one cannot be built (no torchvision)."""
        from transformers import Qwen2VLImageProcessorPil

        ip = Qwen2VLImageProcessorPil.from_pretrained(path, local_files_only=True)
        merge = int(config.vision_config.spatial_merge_size)
        return QwenImageProcessor(
            image_processor=ip, tokenizer=tokenizer, merge_size=merge, chat_template=chat_template
        )

    @classmethod
    def processor_size(cls, config, image_size=None) -> dict:
        w, h = image_size
        if config is None:
            return {"max_pixels": w * h}
        return {"max_pixels": w * h, "patch_size": int(config.vision_config.patch_size)}

    @classmethod
    def vision_grids(cls, config, inputs) -> dict:
        grids = [inputs[k] for k in ("image_grid_thw", "video_grid_thw") if inputs.get(k) is not None]
        return {"grid_thw": torch.cat(grids)}

    @classmethod
    def bench_text(cls) -> dict:
        return {
            "num_key_value_heads": 2,
            "rope_parameters": {"rope_type": "default", "mrope_section": [8, 12, 12]},
        }

    @classmethod
    def shrink_arch(cls, d: dict) -> None:
        """Shrink a real-size config dict in place for CPU smoke tests (same structure: window and
        full-attention pattern, GQA, M-RoPE sections in the same ratio, the real vocabulary)."""
        d["vision_config"].update(cls.tiny_arch_vision())
        text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4}
        text.update(num_key_value_heads=2, max_window_layers=4)
        d["text_config"].update(text)
        d["text_config"].pop("head_dim", None)
        rope = dict(d["text_config"].get("rope_parameters") or {})
        rope["mrope_section"] = [2, 3, 3]
        d["text_config"]["rope_parameters"] = rope


@register_adapter
class Qwen2VLAdapter(QwenVisionMixin, Adapter):
    family = "qwen2_vl"
    label = "Qwen2-VL"
    model_types = ("qwen2_vl",)
    model_class = "Qwen2VLForConditionalGeneration"
    config_class = "Qwen2VLConfig"
    archs = ("qwen2-vl-7b",)
    tiny_name = "tiny-qwen2-vl"

    @classmethod
    def vision_shape(cls, config) -> VisionShape:
        v = config.vision_config
        c = int(v.embed_dim) * int(v.spatial_merge_size) ** 2
        return VisionShape(
            num_layers=int(v.depth),
            hidden=int(v.embed_dim),
            intermediate=int(v.embed_dim * v.mlp_ratio),
            num_heads=int(v.num_heads),
            patch_size=int(v.patch_size),
            in_channels=int(v.in_channels),
            temporal_patch_size=int(v.temporal_patch_size),
            spatial_merge_size=int(v.spatial_merge_size),
            connector_hidden=c,
            connector_out=int(v.hidden_size),
        )

    @classmethod
    def tiny_config(cls, tok, text: dict, attn: str, max_pixels: int = 168 * 168):
        from transformers import Qwen2VLConfig

        vc = dict(depth=3, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2)
        vc.update(patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        return Qwen2VLConfig(
            text_config=text, vision_config=vc, attn_implementation=attn, **cls.tiny_ids(tok)
        )

    @classmethod
    def bench_vision(cls) -> dict:
        return {"depth": 4, "embed_dim": 64, "num_heads": 4, "mlp_ratio": 4, "hidden_size": 256}

    @classmethod
    def tiny_arch_vision(cls) -> dict:
        return {"depth": 4, "embed_dim": 32, "num_heads": 2, "hidden_size": 64}
