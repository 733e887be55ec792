"""LLaVA-NeXT under the plugin, beyond the family loops of the other vLLM tests: a configuration
for a model the HF adapter refuses (a CLIP tower read with the ``"full"`` strategy) fails at
start-up in one line."""

from __future__ import annotations

import json
import shutil

from vllm_helpers import start_fails


def test_refuses_what_the_hf_adapter_refuses(tiny_dir, tmp_path):
    model = tmp_path / "full-strategy"
    shutil.copytree(tiny_dir("llava_next"), model)
    config = json.loads((model / "config.json").read_text())
    config["vision_feature_select_strategy"] = "full"
    (model / "config.json").write_text(json.dumps(config))
    last = start_fails(model, "hf_overrides={'vlmprune': {'method': 'divprune', 'budget': 8}}")
    assert last.startswith(
        "vlmprune.integrations.vllm.config.ConfigError: vlmprune: llava_next prunes CLIP"
    ), last
    assert "strategy 'full'" in last, last
