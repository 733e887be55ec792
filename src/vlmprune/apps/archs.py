"""Real-size architecture configs of the supported VLMs, loaded offline (no weights, no network).

The JSON files in ``vlmprune/adapters/configs/`` (each family lists its own in ``archs``) hold
the published ``config.json`` values of each checkpoint (source noted in each file's ``_source``)
and build the stock transformers config classes. ``build_model`` instantiates the stock model class with random weights: real size on a
GPU (benchmarks of speed and memory need the shapes, not the weights), or the shrunk
``tiny_variant`` on a CPU (smoke tests).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from vlmprune.adapters import families

_CONFIG_DIR = Path(__file__).resolve().parents[1] / "adapters" / "configs"


def _owner(name: str):
    """The adapter class whose ``archs`` lists ``name``."""
    for cls in families():
        if name in cls.archs:
            return cls
    raise KeyError(f"unknown architecture {name!r}; known: {', '.join(list_archs())}")


def list_archs() -> list[str]:
    """Names of the bundled real-size architectures (the families' ``archs``, each a
    ``vlmprune/adapters/configs/<name>.json``)."""
    return sorted(name for cls in families() for name in cls.archs)


def arch_info(name: str) -> dict:
    """The bundled JSON of ``name``: ``hub_id``, ``model_class``, ``config_class``, ``_source``,
    ``_comment`` and the published ``config`` dict (a fresh copy)."""
    owner = _owner(name)
    path = _CONFIG_DIR / f"{name}.json"
    info = json.loads(path.read_text())
    if info.get("config_class") != owner.config_class or info.get("model_class") != owner.model_class:
        raise ValueError(f"{path.name}: config_class / model_class are not {owner.family}'s")
    return info


def _config_from_dict(info: dict, config: dict):
    import transformers

    cls = getattr(transformers, info["config_class"])
    return cls.from_dict(copy.deepcopy(config))


def load_config(name: str):
    """The stock transformers config (the family's ``config_class``) of the real-size
    architecture ``name``, built offline from the JSON."""
    info = arch_info(name)
    return _config_from_dict(info, info["config"])


def tiny_variant(name: str):
    """A shrunk config of ``name`` with the same structure (the family's ``shrink_arch``: same
    classes, feature layer, crop pinpoints, window / full-attention pattern, GQA, M-RoPE, the real
    vocabulary) small enough for a CPU forward pass in well under a second."""
    info = arch_info(name)
    d = load_config(name).to_dict()
    # Per-layer lists sized for the real depth are rebuilt from the new num_hidden_layers (or set
    # by the family's shrink_arch).
    d["text_config"].pop("layer_types", None)
    _owner(name).shrink_arch(d)
    for key in ("dtype", "torch_dtype"):
        d.pop(key, None)
        for sub in ("text_config", "vision_config"):
            d[sub].pop(key, None)
    return _config_from_dict(info, d)


def model_class(name: str):
    """The stock transformers model class of ``name`` (the family's ``model_class``)."""
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
