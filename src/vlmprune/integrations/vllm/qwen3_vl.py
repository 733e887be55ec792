"""Qwen3-VL under vLLM: vLLM's own ``Qwen3VLForConditionalGeneration`` with pruned images and videos.

As Qwen2.5-VL (:mod:`vlmprune.integrations.vllm.qwen2_5_vl`), with the tower's layout: full
attention in every block (saliency from the last one, no window order) and DeepStack. vLLM packs
each visual token's DeepStack features beside its embedding in one row, so a kept row keeps its
own DeepStack features, as in the HF session.

Videos: one budget per video, its frames the regions, as on Qwen2.5-VL; but the prompt numbers
the frames in text (``<t seconds><|vision_start|>`` tokens ``<|vision_end|>`` per frame), so the
tokens a video keeps sit between text that stays. The processor cannot know before the tower runs
how many tokens each frame keeps: a pruned video's run holds its text and K placeholders, all in
the first frame (vLLM's own EVS lays its runs out alike), and every position of the run takes a
row from the model. The model returns the run as the HF session leaves it: the stock run with the
dropped tokens removed, text rows (their text embeddings, no DeepStack) between the kept rows,
each row with its original M-RoPE position (the stock positions of the unpruned run).
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from vlmprune.integrations.vllm.mrope import DIGIT, MRopePruningModel
from vlmprune.integrations.vllm.qwen2_5_vl import QwenProcessorMixin
from vlmprune.integrations.vllm.qwen2_vl import last_block_capture
from vlmprune.integrations.vllm.video import VideoProcessorMixin


class TimestampedVideoProcessorMixin(VideoProcessorMixin):
    """Mixed in before a Qwen processor whose prompts number video frames with timestamps."""

    def _vlmprune_cut(self, modality: str, tokens, spec):
        if modality != "video":
            return super()._vlmprune_cut(modality, tokens, spec)
        from vllm.multimodal.processing import PromptUpdateDetails

        config = self.info.get_hf_config()
        video, first = int(config.video_token_id), int(config.vision_start_token_id)
        ids = list(getattr(tokens, "full", tokens))  # every frame: timestamp, start, N/T tokens, end
        n = ids.count(video)
        keep = n if spec is None else spec.keep_count(n)
        if keep < n:  # the text stays; the K kept tokens after the first frame's start
            text = [t for t in ids if t != video]
            at = text.index(first) + 1
            ids = text[:at] + [video] * keep + text[at:]
        return PromptUpdateDetails.from_seq(ids)  # every position takes a row of the model's

    def _vlmprune_texts(self, prompt, n_images: int, modality: str = "image", out=None):
        """As the HF session reads them: the text after an item in the prompt with every video's
        run written out (timestamps and frame markers are text; a video's text starts after its
        last frame's tokens)."""
        config = self.info.get_hf_config()
        video = int(config.video_token_id)
        ids = list(prompt) if not isinstance(prompt, str) else self.info.get_tokenizer().encode(prompt)
        grids, stamps = (out or {}).get("video_grid_thw"), (out or {}).get("timestamps")
        if grids is None or len(grids) != ids.count(video):  # not every video's run known here
            return super()._vlmprune_texts(ids, n_images, modality)
        runs = [stock_run(config, self.info.get_tokenizer(), g.tolist(), s) for g, s in zip(grids, stamps)]
        expanded, ends = [], []
        for token in ids:
            if token != video:
                expanded.append(token)
                continue
            run = runs[len(ends)]
            ends.append(len(expanded) + max(i for i, t in enumerate(run) if t == video))
            expanded += run
        if modality != "video":
            return super()._vlmprune_texts(expanded, n_images, modality)
        media = set(self._vlmprune_media_ids())
        text = [(i, t) for i, t in enumerate(expanded) if t not in media]
        texts = []
        for j in range(n_images):
            after = [t for i, t in text if i > (ends[j] if j < len(ends) else -1)]
            texts.append(torch.tensor(after or [t for _, t in text], dtype=torch.long))
        return texts


class PrunedQwen3VLProcessor(TimestampedVideoProcessorMixin, QwenProcessorMixin, Qwen3VLMultiModalProcessor):
    pass


def stock_run(config, tokenizer, grid: list[int], timestamps) -> list[int]:
    """A video's stock placeholder run (token ids) for its ``grid`` (t, h, w) and frame timestamps."""
    m = int(config.vision_config.spatial_merge_size)
    t, h, w = (int(g) for g in grid)
    return Qwen3VLMultiModalProcessor.get_video_repl(
        tokens_per_frame=[(h // m) * (w // m)] * t,
        timestamps=[float(s) for s in timestamps],
        tokenizer=tokenizer,
        vision_start_token_id=config.vision_start_token_id,
        vision_end_token_id=config.vision_end_token_id,
        video_token_id=config.video_token_id,
    ).full


def run_positions(model, run: list[int], grid: list[int]) -> torch.Tensor:
    """The stock M-RoPE positions (3, L) of a video's run alone (its first token at 0): the
    positions of the run in any prompt, less its first one's."""
    from vllm.multimodal.inputs import (
        MultiModalFeatureSpec,
        MultiModalFieldConfig,
        MultiModalFieldElem,
        MultiModalKwargsItem,
        PlaceholderRange,
    )

    field = MultiModalFieldConfig.batched("video").field
    data = MultiModalKwargsItem({"video_grid_thw": MultiModalFieldElem(data=torch.tensor(grid), field=field)})
    feature = MultiModalFeatureSpec(
        data=data, modality="video", identifier="run", mm_position=PlaceholderRange(offset=0, length=len(run))
    )
    positions, _ = Qwen3VLForConditionalGeneration._get_mrope_input_positions(run, [feature], model.config)
    return positions


class Qwen3VLPruningModel(MRopePruningModel):
    """Mixed in before vLLM's Qwen3-VL model class or a subclass of it (Qwen3.5): images and
    timestamped videos pruned, DeepStack columns (where the tower has them) kept with their token."""

    def _vlmprune_embed_width(self) -> int:
        return int(self.visual_dim + (self.multiscale_dim if self.use_deepstack else 0))

    def _vlmprune_main_width(self) -> int:
        return int(self.visual_dim)  # the methods see the LLM input; DeepStack columns follow their token

    def _vlmprune_capture(self, needs: set[str]):
        return last_block_capture(self.visual, int(self.config.vision_config.num_heads), needs)

    def _vlmprune_videos(self, kwargs, record, embeds) -> list[dict]:
        infos = super()._vlmprune_videos(kwargs, record, embeds)
        grids = torch.as_tensor(kwargs["video_grid_thw"]).reshape(-1, 3).tolist()
        for info, grid, stamps in zip(infos, grids, kwargs["timestamps"]):
            info["run"] = stock_run(self.config, self._tokenizer, grid, stamps)
            info["run_positions"] = run_positions(self, info["run"], grid)
        return infos

    def _vlmprune_unpruned(self, feature, run: list[int]) -> list[int]:
        if feature.modality != "video":
            return super()._vlmprune_unpruned(feature, run)
        video, first = int(self.config.video_token_id), int(self.config.vision_start_token_id)
        per = self._vlmprune_image_tokens(feature) // int(feature.data["video_grid_thw"].data[0])
        out = []
        for token in (t for t in run if t != video):  # every frame's start, then its N/T tokens
            out += [token] + [video] * per if token == first else [token]
        return out

    def _vlmprune_pack(self, rows: torch.Tensor, idx: torch.Tensor, info: dict) -> torch.Tensor:
        """A video: its run as the session leaves it, (L, D + 6): text rows and the K kept rows
        ``rows`` (K, D), each with its original position's offset from the run's first."""
        if "run" not in info:
            return super()._vlmprune_pack(rows, idx, info)
        run = torch.tensor(info["run"], device=rows.device)
        is_video = run == int(self.config.video_token_id)
        slots = is_video.nonzero()[:, 0]  # (N,) run index of each visual token
        stays = ~is_video
        stays[slots[idx]] = True
        tokens, mask = run[stays], is_video[stays]  # (L,)
        out = rows.new_zeros(tokens.shape[0], rows.shape[1])
        text = self.get_language_model().embed_input_ids(tokens[~mask])
        out[~mask, : text.shape[1]] = text.to(rows.dtype)  # text rows carry no DeepStack features
        out[mask] = rows
        offsets = info["run_positions"].to(rows.device)[:, stays].T  # (3, L_full) -> (L, 3)
        digits = torch.stack([offsets // DIGIT, offsets % DIGIT], dim=2).flatten(1)  # (L, 3) -> (L, 6)
        return torch.cat([out, digits.to(rows.dtype)], dim=1)


@MULTIMODAL_REGISTRY.register_processor(
    PrunedQwen3VLProcessor, info=Qwen3VLProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class PrunedQwen3VLForConditionalGeneration(Qwen3VLPruningModel, Qwen3VLForConditionalGeneration):
    """vLLM's Qwen3-VL with vlmprune's pre-LLM methods on images and videos."""
