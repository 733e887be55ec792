"""The models ``vlmprune bench`` measures, built offline (see :mod:`vlmprune.apps.bench`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from vlmprune.adapters import adapter_class, family
from vlmprune.apps import archs, zoo
from vlmprune.apps.errors import UsageError
from vlmprune.apps.plugins import registry


@dataclass
class BenchModel:
    """A model ready to benchmark: ``model`` (stock class, eval mode), ``processor``, the family's
    ``adapter`` class, ``name`` as given to ``--model``, ``image_size`` (W, H) of the input images,
    ``token_map`` {processor token id: model token id} applied to ``input_ids`` (real-size
    architectures use their published special ids, the offline tokenizer its own)."""

    model: object
    processor: object
    adapter: type
    name: str
    image_size: tuple[int, int]
    token_map: dict = field(default_factory=dict)
    description: str = ""

    @property
    def family(self) -> str:
        return self.adapter.family


def parse_image_size(value) -> tuple[int, int] | None:
    """``"WxH"``, ``"W"`` (square) or a (W, H) pair; ``UsageError`` naming ``--image-size``."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    text = str(value).lower()
    try:
        w, h = text.split("x", 1) if "x" in text else (text, text)
        size = int(w), int(h)
    except ValueError:
        raise UsageError("--image-size", f"expected W or WxH in pixels, got {value!r}") from None
    if min(size) < 1:
        raise UsageError("--image-size", f"must be positive, got {value!r}")
    return size


def _generation_defaults(model) -> None:
    gc = model.generation_config
    if gc.pad_token_id is None:
        pad = getattr(model.config.get_text_config(), "pad_token_id", None)
        gc.pad_token_id = pad if pad is not None else 0


def bench_names() -> list[str]:
    """Every ``--model`` name bench knows: built-in models, real-size architectures, plugin models."""
    return [*zoo.builtin_names(), *archs.list_archs(), *registry().models]


def load_bench_model(
    name: str | None = None,
    *,
    device="cpu",
    dtype=None,
    tiny_arch=False,
    image_size=None,
    attn="sdpa",
    seed=0,
) -> BenchModel:
    """Build the model named ``name`` and its processor, offline. ``dtype`` defaults to float32 on
    CPU and bfloat16 on CUDA; ``image_size`` (W, H) or ``"WxH"`` overrides the default input size."""
    name = name or zoo.default_name()
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    size = parse_image_size(image_size)
    if name in zoo.builtin_names():
        bm = _builtin(name, device, dtype, tiny_arch, size, attn, seed)
    elif name in archs.list_archs():
        bm = _arch(name, device, dtype, tiny_arch, size, attn, seed)
    elif name in registry().models or os.path.isdir(name):
        bm = _checkpoint(name, device, dtype, size, attn)
    else:
        raise UsageError(
            "--model",
            f"unknown model {name!r}; choose one of {', '.join(bench_names())} or a checkpoint directory",
        )
    _generation_defaults(bm.model)
    return bm


def _builtin(name, device, dtype, tiny_arch, size, attn, seed) -> BenchModel:
    cls = family(zoo.builtin_names()[name])
    if tiny_arch:  # the test-suite size: a few tokens, for smoke tests only
        size = size or cls.test_image
        kwargs = cls.processor_size(None, size) if cls.bench_ratios is not None else {}
        model, proc = zoo.tiny_model(cls.family, attn=attn, seed=seed, dtype=dtype, **kwargs)
        desc = f"{name} at the test-suite size (vlmprune.testing defaults): smoke runs only"
        return BenchModel(model.to(device), proc, cls, name, size, {}, desc)
    model, proc, desc = zoo.bench_model(
        name, dtype=dtype, device=device, attn=attn, seed=seed, image_size=size
    )
    return BenchModel(model, proc, cls, name, size or cls.bench_image, {}, desc)


def _arch(name, device, dtype, tiny_arch, size, attn, seed) -> BenchModel:
    """A real-size architecture (random weights), or its shrunk variant; inputs from the tiny
    tokenizer with its special ids mapped onto the architecture's."""
    info = archs.arch_info(name)
    model = archs.build_model(
        name, dtype=dtype, device=device, attn_implementation=attn, tiny=tiny_arch, seed=seed
    )
    cls = adapter_class(model.config)
    default = cls.default_bench_image(model.config)
    if default is not None:
        size = size or default
    elif cls.bench_ratios is not None:
        size = size or ((112, 112) if tiny_arch else cls.bench_image)
    else:
        v = model.config.vision_config
        size = size or (int(v.image_size), int(v.image_size))
    tok = zoo.build_tokenizer(tuple(cls.tiny_special))
    proc = cls.tiny_processor(tok, **cls.processor_size(model.config, size))
    token_map = {}
    for token, attr in cls.special_tokens.items():
        src, dst = tok.convert_tokens_to_ids(token), getattr(model.config, attr, None)
        if dst is not None and src != dst:
            token_map[int(src)] = int(dst)
    desc = f"{info['hub_id']} architecture, random weights" + (" (shrunk: --tiny-arch)" if tiny_arch else "")
    return BenchModel(model, proc, cls, name, size, token_map, desc)


def _checkpoint(name, device, dtype, size, attn) -> BenchModel:
    from vlmprune.apps import models

    if name in registry().models:
        model, proc, desc = registry().models[name][0](str(device), dtype, attn)
    else:
        loaded = models.load(name, device=str(device), dtype=str(dtype).replace("torch.", ""), attn=attn)
        model, proc, desc = loaded.model, loaded.processor, f"checkpoint {name} (trained weights)"
    return BenchModel(model, proc, adapter_class(model.config), name, size or (336, 336), {}, desc)
