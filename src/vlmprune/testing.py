"""Test fixtures: tiny random models of every registered family, inputs and images, offline.

Used by the test-suite and by examples that must run anywhere; the library itself never imports
this module. The models come from :mod:`vlmprune.apps.zoo` (stock classes built from the
families' tiny configs, tokenizers trained offline).

>>> from vlmprune import testing
>>> family = testing.FAMILIES[0]
>>> model, processor = testing.tiny_model(family)
>>> inputs = testing.make_inputs(family, processor, ["What is shown?"], [[testing.random_image(0)]])
"""

from __future__ import annotations

from vlmprune.adapters import families, family
from vlmprune.apps.images import random_image
from vlmprune.apps.zoo import CORPUS, build_tokenizer, tiny_inputs, tiny_model, train_bpe_tokenizer

FAMILIES = tuple(cls.family for cls in families())

__all__ = [
    "CORPUS",
    "FAMILIES",
    "build_tokenizer",
    "make_inputs",
    "video_inputs",
    "prompt_for",
    "random_image",
    "tiny_model",
    "train_bpe_tokenizer",
]


def prompt_for(name: str, question: str, n_images: int = 1) -> str:
    """A prompt with ``n_images`` image placeholders in the tiny models' format of family ``name``."""
    return family(name).tiny_prompt(question, n_images)


def make_inputs(name: str, processor, questions, images):
    """Batch inputs (left padded) for ``questions`` (list of str) with ``images`` (list of list of PIL)."""
    return tiny_inputs(name, processor, questions, images)


def video_inputs(name: str, processor, frames: int = 4, seed: int = 0):
    """A left-padded batch for family ``name`` (one whose adapter prunes videos): a video and an
    image with a question, and a video alone with a longer one. The videos are random pixels of
    ``frames`` frames in the layout of the family's stock video processor (the adapter's
    ``tiny_video``)."""
    cls = family(name)
    video, tensors = cls.tiny_video(processor, videos=2, frames=frames, seed=seed)
    prompts = [video + cls.tiny_prompt("What happens in the video?", 1)]
    prompts.append(video + cls.tiny_prompt("Describe the video in detail please, what moves and where?", 0))
    out = processor(text=prompts, images=[random_image(1)], return_tensors="pt", padding=True)
    out.update(tensors)
    return out
