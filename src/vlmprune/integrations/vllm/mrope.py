"""Original M-RoPE positions for pruned images under vLLM (the EVS pattern, carried by the model).

Every image (video, where the family prunes them) embedding carries ``EXTRA`` more columns, each
kept token's (t, h, w) offset from its image's first position, each as two base-256 digits (exact
in bfloat16). A video's t offset is its frame's stock temporal position (the frame index times
the family's ``second_per_grid_ts * tokens_per_second``, truncated, as vLLM and HF compute it).
``get_mrope_input_positions`` computes the stock positions of the *unpruned* prompt (the family's
own code, on the prompt with each item's N placeholders) and gives each pruned item's K
placeholders its first position; ``embed_input_ids`` strips the columns and ``forward`` adds them
to those positions. Text after an item, and decoding, go on from where the unpruned item would
have ended.

vLLM's runners have a pruning path of their own (``recompute_mrope_positions``), but they enable
it only with EVS video pruning, and the CPU model runner never sets its multimodal-pruning flag
(vLLM 0.32): the positions therefore travel with the embeddings and the model applies them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from vlmprune.adapters.signals import on_attention_calls, received_segments
from vlmprune.core.types import Region
from vlmprune.integrations.vllm.common import PruningModel, all_heads, whole
from vlmprune.integrations.vllm.cudagraph import prefill_runs_python
from vlmprune.integrations.vllm.lse import SdpaLseRecorder

EXTRA = 6  # appended columns: (t, h, w) offsets of a kept token in its image, high and low digits
DIGIT = 256


class MRopePruningModel(PruningModel):
    """Mixed in before a Qwen-style (M-RoPE, ``image_grid_thw``, 2x2 merger) stock vLLM model class.

    A family implements ``_vlmprune_capture`` and, where its stock image embedding rows are wider
    than the LLM's hidden size, ``_vlmprune_embed_width()``. Images and videos are pruned."""

    _vlmprune_rel = None
    vlmprune_modalities = ("image", "video")

    def _vlmprune_embed_width(self) -> int:
        """The width of the stock image embedding rows: the LLM's hidden size."""
        return int(self.config.text_config.hidden_size)

    def __init__(self, *, vllm_config, prefix: str = ""):
        if vllm_config.parallel_config.pipeline_parallel_size > 1:
            # later pipeline stages never see the embeddings that carry the positions
            raise NotImplementedError("vlmprune: M-RoPE models under pipeline parallelism are not supported")
        prefill_runs_python(vllm_config)  # the positions are added in forward (see .cudagraph)
        super().__init__(vllm_config=vllm_config, prefix=prefix)

    def _vlmprune_merge(self) -> int:
        return int(self.config.vision_config.spatial_merge_size)

    def _vlmprune_image_tokens(self, feature) -> int:
        """An image's (video's) unpruned placeholder count, from its ``image_grid_thw``
        (``video_grid_thw``)."""
        return int(feature.data[f"{feature.modality}_grid_thw"].data.prod()) // self._vlmprune_merge() ** 2

    def _vlmprune_unpruned(self, feature, run: list[int]) -> list[int]:
        """An item's placeholder run in the prompt (K tokens) -> the stock run (N tokens)."""
        return [run[0]] * self._vlmprune_image_tokens(feature)

    def _vlmprune_images(self, kwargs, record, embeds) -> list[dict]:
        grids = torch.as_tensor(kwargs["image_grid_thw"]).reshape(-1, 3).tolist()
        m = self._vlmprune_merge()
        raster = to_raster(record, m * m)
        out, start = [], 0
        for t, h, w in grids:
            n, gh, gw = t * (h // m) * (w // m), h // m, w // m
            info = {"regions": whole(n, (t * gh, gw)), "grid": (t, gh, gw), "hw": (gh, gw)}
            for key, value in raster.items():
                info[key] = value[start : start + n]
            out.append(info)
            start += n
        return out

    def _vlmprune_videos(self, kwargs, record, embeds) -> list[dict]:
        """Per video: its frames as regions, its temporal position step (``t_factor``)."""
        infos = self._vlmprune_images({"image_grid_thw": kwargs["video_grid_thw"]}, record, embeds)
        seconds = kwargs.get("second_per_grid_ts")
        per_second = float(getattr(self.config.vision_config, "tokens_per_second", 1.0))
        for i, info in enumerate(infos):
            t, gh, gw = info["grid"]
            per = gh * gw
            info["regions"] = [Region(torch.arange(f * per, (f + 1) * per), (gh, gw)) for f in range(t)]
            step = 1.0 if seconds is None else float(torch.as_tensor(seconds).flatten()[i])
            info.update(kind="video", t_factor=step * per_second)
        return infos

    def _vlmprune_pack(self, rows, idx, info):
        gh, gw = info["hw"]
        frame = idx // (gh * gw)
        t_factor = info.get("t_factor", 1.0)
        if t_factor != 1.0:  # the stock temporal positions: (frame * t_factor) truncated, as vLLM's
            steps = (np.arange(info["grid"][0]) * t_factor).astype(np.int64)
            frame = torch.from_numpy(steps).to(idx.device)[frame]
        rel = torch.stack([frame, (idx // gw) % gh, idx % gw], dim=1)  # (K, 3)
        digits = torch.stack([rel // DIGIT, rel % DIGIT], dim=2).flatten(1)  # (K, 3) -> (K, 6)
        return torch.cat([rows, digits.to(rows.dtype)], dim=1)  # (K, D) -> (K, D + 6)

    def get_mrope_input_positions(self, input_tokens, mm_features):
        """The stock positions of the unpruned prompt, each pruned image's run shortened to K
        copies of its first position."""
        tokens, features, runs, shift = list(input_tokens), [], [], 0
        for feature in sorted(mm_features, key=lambda f: f.mm_position.offset):
            offset, length = feature.mm_position.offset + shift, feature.mm_position.length
            if feature.modality in self.vlmprune_modalities:  # every item carries its offsets, pruned or not
                unpruned = self._vlmprune_unpruned(feature, tokens[offset : offset + length])
                tokens[offset : offset + length] = unpruned  # with the placeholders the processor cut
                full = len(unpruned)
                placed = replace(feature.mm_position, offset=offset, length=full, is_embed=None)
                feature = replace(feature, mm_position=placed)
                runs.append((offset, full, length))
                shift += full - length
            else:
                feature = replace(feature, mm_position=replace(feature.mm_position, offset=offset))
            features.append(feature)
        positions, delta = super().get_mrope_input_positions(tokens, features)
        parts, start = [], 0
        for offset, full, kept in runs:
            parts.append(positions[:, start:offset])
            parts.append(positions[:, offset : offset + 1].expand(-1, kept))  # the image's start, K times
            start = offset + full
        parts.append(positions[:, start:])
        return torch.cat(parts, dim=1).contiguous(), int(delta) + shift

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None, **kwargs):
        self._vlmprune_rel = None
        if multimodal_embeddings is not None and len(multimodal_embeddings) > 0 and is_multimodal is not None:
            width = self._vlmprune_embed_width()
            cleaned, rels = [], []
            for emb in multimodal_embeddings:
                if emb.shape[-1] == width + EXTRA:
                    cleaned.append(_same_modality(emb, emb[:, :width]))
                    digits = emb[:, width:].round().long().view(-1, 3, 2)  # (K, 6) -> (K, 3, 2)
                    rels.append(digits[..., 0] * DIGIT + digits[..., 1])
                else:
                    cleaned.append(emb)
                    rels.append(torch.zeros(emb.shape[0], 3, dtype=torch.long, device=emb.device))
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


def to_raster(record: dict, unit: int) -> dict:
    """Captured per-patch signals (in the tower's window order when ``window_index`` was
    recorded) -> per merged token, in raster order."""
    out = {}
    if "received" in record:
        out["saliency"] = record["received"].view(-1, unit).sum(-1)  # (S,) -> (G,)
    if "merger_in" in record:
        hidden = record["merger_in"]
        out["pre_features"] = hidden.view(-1, unit, hidden.shape[-1]).mean(1)  # (S, Dv) -> (G, Dv)
    window = record.get("window_index")
    if window is not None and out:
        inverse = torch.argsort(window.to(next(iter(out.values())).device))
        out = {k: v[inverse] for k, v in out.items()}
    return out


def grab_received(block_attn, record: dict, total_heads: int) -> list:
    """Hooks on a vision block's inner attention (``query``/``key`` rotated, ``cu_seqlens``) that
    store the attention each patch receives in ``record["received"]``; on the CPU the block's own
    attention call gives each segment's log-sum-exp (:class:`SdpaLseRecorder`), so the signal
    costs one fused pass more, else two."""

    def grab(args, kwargs, calls):
        q, k = kwargs["query"][0].float(), kwargs["key"][0].float()  # (1, S, H, hd) -> (S, H, hd)
        cu = kwargs["cu_seqlens"]
        lses = [c[3] for c in calls] if len(calls) == cu.numel() - 1 else None
        with torch.no_grad():
            got = received_segments(q, k, cu, q.shape[-1] ** -0.5, total_heads, lses)
            record["received"] = all_heads(got, q.shape[1], total_heads)

    return on_attention_calls(block_attn, grab, SdpaLseRecorder)


def grab_merger_input(merger, record: dict):
    """A forward pre-hook handle that stores the merger's input (S, Dv) in ``record["merger_in"]``.
    The hook sits on the merger's first norm (``ln_q``) where it has one: vLLM's
    ``support_torch_compile`` classes (Qwen2.5-VL's merger) call their ``forward`` directly, so
    hooks on the merger itself never run."""

    def grab(module, args):
        record["merger_in"] = args[0].detach().reshape(-1, args[0].shape[-1])  # (S, Dv)

    return getattr(merger, "ln_q", merger).register_forward_pre_hook(grab)


def _same_modality(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    from vllm.multimodal.utils import copy_mm_embedding_modality

    return copy_mm_embedding_modality(src, dst)
