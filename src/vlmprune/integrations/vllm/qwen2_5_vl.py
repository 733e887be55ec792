"""Qwen2.5-VL under vLLM: vLLM's own ``Qwen2_5_VLForConditionalGeneration`` with pruned images.

Saliency is the attention each patch receives in the last full-attention vision block (mean over
heads and over its image's queries, summed over each 2x2 merge group), as the HF adapter's; it
is computed from the rotated queries and keys that block's attention receives, and put back in
raster order with the tower's own window index. VisPruner's pre-merger features come from the
merger's input.

Positions are the original M-RoPE positions (the EVS pattern): every image embedding carries
three extra columns, each kept token's (t, h, w) offset in its image. The prompt's placeholders
all sit at the image's first position (``get_mrope_input_positions``); ``embed_input_ids`` strips
the columns and ``forward`` adds them to those positions. Text after the image and decoding go
on from where the unpruned image would have ended. The runner's own pruning path is not used:
vLLM's runners enable it only with EVS video pruning, and the CPU model runner never sets its
multimodal-pruning flag (vLLM 0.32), so the positions are carried by the model itself.
Videos are not pruned.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from vlmprune.integrations.vllm.common import PruningModel, PruningProcessor, head_sum, hooks, whole

EXTRA = 3  # appended columns: (t, h, w) offsets of a kept token in its image


class PrunedQwen2_5_VLProcessor(PruningProcessor, Qwen2_5_VLMultiModalProcessor):
    positions = ("original",)

    def _vlmprune_image_id(self) -> int:
        return int(self.info.get_hf_config().image_token_id)

    def _vlmprune_media_ids(self) -> list[int]:
        config = self.info.get_hf_config()
        return [int(config.image_token_id), int(config.video_token_id)]

    def _vlmprune_num_images(self, out) -> int:
        grid = out.get("image_grid_thw")
        return 0 if grid is None else len(grid)


def received(q: torch.Tensor, k: torch.Tensor, cu_seqlens, total_heads: int, chunk: int = 1024):
    """Attention received per patch: ``q``, ``k`` (1, S, H, hd) rotated, ``cu_seqlens`` (n+1,)
    segment bounds. Returns (S,): softmax(q k^T / sqrt(hd)) summed over heads and the queries of
    the patch's segment, divided by (heads x segment length); heads split across ranks are
    all-reduced."""
    q, k = q[0].float(), k[0].float()  # (S, H, hd)
    s, heads, hd = q.shape
    out = torch.zeros(s, dtype=torch.float32, device=q.device)
    bounds = [int(b) for b in cu_seqlens.tolist()]
    for a, b in zip(bounds[:-1], bounds[1:]):
        kb = k[a:b].transpose(0, 1)  # (H, S_i, hd)
        for c in range(a, b, chunk):
            qb = q[c : min(b, c + chunk)].transpose(0, 1)  # (H, C, hd)
            probs = torch.softmax((qb @ kb.transpose(-1, -2)) * hd**-0.5, dim=-1)  # (H, C, S_i)
            out[a:b] += probs.sum(dim=(0, 1))  # (H, C, S_i) -> (S_i,)
        out[a:b] /= b - a
    return head_sum(out, heads, total_heads)


@MULTIMODAL_REGISTRY.register_processor(
    PrunedQwen2_5_VLProcessor, info=Qwen2_5_VLProcessingInfo, dummy_inputs=Qwen2_5_VLDummyInputsBuilder
)
class PrunedQwen2_5_VLForConditionalGeneration(PruningModel, Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL with vlmprune's pre-LLM methods on images."""

    _vlmprune_rel = None

    def __init__(self, *, vllm_config, prefix: str = ""):
        if vllm_config.parallel_config.pipeline_parallel_size > 1:
            # later pipeline stages never see the embeddings that carry the positions
            raise NotImplementedError("vlmprune: Qwen2.5-VL under pipeline parallelism is not supported")
        super().__init__(vllm_config=vllm_config, prefix=prefix)

    @contextmanager
    def _vlmprune_capture(self, needs: set[str]):
        visual = self.visual
        record: dict = {}

        def with_metadata(module, args, kwargs):  # the tower's own window order, kept for later
            grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
            if kwargs.get("encoder_metadata") is None and grid is not None:
                kwargs = {**kwargs, "encoder_metadata": module.prepare_encoder_metadata(grid)}
            if kwargs.get("encoder_metadata") is not None:
                record["window_index"] = kwargs["encoder_metadata"]["window_index"]
            return args, kwargs

        handles = [visual.register_forward_pre_hook(with_metadata, with_kwargs=True)]
        if "saliency" in needs:
            block = visual.blocks[int(self.config.vision_config.fullatt_block_indexes[-1])]
            total = int(self.config.vision_config.num_heads)

            def grab(module, args, kwargs):
                with torch.no_grad():
                    record["received"] = received(kwargs["query"], kwargs["key"], kwargs["cu_seqlens"], total)

            handles.append(block.attn.attn.register_forward_pre_hook(grab, with_kwargs=True))
        if "pre_features" in needs:

            def grab_pre(module, args):
                record["merger_in"] = args[0].detach().reshape(-1, args[0].shape[-1])  # (S, Dv)

            handles.append(visual.merger.register_forward_pre_hook(grab_pre))
        with hooks(handles):
            yield record

    def _vlmprune_images(self, kwargs, record, embeds) -> list[dict]:
        grids = torch.as_tensor(kwargs["image_grid_thw"]).reshape(-1, 3).tolist()
        m = int(self.config.vision_config.spatial_merge_size)
        raster = _to_raster(record, m * m)
        out, start = [], 0
        for t, h, w in grids:
            n, gh, gw = t * (h // m) * (w // m), h // m, w // m
            info = {"regions": whole(n, (t * gh, gw)), "grid": (t, gh, gw), "hw": (gh, gw)}
            for key, value in raster.items():
                info[key] = value[start : start + n]
            out.append(info)
            start += n
        return out

    def _vlmprune_pack(self, rows, idx, info):
        gh, gw = info["hw"]
        rel = torch.stack([idx // (gh * gw), (idx // gw) % gh, idx % gw], dim=1)  # (K, 3)
        return torch.cat([rows, rel.to(rows.dtype)], dim=1)  # (K, D) -> (K, D + 3)

    # -- positions ------------------------------------------------------------------------------
    def get_mrope_input_positions(self, input_tokens, mm_features):
        parts, st, nxt = [], 0, 0  # st: next prompt index; nxt: next free position
        for feature in sorted(mm_features, key=lambda f: f.mm_position.offset):
            offset, length = feature.mm_position.offset, feature.mm_position.length
            ((_, t, h, w, t_factor),) = list(self.iter_mm_grid_thw([feature]))
            text_len = offset - st
            parts.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + nxt)
            base = nxt + text_len
            if feature.modality == "image":  # every placeholder at the image's start; forward adds offsets
                parts.append(np.full((3, length), base, dtype=np.int64))
                nxt = base + max(t, h, w)
            else:
                grid = np.indices((t, h, w))
                if t_factor != 1.0:
                    grid[0] = (grid[0] * t_factor).astype(np.int64)
                block = grid.reshape(3, -1) + base
                parts.append(block)
                nxt = int(block.max()) + 1
            st = offset + length
        tail = len(input_tokens) - st
        parts.append(np.broadcast_to(np.arange(tail), (3, tail)) + nxt)
        nxt += tail
        positions = np.concatenate(parts, axis=1).reshape(3, -1)
        return torch.from_numpy(np.ascontiguousarray(positions)), int(nxt - len(input_tokens))

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None, **kwargs):
        self._vlmprune_rel = None
        if multimodal_embeddings is not None and len(multimodal_embeddings) > 0 and is_multimodal is not None:
            width = int(self.config.text_config.hidden_size)
            cleaned, rels = [], []
            for emb in multimodal_embeddings:
                if emb.shape[-1] == width + EXTRA:
                    cleaned.append(_same_modality(emb, emb[:, :width]))
                    rels.append(emb[:, width:].round().long())
                else:
                    cleaned.append(emb)
                    rels.append(torch.zeros(emb.shape[0], EXTRA, dtype=torch.long, device=emb.device))
            self._vlmprune_rel = (is_multimodal, torch.cat(rels))
            multimodal_embeddings = cleaned
        return super().embed_input_ids(
            input_ids, multimodal_embeddings, is_multimodal=is_multimodal, **kwargs
        )

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        stash, self._vlmprune_rel = self._vlmprune_rel, None
        if stash is not None and positions.dim() == 2:
            mask, rel = stash
            view = positions[:, : mask.shape[0]]
            view[:, mask] += rel.T.to(positions)  # (K, 3) -> (3, K) offsets onto the image's start
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)

    def get_encoder_cudagraph_config(self):
        # embed_multimodal selects and appends positions: the captured-encoder path would skip it
        return replace(super().get_encoder_cudagraph_config(), modalities=[])


def _to_raster(record: dict, unit: int) -> dict:
    """Captured per-patch signals in the tower's window order -> per merged token, raster order."""
    out = {}
    window = record.get("window_index")
    if "received" in record:
        out["saliency"] = record["received"].view(-1, unit).sum(-1)  # (S,) -> (G,)
    if "merger_in" in record:
        hidden = record["merger_in"]
        out["pre_features"] = hidden.view(-1, unit, hidden.shape[-1]).mean(1)  # (S, Dv) -> (G, Dv)
    if window is not None:
        inverse = torch.argsort(window.to(next(iter(out.values())).device)) if out else None
        out = {k: v[inverse] for k, v in out.items()}
    return out


def _same_modality(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    from vllm.multimodal.utils import copy_mm_embedding_modality

    return copy_mm_embedding_modality(src, dst)
