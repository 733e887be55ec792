"""``with method(model) as session:`` — forward hooks on a stock model, removed on exit.

No global patching and no forked model code: every change is a standard PyTorch forward
(pre-)hook on the user's model instance, removed in ``__exit__`` even when the wrapped call raises.
The engine is family-agnostic: what it knows of a model comes from its adapter.

Hooks, in the order they fire during one forward:

1. the VLM (``model``): refuses ``labels`` (a loss over a shortened sequence is not defined);
2. the VLM base model (``model.model``): records ``input_ids`` and the image metadata of the call;
   while decoding a pruned sequence without an attention mask it supplies the all-ones mask of the
   *unpruned* length, so the stock position logic (e.g. M-RoPE's ``rope_deltas``) stays exact;
3. the vision tower (adapter hooks): captures saliency, keys and pre-connector features;
4. the language model: at prefill, selects the kept visual tokens (pre-LLM stage) and shortens
   ``inputs_embeds``, the 2-D mask and the position ids; while decoding, rewrites the mask and
   position ids so they match the shortened KV cache;
5. decoder layers ``K-1 .. end`` (in-LLM stage only, :mod:`vlmprune.session.in_llm`).

Position policies (``docs/exactness.md``): ``"original"`` gathers the unpruned position ids at the kept
tokens (equals the stock model with ``attention_mask = 0`` at dropped tokens); ``"compact"``
renumbers the kept tokens consecutively (equals the stock model fed only the kept tokens).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch

import vlmprune.session.guards as guards
from vlmprune.adapters import get_adapter
from vlmprune.adapters.base import VisionRecord
from vlmprune.core.errors import UnsupportedFeatureError
from vlmprune.core.method import CAPABILITIES, Method, check_engine, register_applier
from vlmprune.core.sequence import compact_index, compact_positions, first_real, gather_seq, new_positions
from vlmprune.core.tokens import image_tokens
from vlmprune.core.types import ImageTokens, Selection
from vlmprune.session.in_llm import InLLMStage, sync
from vlmprune.session.spans import ImageSpan, assign_spans


@dataclass
class _PrefillState:
    orig_len: int  # L: prompt length as the user passed it
    new_len: int  # L': prompt length after the pre-LLM stage
    prefix: torch.Tensor  # (B, L') 2-D mask of the shortened prompt
    shift: torch.Tensor  # (B,) original minus new position of the last prompt token
    images: list[ImageSpan]
    seen: torch.Tensor  # (B, L + decoded) the unpruned sequence so far (ids)
    decoded: int = 0  # tokens fed after the prompt so far
    cur_mask: torch.Tensor | None = None  # (B, L' + decoded) mask of the current call
    layer_prefix: torch.Tensor | None = None  # (B, L'') prompt mask for layers >= K
    layer_override: dict = field(default_factory=dict)  # kwargs of the layers >= K besides their mask
    layer_masks: dict = field(default_factory=dict)  # the mask of each kind of layer >= K
    layer_input: tuple | None = None  # (hidden, position_embeddings) captured at layer K-1


_ENTER_LOCK = threading.Lock()
ENGINE = frozenset(CAPABILITIES)  # the HF session runs every stage; its limits per model: __init__


class PruningSession(InLLMStage):
    """Context manager returned by ``method(model)``; ``selections`` holds one
    :class:`~vlmprune.core.types.Selection` per image of the last call (batch order)."""

    def __init__(self, method: Method, model, saliency: str = "auto", vision=None):
        check_engine(method, "the Hugging Face session", ENGINE)
        self.method = method
        self.model = model
        if vision is not None:
            vision.check_model(model)
        if vision is not None and saliency == "auto":
            saliency = vision.saliency
        self.adapter = get_adapter(model, saliency)
        if vision is not None and vision.saliency != self.adapter.saliency:
            raise ValueError(f"`saliency`={saliency!r} differs from the capture's {vision.saliency!r}")
        self.vision = vision
        policy = method.positions or self.adapter.default_positions
        if policy == "compact" and not self.adapter.supports_compact:
            raise ValueError(
                f"`positions`='compact' is not supported for {self.adapter.family}: its M-RoPE positions encode "
                "the 2-D layout; use positions='original' (the default)"
            )
        self.policy = policy
        self.layer = method.llm_layer
        n_layers = len(self.adapter.layers)
        if self.layer is not None and not 1 <= self.layer < n_layers:
            raise ValueError(f"`layer` must be in [1, {n_layers - 1}] for this model, got {self.layer}")
        if self.layer is not None:
            self.adapter.check_llm_layer(self.layer)
        flags = (("saliency", method.needs_saliency), ("keys", method.needs_keys))
        flags += (("pre_features", method.needs_pre_features),)
        self.needs = {name for name, flag in flags if flag}
        if self.adapter.saliency == "feature_norm":
            self.needs.discard("saliency")
        self._selections: list[Selection] = []
        #: (B, L') after a pruned prefill: the input position of each entry of the pruned sequence
        #: (its logits' rows), -1 for padding; None before one
        self.kept_positions: torch.Tensor | None = None
        self._prefilled = False  # a prefill ran in this block (a decode step may follow)
        self._reuse: dict | None = None  # the last uncached prompt and its selections
        self._reusing = False
        self._handles: list = []
        self._record: VisionRecord | None = None if vision is None else vision.record
        self._call: dict = {}
        self._state: _PrefillState | None = None
        self._phase: str | None = None

    # -- install / remove -----------------------------------------------------------------
    @property
    def selections(self) -> list[Selection]:
        return self._selections

    @selections.setter
    def selections(self, value: list[Selection]) -> None:
        self._selections = value
        self.method.remember(value)  # the same list: the in-LLM stage updates it in place

    def __enter__(self):
        with _ENTER_LOCK:  # claim the model atomically: two threads cannot both install hooks
            if getattr(self.model, "_vlmprune_session", None) is not None:
                raise RuntimeError(
                    "a vlmprune method is already applied to this model (nested `with` blocks, or "
                    "another thread's, are not supported)"
                )
            self.model._vlmprune_session = self
        self.selections, self._prefilled, self.kept_positions = [], False, None
        try:
            hook = self._handles.append
            hook(self.model.register_forward_pre_hook(self._on_model, with_kwargs=True))
            hook(
                self.adapter.vision_module().register_forward_pre_hook(self._new_record, with_kwargs=True)
            )  # a tower run in the block
            self._handles += self.adapter.vision_hooks(lambda: self._record, self.needs)
            hook(self.adapter.base.register_forward_pre_hook(self._on_base, with_kwargs=True))
            hook(
                self.adapter.language_model.register_forward_pre_hook(
                    self._on_language_model, with_kwargs=True
                )
            )
            self._handles += self.adapter.lm_hooks()
            if self.layer is not None:
                self._install_layer_hooks()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc):
        self._remove()
        return False

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._record = None if self.vision is None else self.vision.record
        self._state, self._call, self._phase = None, {}, None
        self._reuse, self._reusing = None, False
        if getattr(self.model, "_vlmprune_session", None) is self:
            del self.model._vlmprune_session

    # -- hooks ------------------------------------------------------------------------------
    def _on_model(self, module, args, kwargs):
        guards.check_call(args, kwargs)
        return None

    def _new_record(self, module, args, kwargs):
        """A run of the vision tower: the first of a call starts a new record; a second one in the
        same call (a family encoding videos after images) adds a run to it."""
        if self.vision is not None:  # a capture is read-only: its inputs carry no pixels
            raise ValueError(
                "vlmprune: the vision tower ran inside a block given `vision=` (a capture): pass the "
                "capture's own inputs (`capture.inputs`), not raw pixel values"
            )
        if self._record is None or self._record.used:
            self._record = VisionRecord()
        self._record.new_run(args[0] if args else next(iter(kwargs.values()), None))

    def _on_base(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self._call = {k: kwargs.get(k) for k in ("image_sizes", "image_grid_thw", "video_grid_thw")}
        self._call["input_ids"] = input_ids
        st, cache = self._state, kwargs.get("past_key_values")
        if st is None or cache is None or input_ids is None:
            return None
        past = cache.get_seq_length()
        if past > 0:
            guards.check_resend(st.seen, input_ids, past)
        if past > 0 and kwargs.get("attention_mask") is None:
            full = st.orig_len + (past - st.new_len) + input_ids.shape[1]
            kwargs["attention_mask"] = torch.ones(
                input_ids.shape[0], full, dtype=torch.long, device=input_ids.device
            )
            return args, kwargs
        return None

    def _on_language_model(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None else 0
        self._phase = None
        if embeds is None:
            self._state = None
            return None
        if past == 0:
            self._state, self._prefilled = None, True
            ids = self._call.get("input_ids")
            if self._record is not None and self._record is not getattr(self.vision, "record", None):
                self._record.used = True  # the next run of the tower belongs to a new call
            media = torch.tensor(list(self.adapter.media_tokens().values()))
            if ids is None or tuple(ids.shape) != tuple(embeds.shape[:2]) or not torch.isin(ids, media).any():
                self.selections = []
                return None
            self._reuse_for(ids, kwargs.get("use_cache"))
            return args, self._prefill(ids, embeds, kwargs)
        if self._state is None:
            guards.check_outside_cache(past, self._prefilled)
            return None
        return args, self._decode(embeds, kwargs, past)

    def _reuse_for(self, ids: torch.Tensor, use_cache) -> None:
        """Without a KV cache, ``generate`` runs the whole sequence at every step: a prefill whose
        ``ids`` (B, L) extend the previous uncached prefill's prompt reuses that prompt's
        selections (both stages), so the result equals the cached run; any other starts anew."""
        prev = self._reuse
        self._reusing = (
            use_cache is False
            and prev is not None
            and ids.shape[0] == prev["ids"].shape[0]
            and ids.shape[1] > prev["ids"].shape[1]
            and torch.equal(ids[:, : prev["ids"].shape[1]], prev["ids"])
        )
        if not self._reusing:
            self._reuse = {"ids": ids.clone(), "pre": None, "layer": None} if use_cache is False else None

    # -- prefill ------------------------------------------------------------------------------
    def _image_tokens(self, embeds, mask2d, is_image, index, row, ph, layout) -> ImageTokens:
        feats = embeds[row, ph[layout.content]]  # (N, D)
        signals = self.adapter.image_signals(self._record, index, layout) if self._record is not None else {}
        text = None
        if self.method.needs_text:  # the prompt's text after the image, else all of it: one host sync
            real = mask2d[row].bool() & ~is_image[row]  # (L,)
            after = real & (torch.arange(real.numel(), device=real.device) > ph.max())
            text = embeds[row][torch.where(after.any(), after, real)]  # (T, D)
        feature_norm = self.adapter.saliency == "feature_norm"
        return image_tokens(
            self.method, feats, layout.regions, layout.grid, signals, feature_norm, text, index, layout.kind
        )

    def _select(self, embeds, mask2d, is_image, spans, layouts, vision_index):
        """Run the pre-LLM stage. Returns ``(keep (B, L) bool, embeds, image spans, L')`` and
        records the selections; ``L'``, the longest row's kept count, is known on the host."""
        device = embeds.device
        keep = torch.ones(is_image.shape, dtype=torch.bool, device=device)
        kept_len = [is_image.shape[1]] * is_image.shape[0]  # per row, counted on the host
        images: list[ImageSpan] = []
        if not self.method.pre_llm:
            self.selections = []
            for (row, ph), lay in zip(spans, layouts):
                n = int(lay.content.numel())
                images.append(
                    ImageSpan(row, ph[lay.content.to(device)], torch.arange(n, device=device), n, lay)
                )
                self.selections.append(
                    Selection(torch.arange(n), n, lay.grid, lay.regions, None, "none", 0.0)
                )
            return keep, embeds, images, max(kept_len, default=0)
        tokens = [
            self._image_tokens(embeds, mask2d, is_image, j, row, ph, lay)
            for j, (row, ph), lay in zip(vision_index, spans, layouts)
        ]
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            kept = self._reuse["pre"] if self._reusing else self.method.select_images(tokens)
            if self._reuse is not None:
                self._reuse["pre"] = kept
        sync(device)
        ms = (time.perf_counter() - t0) * 1e3 / max(1, len(tokens))
        keep &= ~is_image  # every image placeholder (content and separators) is dropped unless kept
        replaced, selections = None, []
        for (row, ph), lay, tok, k in zip(spans, layouts, tokens, kept):
            idx = k.indices.to(device)
            seq_pos = ph[lay.content.to(device)[idx]]
            if idx.numel() == tok.num_tokens:  # everything kept: the image stays as stock (separators too)
                keep[row, ph] = True
            else:
                keep[row, seq_pos] = True
                kept_len[row] -= ph.numel() - idx.numel()
            if k.features is not None:
                replaced = embeds.clone() if replaced is None else replaced
                replaced[row, seq_pos] = k.features.to(embeds.dtype)
            images.append(ImageSpan(row, seq_pos, idx, tok.num_tokens, lay, k.pinned))
            assignment = None if k.assignment is None else k.assignment.cpu()
            selections.append(
                Selection(idx.cpu(), tok.num_tokens, lay.grid, lay.regions, assignment, "pre_llm", ms)
            )
        self.selections = selections
        return keep, (replaced if replaced is not None else embeds), images, max(kept_len, default=0)

    def _prefill(self, ids, embeds, kwargs):
        bsz, length, _ = embeds.shape
        device = embeds.device
        mask = kwargs.get("attention_mask")
        if mask is not None and (not torch.is_tensor(mask) or mask.dim() != 2):
            raise UnsupportedFeatureError(
                "vlmprune needs a 2-D attention mask (static/compiled caches that pre-build 4-D masks are not supported)"
            )
        mask2d = mask if mask is not None else torch.ones(bsz, length, dtype=torch.long, device=device)
        spans, layouts, vision_index, is_image = self._media_spans(ids)
        keep, embeds, images, new_len = self._select(embeds, mask2d, is_image, spans, layouts, vision_index)

        index, valid = compact_index(keep, new_len)  # (B, L'): no host sync
        new_mask = gather_seq(mask2d, index, 1) * valid.to(mask2d.dtype)
        self.adapter.on_layer_prune(None, None)
        self.adapter.shorten_lm_inputs(kwargs, index, valid)
        new_pos, shift = self._positions(kwargs.get("position_ids"), index, mask2d, new_mask)
        # where each surviving image token now sits: old position -> new position
        old_to_new = new_positions(index, valid, length)  # (B, L)
        for span in images:
            span.positions = old_to_new[span.row, span.positions]

        self._state = _PrefillState(length, index.shape[1], new_mask, shift, images, ids, cur_mask=new_mask)
        self.kept_positions = torch.where(valid, index, -1)  # (B, L'): each entry's position in the input
        self._phase = "prefill"
        kwargs["inputs_embeds"] = gather_seq(embeds, index, 1)
        kwargs["attention_mask"] = new_mask
        kwargs["position_ids"] = new_pos
        return kwargs

    def _media_spans(self, ids):
        """Every image and video of the call: ``(spans, layouts, index within its kind, is_media
        (B, L))``, in batch order (row, then position)."""
        spans, layouts, index = [], [], []
        kinds = {kind: tid for kind, tid in self.adapter.media_tokens().items() if (ids == tid).any()}
        for kind, tid in kinds.items():
            lays = self.adapter.media_layouts(kind, self._call, self._record)
            got, which = assign_spans(ids, lays, tid)
            spans += got
            layouts += [lays[j] for j in which]
            index += which
        order = sorted(range(len(spans)), key=lambda i: (spans[i][0], int(spans[i][1][0])))
        is_media = torch.isin(ids, torch.tensor(list(kinds.values()), device=ids.device))
        return [spans[i] for i in order], [layouts[i] for i in order], [index[i] for i in order], is_media

    def _positions(self, pos, index, mask2d, new_mask):
        """Position ids of the shortened prompt and the (B,) shift of its last position."""
        bsz, length = mask2d.shape
        pos_full = pos if pos is not None else torch.arange(length, device=mask2d.device).expand(bsz, length)
        if pos_full.dim() == 3:  # (k, B, L) M-RoPE
            new_pos = gather_seq(pos_full, index, 2)
            return new_pos, pos_full[0, :, -1] - new_pos[0, :, -1]
        if self.policy == "original" or not self.method.pre_llm:
            new_pos = gather_seq(pos_full, index, 1)
            return new_pos, pos_full[:, -1] - new_pos[:, -1]
        first = pos_full.gather(1, first_real(mask2d)[:, None])[:, 0]
        new_pos = compact_positions(new_mask, first) if pos is not None else None
        return new_pos, pos_full[:, -1] - (new_pos[:, -1] if new_pos is not None else index.shape[1] - 1)

    # -- decode -------------------------------------------------------------------------------
    def _decode(self, embeds, kwargs, past):
        st = self._state
        bsz, s = embeds.shape[:2]
        if past != st.new_len + st.decoded:
            raise RuntimeError(
                f"the KV cache holds {past} tokens but the pruned prompt has {st.new_len} plus {st.decoded} decoded; "
                "a cache from another call cannot be continued inside this `with` block"
            )
        extra = past - st.new_len + s
        mask = kwargs.get("attention_mask")
        if mask is None:
            tail = torch.ones(bsz, extra, dtype=st.prefix.dtype, device=embeds.device)
        elif not torch.is_tensor(mask) or mask.dim() != 2:
            raise UnsupportedFeatureError(
                "vlmprune needs a 2-D attention mask while decoding (no static caches)"
            )
        else:
            if mask.shape[1] != st.orig_len + extra:
                raise RuntimeError(
                    f"`attention_mask` has {mask.shape[1]} columns, expected {st.orig_len + extra} "
                    "(the unpruned prompt plus the tokens after it)"
                )
            tail = mask[:, st.orig_len :]
        new_mask = torch.cat([st.prefix.to(tail.dtype), tail], dim=1)
        pos = kwargs.get("position_ids")
        if pos is None:
            start = st.orig_len + past - st.new_len
            pos = (torch.arange(s, device=embeds.device) + start).expand(bsz, s)
        shift = st.shift.to(pos.device)
        new_pos = pos - (shift.view(1, -1, 1) if pos.dim() == 3 else shift[:, None])
        st.decoded += s
        ids = self._call.get("input_ids")
        if ids is not None and ids.shape == (bsz, s):
            st.seen = torch.cat([st.seen, ids.to(st.seen.device)], dim=1)
        st.cur_mask = new_mask
        self._phase = "decode"
        kwargs["attention_mask"] = new_mask
        kwargs["position_ids"] = new_pos
        return kwargs


register_applier(PruningSession)
