"""Videos under the vLLM plugin: the processor side shared by the families that prune them.

A video is one item with one budget (``budget`` or ``ratio`` of its T x h x w tokens), its frames
the regions, as in the HF session: the processor cuts its placeholder run from N to K and the
model selects over the whole video (``temporal`` reads the frames' change). vLLM's own video
pruning (EVS, ``--video-pruning-rate``) cuts the same runs by its own rule, so a model with EVS on
refuses a vlmprune configuration, server-wide at start-up and per request with that request.
"""

from __future__ import annotations

from vlmprune.integrations.vllm.config import ConfigError


class VideoProcessorMixin:
    """Mixed in before a family's pruning processor (a :class:`~.common.PruningProcessor`): images
    and videos pruned; the family implements ``_vlmprune_video_id`` and ``_vlmprune_num_videos``."""

    modalities = ("image", "video")

    def _vlmprune_spec(self, hf_kwargs):
        spec = super()._vlmprune_spec(hf_kwargs)
        rate = self.info.ctx.get_mm_config().video_pruning_rate
        if spec is not None and rate:
            raise ConfigError(
                f"vlmprune: vLLM's EVS video pruning (video_pruning_rate={rate}) and vlmprune would both "
                "prune the videos; drop --video-pruning-rate or the vlmprune configuration"
            )
        return spec
