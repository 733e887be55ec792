"""Loading a supported checkpoint with its own processor: the one loader every tool uses.

``load_pretrained(spec)`` reads the config first (offline for a local directory), picks the
family's stock class from the adapter registry, and loads the checkpoint's processor
(``AutoProcessor``). Where the stock processor cannot be built on this machine (Qwen's needs
torchvision for its video processor), the family's ``fallback_processor`` (images only) stands in,
silently: it computes the same inputs for images.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from vlmprune.adapters.base import Adapter, adapter_class


@dataclass
class Pretrained:
    """A loaded checkpoint: ``model`` (stock class, eval mode), ``processor``, the family's
    ``adapter`` class and the ``chat_template`` (None: the family's plain prompt)."""

    model: object
    processor: object
    adapter: type[Adapter]
    chat_template: str | None = None


def _chat_template_file(path: Path) -> str | None:
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").is_file():
        return json.loads((path / "chat_template.json").read_text()).get("chat_template")
    return None


def load_config(spec: str):
    """The config of checkpoint ``spec`` (a directory, or a hub id from the local cache)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(spec, local_files_only=Path(spec).is_dir())


def load_processor(spec: str, config=None):
    """``(processor, chat_template)`` of checkpoint ``spec``: the stock processor, or the family's
    images-only fallback when the stock one cannot be built here."""
    from transformers import AutoProcessor, AutoTokenizer

    config = config if config is not None else load_config(spec)
    cls = adapter_class(config, spec)
    local = Path(spec).is_dir()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            processor = AutoProcessor.from_pretrained(spec, local_files_only=local)
        if not hasattr(processor, "tokenizer"):
            raise TypeError("not a multimodal processor")
        return processor, getattr(processor, "chat_template", None)
    except (ImportError, OSError, ValueError, TypeError):
        if not hasattr(cls, "fallback_processor"):
            raise
    tok = AutoTokenizer.from_pretrained(spec, local_files_only=local)
    template = (_chat_template_file(Path(spec)) if local else None) or getattr(tok, "chat_template", None)
    return cls.fallback_processor(spec, config, tok, template), template


def load_pretrained(spec: str, dtype=None, device="cpu", attn: str | None = None) -> Pretrained:
    """Load checkpoint ``spec`` (a local directory or a cached hub id) with the family's stock
    class; :class:`~vlmprune.core.errors.UnsupportedModelError` for other families."""
    import transformers
    from transformers.utils import logging as hf_logging

    config = load_config(spec)
    cls = adapter_class(config, spec)
    kw = {"dtype": dtype, "local_files_only": Path(spec).is_dir()}
    if attn:
        kw["attn_implementation"] = attn
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # no weight-loading report or progress bar
    hf_logging.disable_progress_bar()
    try:
        model = getattr(transformers, cls.model_class).from_pretrained(spec, **kw)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    processor, template = load_processor(spec, config)
    return Pretrained(model.to(device).eval(), processor, cls, template)
