"""Real-size architecture configs of the supported VLMs, loaded offline (no weights, no network).

The JSON files in ``vlmprune/configs/`` hold the published ``config.json`` values of each
checkpoint (source noted in each file's ``_source``) and build the stock transformers config
classes. ``build_model`` instantiates the stock model class with random weights: real size on a
GPU (benchmarks of speed and memory need the shapes, not the weights), or the shrunk
``tiny_variant`` on a CPU (smoke tests).

>>> list_archs()
['llava-1.5-7b', 'llava-next-7b', 'qwen2-vl-7b', 'qwen2.5-vl-7b']
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

_CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# The only classes the JSON files may name (they are looked up on the transformers module).
_CONFIG_CLASSES = {"LlavaConfig", "LlavaNextConfig", "Qwen2VLConfig", "Qwen2_5_VLConfig"}
_MODEL_CLASSES = {
    "LlavaForConditionalGeneration",
    "LlavaNextForConditionalGeneration",
    "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration",
}

# Shrunk dimensions per family for CPU smoke tests. Structure is kept: same model classes,
# vision_feature_layer / select strategy, CLS + patch 14 CLIP tower, anyres pinpoints (scaled with
# the crop size), Qwen patch 14 / merge 2 / temporal patch 2 / window 112 px, a full-attention
# block every other block (7/15/23/31 of 32 -> 1/3 of 4), GQA (2 KV heads for 4 query heads),
# M-RoPE sections in the same 1:1.5:1.5 ratio summing to head_dim / 2, and the real vocabulary
# (so the published special-token ids stay valid).
_TINY_CLIP = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_hidden_layers": 3,
    "image_size": 56,
    "patch_size": 14,
    "projection_dim": 16,
}
_TINY_LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 16,
}
_TINY_QWEN_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_window_layers": 4,
}
_TINY_QWEN_MROPE = [2, 3, 3]
_TINY_OVERRIDES = {
    "llava": {"vision_config": _TINY_CLIP, "text_config": _TINY_LLAMA},
    "llava_next": {"vision_config": _TINY_CLIP, "text_config": _TINY_LLAMA},
    "qwen2_5_vl": {
        "vision_config": {
            "depth": 4,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "fullatt_block_indexes": [1, 3],
        },
        "text_config": _TINY_QWEN_TEXT,
    },
    "qwen2_vl": {
        "vision_config": {"depth": 4, "embed_dim": 32, "num_heads": 2, "hidden_size": 64},
        "text_config": _TINY_QWEN_TEXT,
    },
}


def list_archs() -> list[str]:
    """Names of the bundled architecture configs (file stems of ``vlmprune/configs/*.json``)."""
    return sorted(p.stem for p in _CONFIG_DIR.glob("*.json"))


def arch_info(name: str) -> dict:
    """The bundled JSON of ``name``: ``hub_id``, ``model_class``, ``config_class``, ``_source``,
    ``_comment`` and the published ``config`` dict (a fresh copy)."""
    path = _CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(list_archs())}")
    info = json.loads(path.read_text())
    if info.get("config_class") not in _CONFIG_CLASSES or info.get("model_class") not in _MODEL_CLASSES:
        raise ValueError(f"{path.name}: unsupported config_class / model_class")
    return info


def _config_from_dict(info: dict, config: dict):
    import transformers

    cls = getattr(transformers, info["config_class"])
    return cls.from_dict(copy.deepcopy(config))


def load_config(name: str):
    """The stock transformers config (``LlavaConfig``, ``LlavaNextConfig``, ``Qwen2VLConfig``,
    ``Qwen2_5_VLConfig``) of the real-size architecture ``name``, built offline from the JSON."""
    info = arch_info(name)
    return _config_from_dict(info, info["config"])


def tiny_variant(name: str):
    """A shrunk config of ``name`` with the same structure (same classes, feature layer, anyres
    pinpoints scaled to the smaller crop, Qwen window / full-attention pattern, GQA, M-RoPE)
    small enough for a CPU forward pass in well under a second."""
    info = arch_info(name)
    full = load_config(name)
    d = full.to_dict()
    over = _TINY_OVERRIDES[full.model_type]
    for key, values in over.items():
        d[key] = {**d[key], **copy.deepcopy(values)}
    if full.model_type == "llava_next":
        scale = _TINY_CLIP["image_size"] / full.vision_config.image_size
        d["image_grid_pinpoints"] = [
            [round(h * scale), round(w * scale)] for h, w in full.image_grid_pinpoints
        ]
    if full.model_type in ("qwen2_vl", "qwen2_5_vl"):
        rope = dict(d["text_config"].get("rope_parameters") or {})
        rope["mrope_section"] = list(_TINY_QWEN_MROPE)
        d["text_config"]["rope_parameters"] = rope
        d["text_config"].pop("head_dim", None)
    # Per-layer lists sized for the real depth are rebuilt from the new num_hidden_layers.
    d["text_config"].pop("layer_types", None)
    for key in ("dtype", "torch_dtype"):
        d.pop(key, None)
        for sub in ("text_config", "vision_config"):
            d[sub].pop(key, None)
    return _config_from_dict(info, d)


def model_class(name: str):
    """The stock transformers model class of ``name`` (e.g. ``LlavaForConditionalGeneration``)."""
    import transformers

    return getattr(transformers, arch_info(name)["model_class"])


def build_model(
    name: str,
    dtype=None,
    device=None,
    attn_implementation: str = "sdpa",
    *,
    tiny: bool = False,
    seed: int | None = 0,
):
    """Instantiate the stock model class of ``name`` with random weights, in eval mode.

    ``dtype`` (default ``torch.bfloat16`` at real size, ``torch.float32`` for ``tiny``) and
    ``device`` (default ``"cuda"`` at real size, ``"cpu"`` for ``tiny``): parameters are created
    directly there (``with torch.device(device)``), never on the meta device, so a 7B model needs
    about 16 GB of GPU memory in bf16 and no host copy. ``attn_implementation`` is applied to the
    text and vision sub-models alike (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``, or a dict
    ``{"text_config": ..., "vision_config": ...}``). ``tiny=True`` builds :func:`tiny_variant`
    instead (CPU smoke tests). ``seed`` makes the random weights reproducible (``None``: no seeding).
    """
    import torch

    config = tiny_variant(name) if tiny else load_config(name)
    if dtype is None:
        dtype = torch.float32 if tiny else torch.bfloat16
    if device is None:
        device = "cpu" if tiny else "cuda"
    if seed is not None:
        torch.manual_seed(seed)
    cls = model_class(name)
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    return model.eval()
