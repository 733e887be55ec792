"""The family's declared test and bench fixtures: what the tools and the tests build it from.

:class:`Fixtures` is a base of :class:`~vlmprune.adapters.base.Adapter`, separate from what the
session needs of a family (the adapter's hooks). Every member is declared here, with its default;
``apps/zoo.py``, ``apps/bench``, ``apps/flops_table.py`` and the tests read them as they are
(no probing for names). A family overrides the members marked *required* and those of the
*optional* ones it has.
"""

from __future__ import annotations

from typing import ClassVar


class Fixtures:
    """Test and bench fixtures of a model family (class attributes and class methods only)."""

    # -- the tiny test model (required) -----------------------------------------------------------
    #: the built-in random model's name (``--model tiny-...``)
    tiny_name: ClassVar[str] = ""
    #: special tokens of the tiny tokenizer (the placeholders first)
    tiny_special: ClassVar[tuple[str, ...]] = ()
    #: (W, H) of the images the test suite feeds
    test_image: ClassVar[tuple[int, int]] = (112, 112)
    #: ``tiny_config`` / ``tiny_processor`` size keywords of the demo model (the family's real
    #: token count per image)
    demo_size: ClassVar[dict] = {}

    @classmethod
    def tiny_config(cls, tok, text: dict, attn: str, **size):
        """The stock config class of a tiny model: ``text`` the LLM's config keys (from the zoo),
        ``attn`` the attention implementation, ``size`` the processor size (e.g. ``image_size``)."""
        raise NotImplementedError(f"{cls.__name__} declares no tiny model")

    @classmethod
    def tiny_processor(cls, tok, **size):
        """The processor of the tiny model (stock class, or an ``ImagesOnlyProcessor``)."""
        raise NotImplementedError(f"{cls.__name__} declares no tiny processor")

    @classmethod
    def tiny_prompt(cls, question: str, n_images: int = 1) -> str:
        """The tiny model's prompt for ``question`` with ``n_images`` placeholders."""
        raise NotImplementedError(f"{cls.__name__} declares no tiny prompt")

    # -- the tiny test model (optional) -----------------------------------------------------------
    @classmethod
    def tiny_text(cls) -> dict:
        """LLM config keys the family adds to the zoo's tiny text config (none by default)."""
        return {}

    @classmethod
    def tiny_init(cls, model) -> None:
        """Initialise what a random init leaves degenerate (e.g. an image newline); nothing by default."""

    @classmethod
    def tiny_video(cls, processor, videos: int, frames: int, seed: int = 0):
        """Processor inputs with ``videos`` random videos of ``frames`` frames (families with
        ``prunes_video``)."""
        raise NotImplementedError(f"{cls.__name__} has no video fixtures")

    # -- the bench (required: ``bench_vision``, ``bench_image``; one of budgets or ratios) ---------
    #: (W, H) of the bench's image for dynamic-resolution families
    bench_image: ClassVar[tuple[int, int]] = (336, 336)
    #: fixed ``tiny_processor`` size keywords of the bench model (None: ``processor_size`` of the image)
    bench_size: ClassVar[dict | None] = None
    #: ``(visual tokens, budgets)`` of the bench (fixed-resolution families)
    bench_budgets: ClassVar[tuple | None] = None
    #: kept ratios of the bench (dynamic-resolution families; None: ``bench_budgets``)
    bench_ratios: ClassVar[tuple[float, ...] | None] = None
    #: rows of the headline FLOPs table: ``(arch, label, visual tokens, budgets, crops)``
    flops_table: ClassVar[tuple] = ()

    @classmethod
    def bench_vision(cls) -> dict:
        """Vision config keys of the bench model's tower."""
        raise NotImplementedError(f"{cls.__name__} declares no bench tower")

    @classmethod
    def bench_text(cls) -> dict:
        """LLM config keys the family adds to the bench's text config (none by default)."""
        return {}

    @classmethod
    def default_bench_image(cls, config) -> tuple[int, int] | None:
        """(W, H) of the bench's default image for ``config`` (None: the bench's default size)."""
        return None
