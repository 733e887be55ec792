"""Adapter interface: the only place that knows transformers internals of a model family.

An adapter tells the session (1) where the vision tower runs, so side signals can be captured
with forward hooks as the stock code runs, (2) how each image's visual tokens are laid out in the
LLM sequence (placeholder run, content tokens in raster order, crops), and (3) which modules are
the language model and its decoder layers. Everything else (shortening sequences, positions,
masks, KV-cache bookkeeping) is family-independent and lives in :mod:`vlmprune.core.session`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from vlmprune.core.base import Region
from vlmprune.errors import UnsupportedModelError

SALIENCY_SIGNALS = ("auto", "cls_attention", "attention_received", "feature_norm")


@dataclass
class ImageLayout:
    """How one image sits in the LLM sequence.

    ``n_placeholders``: tokens it occupies (LLaVA-NeXT: content + ``image_newline`` tokens);
    ``content`` (N,): offsets of its content tokens inside that run, in raster order;
    ``regions``/``grid``: the layout of the N content tokens (see :class:`~vlmprune.core.base.Region`).
    """

    n_placeholders: int
    content: torch.Tensor
    regions: list[Region]
    grid: tuple[int, ...]


@dataclass
class VisionRecord:
    """What the vision hooks captured during one run of the vision tower (all images of a call)."""

    raw: dict = field(default_factory=dict)


class Adapter:
    """Base adapter. Subclasses set the class variables and implement the three hooks."""

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    default_positions: ClassVar[str] = "original"
    supports_compact: ClassVar[bool] = True
    default_saliency: ClassVar[str] = "cls_attention"
    saliency_signals: ClassVar[tuple[str, ...]] = ("cls_attention", "feature_norm")

    def __init__(self, model, saliency: str = "auto"):
        self.model = model
        self.base = model.model
        self.config = model.config
        self.text_config = model.config.get_text_config()
        self.language_model = self.base.language_model
        self.layers = self.language_model.layers
        self.image_token_id = int(model.config.image_token_id)
        if saliency not in SALIENCY_SIGNALS:
            raise ValueError(f"`saliency` must be one of {SALIENCY_SIGNALS}, got {saliency!r}")
        if saliency == "auto":
            saliency = self.default_saliency
        if saliency not in self.saliency_signals:
            raise ValueError(
                f"`saliency`={saliency!r} is not available for {self.family}; choose one of {self.saliency_signals}"
            )
        self.saliency = saliency

    # -- vision capture ----------------------------------------------------------------------
    def vision_hooks(self, on_record, needs: set[str]) -> list:
        """Register forward hooks capturing what ``needs`` asks for ("saliency", "keys",
        "pre_features"). ``on_record()`` returns the current :class:`VisionRecord`. Returns handles."""
        raise NotImplementedError

    def vision_module(self) -> torch.nn.Module:
        raise NotImplementedError

    # -- layout -------------------------------------------------------------------------------
    def image_layouts(self, call: dict, record: VisionRecord | None) -> list[ImageLayout]:
        """Layouts of every image of the call in batch order (the order features are scattered)."""
        raise NotImplementedError

    def image_signals(self, record: VisionRecord, index: int, layout: ImageLayout) -> dict:
        """Per-image side signals in content order: keys "saliency" (N,), "keys" (N, d),
        "pre_features" (N, Dv); absent when not captured."""
        raise NotImplementedError


class InstanceAttributeHook:
    """A removable handle that shadows one attribute of one module instance (never the class).

    Used only where transformers offers no module to hook: ``remove()`` deletes the instance
    attribute, which restores the class's own method exactly."""

    def __init__(self, obj, name: str, value):
        if name in vars(obj):
            raise RuntimeError(f"{type(obj).__name__}.{name} is already overridden on this instance")
        self.obj, self.name = obj, name
        setattr(obj, name, value)

    def remove(self) -> None:
        if self.name in vars(self.obj):
            delattr(self.obj, self.name)


_ADAPTERS: list[type[Adapter]] = []


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    _ADAPTERS.append(cls)
    return cls


def supported_model_types() -> list[str]:
    import vlmprune.adapters  # noqa: F401  (registers the built-in adapters)

    return sorted(t for a in _ADAPTERS for t in a.model_types)


def get_adapter(model, saliency: str = "auto") -> Adapter:
    """The adapter for ``model`` or :class:`UnsupportedModelError` naming the supported types."""
    import vlmprune.adapters  # noqa: F401

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for cls in _ADAPTERS:
        if model_type in cls.model_types and hasattr(model, "model"):
            return cls(model, saliency=saliency)
    raise UnsupportedModelError(
        f"vlmprune does not support {type(model).__name__} (model_type={model_type!r}); supported "
        f"model_types: {', '.join(supported_model_types())} (the *ForConditionalGeneration classes)"
    )
