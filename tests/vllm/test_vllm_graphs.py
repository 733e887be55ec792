"""The plugin's M-RoPE classes keep prefill batches out of full CUDA graphs (their positions are
added in the model's Python forward); every other mode is kept."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from vllm.config import CUDAGraphMode

from vlmprune.integrations.vllm.cudagraph import prefill_runs_python


@pytest.mark.parametrize("mode", list(CUDAGraphMode) + [None], ids=lambda m: getattr(m, "name", "None"))
def test_full_graphs_for_prefill_turn_into_decode_only(mode, caplog):
    config = SimpleNamespace(compilation_config=SimpleNamespace(cudagraph_mode=mode))
    with caplog.at_level(logging.WARNING, logger="vlmprune"):
        prefill_runs_python(config)
    got = config.compilation_config.cudagraph_mode
    if mode is CUDAGraphMode.FULL:
        assert got is CUDAGraphMode.FULL_DECODE_ONLY
        assert len(caplog.records) == 1 and "FULL_DECODE_ONLY" in caplog.records[0].getMessage()
    else:
        assert got is mode and not caplog.records
    assert got is None or got.mixed_mode() != CUDAGraphMode.FULL  # prefill never replays a full graph
