"""What a pruning method sees and what it returns: plain tensors in dataclasses.

Methods never see a transformers object. The session fills :class:`ImageTokens` (pre-LLM) or
:class:`LayerTokens` (inside the LLM) for every image of a call; a method answers with a
:class:`Kept` (pre-LLM) or a tensor of kept rows (in-LLM); the session records a
:class:`Selection` per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from vlmprune.core.budget import split_across_regions


@dataclass(frozen=True)
class Region:
    """A rectangular sub-grid of one image's visual tokens.

    ``indices`` (h*w,) index the image's content tokens (``ImageTokens.features`` rows) in raster
    order over the ``(h, w)`` grid. Most images have one region; a multi-crop (anyres) image has
    one per crop, a video one per frame. A single region over all N tokens is ``0..N-1``.
    """

    indices: torch.Tensor
    grid: tuple[int, int]


@dataclass
class ImageTokens:
    """One image's visual tokens as the LLM will see them, with the side signals.

    Shapes: ``features`` (N, D) tokens in the LLM's input space, raster order (multi-crop images:
    each crop's tokens, without row separators); ``budget`` K, the tokens to keep (resolved once by
    the session from the method's ``budget``/``ratio``; ``K >= N`` keeps all); ``pre_features``
    (N, Dv) the same tokens before the connector; ``saliency`` (N,) vision-encoder saliency
    (``methods.md``, "Saliency signals"); ``keys`` (N, Dv) head-averaged keys of the saliency
    layer (towers with a CLS token only); ``text`` (M, D) LLM input embeddings of the user's text.
    ``seed`` is the image's index in the call (seeded methods offset their seed by it). ``kind``
    is "image" or "video" (one budget per video; its regions are its frames).
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
    kind: str = "image"  # "video": ``regions`` are its frames, in time order
    #: a per-region unit's image: (its budget, its regions' sizes, this region's index)
    parent: tuple[int, tuple[int, ...], int] | None = None

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

    def share(self, count: int) -> int:
        """This unit's part of ``count`` shared across its image's regions as the budget is (by
        size, :func:`~vlmprune.core.budget.split_across_regions`); a whole image: ``count``."""
        if self.parent is None:
            return count
        _, sizes, index = self.parent
        return split_across_regions(count, list(sizes))[index]

    @property
    def image_budget(self) -> int:
        """The budget of the whole image (a per-region unit's own is :attr:`budget`)."""
        return self.budget if self.parent is None else self.parent[0]

    def crop(self, region: Region, budget: int, parent=None) -> ImageTokens:
        """The tokens of one ``region`` as an image of their own (one region, its grid), keeping
        ``budget`` of them; side signals are sliced alike, ``text`` and ``seed`` shared. A region
        over all N tokens returns the same tensors, not copies."""
        if region.indices.numel() == self.num_tokens:
            return replace(self, budget=budget, regions=[region], grid=tuple(region.grid), parent=parent)
        idx = region.indices.to(self.features.device)

        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[idx.to(t.device)]

        whole = Region(torch.arange(idx.numel(), device=idx.device), tuple(region.grid))
        return replace(
            self,
            features=self.features[idx],
            budget=budget,
            regions=[whole],
            grid=tuple(region.grid),
            pre_features=take(self.pre_features),
            saliency=take(self.saliency),
            keys=take(self.keys),
            parent=parent,
        )


@dataclass
class LayerTokens:
    """One image's tokens inside the LLM, at the input of decoder layer ``layer``.

    ``attention`` (N,) the last prompt token's attention to these tokens at layer ``layer - 1``
    (softmax over the whole sequence, mean over heads); ``hidden`` (N, D) hidden states entering
    layer ``layer``; ``keys`` (N, Dk) un-rotated keys of layer ``layer - 1``; ``text_hidden`` (M, D)
    and ``text_keys`` (M, Dk) the same for the row's non-image tokens. ``budget`` the rows to keep
    (at most N). ``origin`` (N,) indices of these tokens among the image's original visual tokens
    (a pre-LLM stage may have dropped some); ``pinned`` (N,) True for rows a pre-LLM stage of the
    same method asked to keep (:attr:`Kept.pinned`), or None.
    """

    attention: torch.Tensor
    hidden: torch.Tensor
    keys: torch.Tensor
    text_hidden: torch.Tensor
    text_keys: torch.Tensor
    budget: int
    origin: torch.Tensor
    grid: tuple[int, ...] = ()
    pinned: torch.Tensor | None = None


@dataclass
class Kept:
    """What a pre-LLM method returns for one image.

    ``indices`` (K,) sorted unique indices into the image's N tokens; ``features`` (K, D) replacement
    features for merging methods (None: the kept tokens' own features); ``assignment`` (N,) for
    merging methods, the slot in ``0..K-1`` each original token was folded into (-1 if dropped);
    ``pinned`` (K,) bool, aligned with ``indices``: tokens a later in-LLM stage of the same method
    must keep (None: none).
    """

    indices: torch.Tensor
    features: torch.Tensor | None = None
    assignment: torch.Tensor | None = None
    pinned: torch.Tensor | None = None


@dataclass
class Selection:
    """The public record of one image's pruning (``session.selections[i]``).

    ``kept`` (K,) sorted indices into that image's visual tokens in raster order; ``num_tokens`` N
    before pruning; ``grid`` the layout ((24, 24); a merged-patch tower (t, h, w); multi-crop images
    the base grid, with every crop in ``regions``); ``assignment`` (N,) for merging methods.
    """

    kept: torch.Tensor
    num_tokens: int
    grid: tuple[int, ...]
    regions: list[Region] = field(default_factory=list)
    assignment: torch.Tensor | None = None
    stage: str = "pre_llm"
    selection_ms: float = 0.0
