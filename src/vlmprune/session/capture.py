"""One run of the vision tower for several methods: ``capture_vision`` and ``method(model, vision=...)``.

Comparing methods on the same images reruns the same vision tower once per method, and the tower
is most of a pruned prefill. ``capture_vision(model, inputs)`` runs it once, the way ``generate``
does, with the adapter's hooks capturing every side signal any method needs (saliency, keys,
pre-connector features); ``method(model, vision=capture)`` then runs the language-model side of
the session on the captured outputs. Selections, logits and generations are the ones a full run
of each method gives (``tests/test_capture.py``).

    capture = capture_vision(model, inputs)
    for method in methods:
        with method(model, vision=capture):
            out = model.generate(**capture.inputs, max_new_tokens=8)
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from vlmprune.adapters import get_adapter
from vlmprune.adapters.base import VisionRecord

ALL_SIGNALS = frozenset({"saliency", "keys", "pre_features"})


@dataclass(frozen=True)
class VisionCapture:
    """The vision tower's outputs and side signals for one batch of inputs, for one model.

    ``inputs``: the model inputs without the pixels, with ``mm_encoder_outputs`` (a read-only
    mapping: pass it to ``generate`` / ``forward`` as it is); ``record``: what the vision hooks
    captured; ``saliency``: the saliency signal it holds. A capture is read-only: a block given it
    refuses raw pixel inputs (its tower would run again), and it serves only the model it was
    taken from (held weakly: a capture does not keep its model alive).
    """

    inputs: Mapping
    record: VisionRecord
    saliency: str
    family: str
    model: weakref.ref

    def check_model(self, model) -> None:
        """``ValueError`` unless this capture was taken from ``model``."""
        if self.model() is not model:
            raise ValueError(
                f"vlmprune: this capture belongs to another model (a {self.family} model); "
                "run `capture_vision(model, inputs)` on this one"
            )


def capture_vision(model, inputs: dict, saliency: str = "auto") -> VisionCapture:
    """Run the vision tower of ``model`` once on ``inputs`` (processor outputs), capturing every
    side signal; the returned :class:`VisionCapture` serves any number of ``method(model, vision=...)``."""
    adapter = get_adapter(model, saliency)
    record = VisionRecord()

    def count(module, args, kwargs):
        record.new_run(args[0] if args else next(iter(kwargs.values()), None))

    handles = [adapter.vision_module().register_forward_pre_hook(count, with_kwargs=True)]
    handles += adapter.vision_hooks(lambda: record, set(ALL_SIGNALS))
    try:
        with torch.no_grad():
            rest = adapter.encode_images(dict(inputs))
    finally:
        for h in handles:
            h.remove()
    return VisionCapture(MappingProxyType(rest), record, adapter.saliency, adapter.family, weakref.ref(model))
