"""The method abstraction: what a pruning method sees, what it returns, and the dataclass base.

A method is a small dataclass (kvpress style). Its algorithm lives in a pure function on tensors
(``select``) in the same module; the dataclass only adapts :class:`ImageTokens` /
:class:`LayerTokens` to that function. Model glue lives in the adapters and in
:mod:`vlmprune.core.session`; methods never see a transformers object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:  # pragma: no cover
    from vlmprune.core.session import PruningSession

POSITION_POLICIES = ("compact", "original")


@dataclass(frozen=True)
class Region:
    """A rectangular sub-grid of one image's visual tokens.

    ``indices`` (h*w,) index the image's content tokens (``ImageTokens.features`` rows) in raster
    order over the ``(h, w)`` grid. LLaVA-1.5 and Qwen images have one region; a LLaVA-NeXT image
    has one per crop (the base view, then each high-resolution tile after unpadding).
    """

    indices: torch.Tensor
    grid: tuple[int, int]


@dataclass
class ImageTokens:
    """One image's visual tokens as the LLM will see them, with the side signals.

    Shapes: ``features`` (N, D) projector outputs in raster order (LLaVA-NeXT: base crop first,
    then the unpadded high-resolution grid, without ``image_newline`` tokens); ``pre_features``
    (N, Dv) the same tokens before the projector (Qwen: the mean of the 2x2 patches entering the
    merger); ``saliency`` (N,) vision-encoder saliency (methods.md "Saliency signals");
    ``keys`` (N, Dv) head-averaged keys of the saliency layer (CLIP towers only); ``text`` (M, D)
    LLM input embeddings of the user's text tokens (text after the image, template included).
    """

    features: torch.Tensor
    budget: int
    regions: list[Region]
    grid: tuple[int, ...]
    pre_features: torch.Tensor | None = None
    saliency: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    text: torch.Tensor | None = None
    seed: int = 0

    @property
    def num_tokens(self) -> int:
        return int(self.features.shape[0])

    def region_list(self) -> list[Region]:
        """The image's regions, or one region over all of its tokens when it declares none
        (grid from the last two entries of ``grid`` when they tile N, else one row)."""
        if self.regions:
            return list(self.regions)
        n = self.num_tokens
        grid = tuple(self.grid[-2:]) if len(self.grid) >= 2 else (1, n)
        if grid[0] * grid[1] != n:
            grid = (1, n)
        return [Region(torch.arange(n, device=self.features.device), grid)]


@dataclass
class LayerTokens:
    """One image's tokens inside the LLM, at the input of decoder layer ``layer``.

    ``attention`` (N,) the last prompt token's attention to these tokens at layer ``layer - 1``
    (softmax over the whole sequence, mean over heads); ``hidden`` (N, D) hidden states entering
    layer ``layer``; ``keys`` (N, Dk) un-rotated keys of layer ``layer - 1``; ``text_hidden`` (M, D)
    and ``text_keys`` (M, Dk) the same for the row's non-image tokens. ``origin`` (N,) indices of
    these tokens among the image's original visual tokens (a pre-LLM stage may have dropped some).
    """

    attention: torch.Tensor
    hidden: torch.Tensor
    keys: torch.Tensor
    text_hidden: torch.Tensor
    text_keys: torch.Tensor
    budget: int
    origin: torch.Tensor
    grid: tuple[int, ...] = ()


@dataclass
class Kept:
    """What a pre-LLM method returns for one image.

    ``indices`` (K,) sorted unique indices into the image's N tokens; ``features`` (K, D) replacement
    features for merging methods (None: the kept tokens' own features); ``assignment`` (N,) for
    merging methods, the slot in ``0..K-1`` each original token was folded into (-1 if dropped).
    """

    indices: torch.Tensor
    features: torch.Tensor | None = None
    assignment: torch.Tensor | None = None


@dataclass
class Selection:
    """The public record of one image's pruning (``method.last_selection[i]``).

    ``kept`` (K,) sorted indices into that image's visual tokens in raster order; ``num_tokens`` N
    before pruning; ``grid`` the layout ((24, 24); Qwen (t, h, w) merged grid; LLaVA-NeXT the base
    grid, with every crop in ``regions``); ``assignment`` (N,) for merging methods.
    """

    kept: torch.Tensor
    num_tokens: int
    grid: tuple[int, ...]
    regions: list[Region] = field(default_factory=list)
    assignment: torch.Tensor | None = None
    stage: str = "pre_llm"
    selection_ms: float = 0.0


def resolve_budget(budget: int | None, ratio: float | None, n: int) -> int:
    """Visual tokens kept for an image of ``n`` tokens: ``min(budget, n)`` or ``max(1, round(ratio*n))``."""
    if budget is not None:
        return min(int(budget), n)
    return min(n, max(1, round(float(ratio) * n)))


def split_across_regions(k: int, sizes: list[int]) -> list[int]:
    """Share ``k`` tokens across regions in proportion to their sizes (largest remainder, ties to
    the lowest index); each share is capped by its region's size and the total is ``min(k, sum)``."""
    total = sum(sizes)
    k = min(k, total)
    if total == 0:
        return [0 for _ in sizes]
    raw = [k * s / total for s in sizes]
    out = [min(int(r), s) for r, s in zip(raw, sizes)]
    rest = k - sum(out)
    order = sorted(range(len(sizes)), key=lambda i: (-(raw[i] - int(raw[i])), i))
    while rest > 0:
        progressed = False
        for i in order:
            if rest == 0:
                break
            if out[i] < sizes[i]:
                out[i] += 1
                rest -= 1
                progressed = True
        if not progressed:  # pragma: no cover - impossible since k <= total
            break
    return out


@dataclass
class Method:
    """Base of every pruning method.

    Exactly one of ``budget`` (visual tokens kept per image) or ``ratio`` (kept fraction, in
    (0, 1]) is given. ``positions`` chooses how kept tokens are numbered for RoPE in the pre-LLM
    stage: ``"compact"`` (renumbered 0..K-1, what the LLaVA papers' code computes; default for the
    LLaVA families) or ``"original"`` (gathered unpruned positions; default and only choice for the
    Qwen families, whose M-RoPE positions carry the 2-D layout).

    Capability flags (class variables) tell the session what to compute for the method:
    ``pre_llm`` (selects before the LLM), ``needs_saliency``, ``needs_text``,
    ``needs_pre_features``, ``needs_keys``, ``merges`` (returns replacement features).
    In-LLM methods set ``pre_llm = False`` and have a ``layer`` field.
    """

    budget: int | None = None
    ratio: float | None = None
    positions: str | None = None

    name: ClassVar[str] = ""
    pre_llm: ClassVar[bool] = True
    needs_saliency: ClassVar[bool] = False
    needs_text: ClassVar[bool] = False
    needs_pre_features: ClassVar[bool] = False
    needs_keys: ClassVar[bool] = False
    merges: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if (self.budget is None) == (self.ratio is None):
            raise ValueError(
                f"{type(self).__name__}: give exactly one of `budget` (tokens kept per image) or `ratio` "
                f"(kept fraction); got budget={self.budget!r}, ratio={self.ratio!r}"
            )
        if self.budget is not None:
            if isinstance(self.budget, bool) or not isinstance(self.budget, int):
                raise ValueError(f"`budget` must be an int >= 1, got {self.budget!r}")
            if self.budget < 1:
                raise ValueError(f"`budget` must be >= 1, got {self.budget}")
        if self.ratio is not None:
            if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)):
                raise ValueError(f"`ratio` must be a number in (0, 1], got {self.ratio!r}")
            if not 0.0 < float(self.ratio) <= 1.0:
                raise ValueError(f"`ratio` must be in (0, 1], got {self.ratio}")
        if self.positions is not None and self.positions not in POSITION_POLICIES:
            raise ValueError(
                f"`positions` must be one of {POSITION_POLICIES} or None, got {self.positions!r}"
            )
        self.last_selection: list[Selection] = []

    # -- budgets ---------------------------------------------------------------------------
    def keep_count(self, n: int) -> int:
        """Tokens kept for an image of ``n`` visual tokens."""
        return resolve_budget(self.budget, self.ratio, n)

    @property
    def llm_layer(self) -> int | None:
        """Decoder layer index at whose input the in-LLM stage prunes (None: no in-LLM stage)."""
        return None

    # -- selection -------------------------------------------------------------------------
    def select_images(self, images: list[ImageTokens]) -> list[Kept]:
        """Pre-LLM selection for every image of a call (batch order). Override for batching;
        the default calls :meth:`select_image` per image."""
        return [self.select_image(img) for img in images]

    def select_image(self, image: ImageTokens) -> Kept:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} has no pre-LLM stage")

    def select_layer(self, images: list[LayerTokens]) -> list[torch.Tensor]:  # pragma: no cover
        """In-LLM selection: per image, sorted indices into ``LayerTokens`` rows to keep."""
        raise NotImplementedError(f"{type(self).__name__} has no in-LLM stage")

    def layer_keep_count(self, image: LayerTokens) -> int:
        """Tokens of an image still present at the in-LLM layer that the in-LLM stage keeps."""
        return min(image.budget, int(image.hidden.shape[0]))

    # -- applying ---------------------------------------------------------------------------
    def __call__(self, model, saliency: str = "auto") -> PruningSession:
        """``with method(model): ...`` prunes every forward/generate call inside the block.

        ``saliency`` picks the vision saliency signal: ``"auto"`` (CLS attention on CLIP towers,
        attention received on Qwen), ``"cls_attention"``, ``"attention_received"``, ``"feature_norm"``.
        """
        from vlmprune.core.session import PruningSession

        return PruningSession(self, model, saliency=saliency)
