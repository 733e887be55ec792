"""The method base (kvpress style): a small dataclass whose algorithm is a pure function on tensors.

A method's module holds a pure ``select(...)`` on tensors and a thin dataclass adapting
:class:`~vlmprune.core.types.ImageTokens` / :class:`~vlmprune.core.types.LayerTokens` to it.
Capability flags (class variables) tell the session what to compute for the method:

- ``pre_llm``: it selects before the LLM (else it has an in-LLM stage at ``llm_layer``);
- ``needs_saliency`` / ``needs_text`` / ``needs_pre_features`` / ``needs_keys``: side signals;
- ``merges``: it returns replacement features (``Kept.features``);
- ``per_region``: it selects each region (crop, frame) on its own, the image's budget shared
  across regions in proportion to their sizes (:func:`select_per_region` splits and stitches).

``with method(model) as session:`` applies it to a model (``vlmprune.session``).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from vlmprune.core.budget import resolve_budget, split_across_regions
from vlmprune.core.ops import top_sorted
from vlmprune.core.options import BUDGET, RATIO, Option, check_size, choice, option, options_of
from vlmprune.core.types import ImageTokens, Kept, LayerTokens, Selection

POSITION_POLICIES = ("compact", "original")

_APPLY: list[Callable] = []  # the session class, registered by vlmprune.session


CAPABILITIES = {
    "pre_llm": "a selection before the LLM",
    "in_llm": "pruning inside the LLM (at a decoder layer)",
    "text": "the prompt's text",
    "saliency": "the vision tower's saliency",
    "keys": "the vision tower's keys",
    "pre_features": "the pre-connector features",
    "merges": "replacement (merged) features",
}


def check_engine(method: Method, engine: str, provides) -> None:
    """``ValueError`` (one line naming the option) when ``method``, as configured, needs a
    capability the engine ``engine`` lacks (``provides``: the capabilities it has)."""
    for cap, why in method.engine_needs().items():
        if cap in provides:
            continue
        asked = f"`{why}`={getattr(method, why)!r} asks for" if why != "method" else "needs"
        raise ValueError(f"{method.name}: {asked} {CAPABILITIES[cap]}, which {engine} does not do")


def register_applier(fn: Callable) -> None:
    """Set what ``method(model, ...)`` returns (``vlmprune.session`` registers its session class)."""
    _APPLY[:] = [fn]


@dataclass
class Method:
    """Base of every pruning method.

    Exactly one of ``budget`` (visual tokens kept per image) or ``ratio`` (kept fraction, in
    (0, 1]) is given. ``positions`` chooses how kept tokens are numbered for RoPE in the pre-LLM
    stage: ``"compact"`` (renumbered 0..K-1, what most pruning papers' reference code computes) or
    ``"original"`` (the unpruned positions, gathered); None takes the model family's default.
    """

    budget: int | None = option(None, BUDGET)
    ratio: float | None = option(None, RATIO)
    positions: str | None = option(None, choice(*POSITION_POLICIES, optional=True))

    name: ClassVar[str] = ""
    pre_llm: ClassVar[bool] = True
    needs_saliency: ClassVar[bool] = False
    needs_text: ClassVar[bool] = False
    needs_pre_features: ClassVar[bool] = False
    needs_keys: ClassVar[bool] = False
    merges: ClassVar[bool] = False
    per_region: ClassVar[bool] = False
    in_llm_option: ClassVar[str | None] = None  # the option holding the in-LLM stage's layer

    def __post_init__(self) -> None:
        self._checked()
        object.__setattr__(self, "_ready", True)

    # -- options ----------------------------------------------------------------------------
    def check(self) -> None:
        """Rules between options (each option's own type and range is checked on assignment);
        subclasses extend it and call ``super().check()``. Raise ``ValueError`` naming the option."""
        check_size(self.budget, self.ratio)

    # -- what the engine must do ---------------------------------------------------------------
    def engine_needs(self) -> dict[str, str]:
        """What this configuration needs of the engine that runs it, each capability with the
        option that asks for it (``"method"``: the method itself).

        Capabilities (:data:`CAPABILITIES`): ``pre_llm`` a selection before the LLM; ``in_llm``
        pruning at the input of a decoder layer (the option ``in_llm_option`` names sets it);
        ``text`` the prompt's text; ``saliency``, ``keys``, ``pre_features`` the vision tower's
        signals; ``merges`` replacement features for kept tokens."""
        flags = (
            ("pre_llm", self.pre_llm),
            ("text", self.needs_text),
            ("saliency", self.needs_saliency),
            ("keys", self.needs_keys),
            ("pre_features", self.needs_pre_features),
            ("merges", self.merges),
        )
        out = {cap: "method" for cap, flag in flags if flag}
        if self.llm_layer is not None:
            out["in_llm"] = self.in_llm_option or "method"
        return out

    def _checked(self) -> None:
        try:
            self.check()
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}: {err}") from None

    def __setattr__(self, name: str, value) -> None:
        spec = _option_specs(type(self)).get(name)
        if spec is None:
            object.__setattr__(self, name, value)
            return
        try:
            value = spec.check(name, value)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}: {err}") from None
        if not self.__dict__.get("_ready"):  # during __init__: __post_init__ checks the rules
            object.__setattr__(self, name, value)
            return
        old = self.__dict__[name]
        object.__setattr__(self, name, value)
        try:
            self._checked()
        except ValueError:
            object.__setattr__(self, name, old)  # nothing half-applied
            raise

    # -- budgets ---------------------------------------------------------------------------
    def keep_count(self, n: int) -> int:
        """Tokens kept for an image of ``n`` visual tokens."""
        return resolve_budget(self.budget, self.ratio, n)

    @property
    def llm_layer(self) -> int | None:
        """Decoder layer index at whose input the in-LLM stage prunes (None: no in-LLM stage)."""
        return None

    # -- selection -------------------------------------------------------------------------
    # The engines call ``select_images``; a method implements ``select_unit`` (one unit: a whole
    # image, or one region of it for ``per_region`` methods) and, to batch units of one shape,
    # ``select_units`` (units sharing ``batch_key``). Splitting into regions, grouping by shape
    # and stitching are done here, once.
    def select_images(self, images: list[ImageTokens]) -> list[Kept]:
        """Pre-LLM selection for every image of a call (batch order); each image keeps
        ``image.budget`` tokens. Not overridden: the methods' hooks are below."""
        if self.per_region:
            return select_per_region(images, self._select_grouped)
        return self._select_grouped(images)

    def select_image(self, image: ImageTokens) -> Kept:
        """Pre-LLM selection for one image (``select_images([image])[0]``)."""
        return self.select_images([image])[0]

    def _select_grouped(self, units: list[ImageTokens]) -> list[Kept]:
        groups: dict[tuple, list[int]] = {}
        for u, unit in enumerate(units):
            groups.setdefault(self.batch_key(unit), []).append(u)
        out: list[Kept | None] = [None] * len(units)
        for members in groups.values():
            for u, kept in zip(members, self.select_units([units[u] for u in members])):
                out[u] = kept
        return out  # type: ignore[return-value]

    def batch_key(self, unit: ImageTokens) -> tuple:
        """Units with equal keys may be selected as one batch (``select_units``): same token
        count, width, dtype and device by default."""
        f = unit.features
        return (unit.num_tokens, f.shape[1], f.dtype, f.device)

    def select_units(self, units: list[ImageTokens]) -> list[Kept]:
        """Selection on units sharing one :meth:`batch_key`; override to batch them."""
        return [self.select_unit(u) for u in units]

    def select_unit(self, unit: ImageTokens) -> Kept:  # pragma: no cover - abstract
        """Selection on one unit: a whole image, or one region of it for ``per_region`` methods
        (``unit.grid`` its grid, ``unit.share`` its part of a count shared like the budget)."""
        raise NotImplementedError(f"{type(self).__name__} has no pre-LLM stage")

    def select_layer(self, images: list[LayerTokens]) -> list[torch.Tensor]:  # pragma: no cover
        """In-LLM selection: per image, sorted indices into ``LayerTokens`` rows to keep."""
        raise NotImplementedError(f"{type(self).__name__} has no in-LLM stage")

    # -- applying ---------------------------------------------------------------------------
    def __call__(self, model, saliency: str = "auto", vision=None):
        """``with method(model) as session: ...`` prunes every forward/generate call inside the
        block; ``session.selections`` records the last call.

        ``saliency`` picks the vision saliency signal: ``"auto"`` (the family's default),
        ``"cls_attention"``, ``"attention_received"``, ``"feature_norm"``. ``vision``: a
        ``vlmprune.session.capture_vision`` result, to reuse one vision-tower run across methods.
        """
        if not _APPLY:  # pragma: no cover - importing vlmprune registers the session
            raise RuntimeError("no session engine is registered: import vlmprune")
        return _APPLY[0](self, model, saliency=saliency, vision=vision)

    @property
    def last_selection(self) -> list[Selection]:
        """The selections of this thread's latest call under this method (``session.selections``
        of that call): one per image, in batch order, on the CPU.

        The method holds its configuration and this record only: no model, session or hook data
        (the session passes each call's data to the hooks as arguments). The record is kept per
        thread, so one method used in two threads at once gives each thread its own; pickling or
        copying a method copies its configuration, not the record."""
        return self.__dict__.get("_last", {}).get(threading.get_ident(), [])

    def remember(self, selections: list[Selection]) -> None:
        """Record ``selections`` (the session's list of the current call, CPU tensors) as this
        thread's :attr:`last_selection`."""
        self.__dict__.setdefault("_last", {})[threading.get_ident()] = selections

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_last"}


@dataclass
class ScoringMethod(Method):
    """A method that scores tokens and keeps the top ``budget`` (ties to the lowest index).

    Subclasses implement :meth:`score` for ``ImageTokens`` (pre-LLM) and/or ``LayerTokens``
    (in-LLM); the top-k is taken here, once.
    """

    def score(self, tokens) -> torch.Tensor:  # pragma: no cover - abstract
        """(N,) score per token; higher is kept first."""
        raise NotImplementedError

    def select_unit(self, unit: ImageTokens) -> Kept:
        return Kept(indices=top_sorted(self.score(unit), unit.budget))

    def select_layer(self, images: list[LayerTokens]) -> list[torch.Tensor]:
        return [top_sorted(self.score(t), t.budget) for t in images]


@functools.cache
def _option_specs(cls) -> dict[str, Option]:
    return options_of(cls)


def select_per_region(images: list[ImageTokens], select_units) -> list[Kept]:
    """Split each image into its regions (budget shared by size, regions with no share skipped),
    run ``select_units`` once on all units, and stitch each image's results back: indices in the
    image's numbering (sorted), features and ``pinned`` in the same order, assignment slots
    renumbered."""
    units, owner = [], []
    for i, image in enumerate(images):
        regions = image.region_list()
        sizes = tuple(int(r.indices.numel()) for r in regions)
        shares = split_across_regions(image.budget, list(sizes))
        for j, (region, share) in enumerate(zip(regions, shares)):
            if share > 0:
                units.append((region, image.crop(region, share, (image.budget, sizes, j))))
                owner.append(i)
    kept = select_units([u for _, u in units])
    out = []
    for i, image in enumerate(images):
        parts = [(units[u][0], kept[u]) for u in range(len(units)) if owner[u] == i]
        out.append(stitch(image.num_tokens, parts, image.features.device))
    return out


def stitch(n: int, parts: list, device) -> Kept:
    """One image's :class:`Kept` from ``(region, region-local Kept)`` parts."""
    if len(parts) == 1 and parts[0][0].indices.numel() == n:
        return parts[0][1]  # one region over the whole image: already in the image's numbering
    if not parts:
        return Kept(indices=torch.empty(0, dtype=torch.long, device=device))
    glob = [r.indices.to(device)[k.indices] for r, k in parts]  # region-local -> image indices
    kept, order = torch.sort(torch.cat(glob))  # (K,) unique across regions
    feats = [k.features for _, k in parts]
    features = None if any(f is None for f in feats) else torch.cat(feats)[order]
    pins = [k.pinned for _, k in parts]
    pinned = None if all(p is None for p in pins) else _cat_pins(pins, glob)[order]
    assignment = None
    if any(k.assignment is not None for _, k in parts):
        slot = torch.empty_like(order)
        slot[order] = torch.arange(order.numel(), device=device)  # region-order slot -> sorted slot
        assignment = torch.full((n,), -1, dtype=torch.long, device=device)
        offset = 0
        for (region, k), g in zip(parts, glob):
            if k.assignment is not None:
                hit = k.assignment >= 0
                assignment[region.indices.to(device)[hit]] = slot[offset + k.assignment[hit]]
            offset += g.numel()
    return Kept(indices=kept, features=features, assignment=assignment, pinned=pinned)


def _cat_pins(pins, glob) -> torch.Tensor:
    return torch.cat(
        [
            p if p is not None else torch.zeros(g.numel(), dtype=torch.bool, device=g.device)
            for p, g in zip(pins, glob)
        ]
    )
