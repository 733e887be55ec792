"""CUDA graphs and the plugin's position path.

The Qwen families' pruned images and videos carry their kept tokens' M-RoPE offsets in their
embeddings, and the model's Python ``forward`` adds them to the prefill positions. A FULL CUDA
graph replays the whole forward without running that Python, so a prefill batch replayed from a
full graph would keep the K copies of each item's first position. Decode batches carry no
embeddings (their positions come from the M-RoPE delta, set at prompt processing), so only the
mode that captures mixed prefill-decode batches as full graphs (``FULL``) matters: the plugin's
M-RoPE classes turn it into ``FULL_DECODE_ONLY`` (full graphs for decode, prefill run eagerly)
with one log line. ``FULL_AND_PIECEWISE`` (vLLM's default), ``PIECEWISE`` and
``FULL_DECODE_ONLY`` run the forward's Python on every prefill and are kept.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("vlmprune")


def prefill_runs_python(vllm_config) -> None:
    """Downgrade ``vllm_config``'s CUDA-graph mode in place where it would replay prefill
    batches from full graphs (see the module)."""
    from vllm.config import CUDAGraphMode

    compilation = vllm_config.compilation_config
    mode = compilation.cudagraph_mode
    if mode is None or mode.mixed_mode() != CUDAGraphMode.FULL:
        return
    compilation.cudagraph_mode = CUDAGraphMode.FULL_DECODE_ONLY
    logger.warning(
        "vlmprune: cudagraph_mode %s -> FULL_DECODE_ONLY: pruned prefill batches add their "
        "positions in the model's forward, which a full CUDA graph would skip",
        mode.name,
    )
