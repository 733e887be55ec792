"""The tools' one model loader: ``--model`` names, devices, dtypes and prompts.

``--model`` is a built-in random model (one per family, from the family registry), a model a
plugin registers (the bundled testbed registers its two checkpoints), a checkpoint directory, or
a hub id already in the local cache. Nothing downloads unless the hub is reachable
and the id is not cached; an unknown name answers at once when the hub is offline.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from vlmprune.adapters import Adapter, adapter_class, family
from vlmprune.adapters.loading import load_pretrained
from vlmprune.apps import zoo
from vlmprune.apps.errors import UsageError
from vlmprune.apps.plugins import registry
from vlmprune.core.errors import UnsupportedModelError

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class Loaded:
    """A model ready to prompt: the family's ``adapter`` class, a ``description`` for reports,
    ``tiny`` (random weights built offline), ``chat_template`` (None: the family's plain prompt)."""

    model: object
    processor: object
    adapter: type[Adapter]
    description: str
    tiny: bool = False
    chat_template: str | None = None
    device: str = "cpu"
    dtype: object = None

    @property
    def family(self) -> str:
        return self.adapter.family


def resolve_device(device: str | None = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; a CUDA device that is not there is a
    :class:`UsageError` naming ``--device``."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(
                "--device", f"{device} was asked for but torch sees no CUDA device here; use cpu"
            )
        return device
    raise UsageError("--device", f"must be cpu, cuda, cuda:N or auto, got {device!r}")


def resolve_dtype(dtype: str | None, device: str):
    """``auto`` -> float32 on CPU, bfloat16 on CUDA (float16 without bf16 support)."""
    import torch

    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise UsageError("--dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return getattr(torch, dtype)


def model_names() -> dict[str, str]:
    """``{name: help}`` of every named model: the built-in random ones, then the plugins'."""
    names = {name: "random weights, built offline" for name in zoo.builtin_names()}
    names.update({name: h for name, (_, h) in registry().models.items()})
    return names


def _hub_reachable(timeout: float = 1.5) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached(spec: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(spec, "config.json"), str)
    except Exception:  # not a valid repo id
        return False


def _check_checkpoint(spec: str) -> None:
    """A :class:`UsageError` naming ``--model`` unless ``spec`` is a loadable local checkpoint or
    a hub id that is cached (or the hub is reachable)."""
    path = Path(spec)
    listing = ", ".join(model_names())
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError("--model", f"{spec!r} is a directory without config.json (not a checkpoint)")
        return
    if path.exists():
        raise UsageError(
            "--model", f"{spec!r} is a file; give a checkpoint directory, a hub id or one of: {listing}"
        )
    if _cached(spec) or ("/" in spec and _hub_reachable()):
        return
    raise UsageError(
        "--model",
        f"{spec!r} is not a built-in model, a checkpoint directory or a cached hub id (the hub is not "
        f"reachable); built-in models: {listing}",
    )


def load(spec: str, device: str = "auto", dtype: str = "auto", attn: str = "sdpa") -> Loaded:
    """Load ``--model spec`` (see the module docstring) on ``device`` in ``dtype``."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if spec in zoo.builtin_names():
        model, proc, desc = zoo.demo_model(spec, attn=attn)
        model.to(device=device, dtype=torch_dtype)
        return Loaded(model, proc, family(zoo.builtin_names()[spec]), desc, True, None, device, torch_dtype)
    plugin = registry().models.get(spec)
    if plugin is not None:
        model, proc, desc = plugin[0](device, torch_dtype, attn)
        return Loaded(model, proc, adapter_class(model.config), desc, False, None, device, torch_dtype)
    _check_checkpoint(spec)
    try:
        pre = load_pretrained(spec, dtype=torch_dtype, device=device, attn=attn)
    except UnsupportedModelError as err:
        raise UsageError("--model", str(err)) from None
    return Loaded(
        pre.model, pre.processor, pre.adapter, describe(spec), False, pre.chat_template, device, torch_dtype
    )


def describe(spec: str) -> str:
    """``spec`` for reports: relative to the working directory when below it."""
    path = Path(spec)
    if not path.is_dir():
        return spec
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return spec


def prompt_text(loaded: Loaded, question: str) -> str:
    """The full prompt for one image: the checkpoint's chat template when it has one (the
    processor's or the tokenizer's), else the family's plain prompt (tiny models: their format)."""
    if loaded.tiny:
        return loaded.adapter.tiny_prompt(question)
    proc = loaded.processor
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if getattr(proc, "chat_template", None):
        return proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if loaded.chat_template:
        return proc.tokenizer.apply_chat_template(
            messages, chat_template=loaded.chat_template, add_generation_prompt=True, tokenize=False
        )
    return loaded.adapter.prompt(question)


def prompt_inputs(loaded: Loaded, images, questions) -> dict:
    """Processor outputs for one image per question (left padded), on the model's device (floats
    in its dtype)."""
    texts = [prompt_text(loaded, q) for q in questions]
    out = loaded.processor(text=texts, images=list(images), return_tensors="pt", padding=True)
    inputs = {}
    for key, value in dict(out).items():
        if hasattr(value, "to"):
            is_float = value.is_floating_point()
            value = value.to(loaded.device, dtype=loaded.dtype) if is_float else value.to(loaded.device)
        inputs[key] = value
    return inputs
