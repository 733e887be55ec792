"""``with method(model):`` — installs forward hooks on a stock model and removes them on exit.

No global patching and no forked model code: every change is a standard PyTorch forward
(pre-)hook on the user's model instance, removed in ``__exit__`` even when the wrapped call raises.

Hooks, in the order they fire during one forward:

1. the VLM base model (``model.model``): records ``input_ids`` and the image metadata of the call;
   while decoding a pruned sequence without an attention mask it supplies the all-ones mask of the
   *unpruned* length, so the stock position logic (e.g. Qwen's ``rope_deltas``) stays exact;
2. the vision tower (adapter hooks): captures saliency, keys and pre-projector features;
3. the language model (``model.model.language_model``): at prefill, selects the kept visual tokens
   (pre-LLM stage) and shortens ``inputs_embeds``, the 2-D mask and the position ids; while
   decoding, rewrites the mask and position ids so they match the shortened KV cache;
4. decoder layers ``K-1 .. end`` (in-LLM stage only): layer ``K-1``'s input is captured, layer ``K``
   computes the last prompt token's attention (recomputed, no eager attention needed), drops image
   tokens from the hidden states, rotary embeddings and mask, and layers ``>= K`` get the mask of
   the shortened sequence at prefill and at every decode step.

Position policies (integration.md): ``"original"`` gathers the unpruned position ids at the kept
tokens (equals the stock model with ``attention_mask = 0`` at dropped tokens); ``"compact"``
renumbers the kept tokens consecutively (equals the stock model fed only the kept tokens).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from vlmprune.adapters.base import VisionRecord, get_adapter
from vlmprune.core.base import ImageTokens, LayerTokens, Method, Selection
from vlmprune.core.saliency import last_token_attention
from vlmprune.core.sequence import compact_index, compact_positions, first_real, gather_seq


@dataclass
class _ImageSpan:
    row: int
    positions: torch.Tensor  # (n,) positions of the image's surviving content tokens in the current sequence
    origin: torch.Tensor  # (n,) their indices among the image's content tokens
    num_tokens: int
    layout: object


@dataclass
class _PrefillState:
    orig_len: int  # L: prompt length as the user passed it
    new_len: int  # L': prompt length after the pre-LLM stage
    prefix: torch.Tensor  # (B, L') 2-D mask of the shortened prompt
    shift: torch.Tensor  # (B,) original minus new position of the last prompt token
    images: list[_ImageSpan]
    decoded: int = 0  # tokens fed after the prompt so far
    cur_mask: torch.Tensor | None = None  # (B, L' + decoded) mask of the current call
    layer_prefix: torch.Tensor | None = None  # (B, L'') prompt mask for layers >= K
    layer_override: dict = field(default_factory=dict)
    layer_input: tuple | None = None  # (hidden, position_embeddings) captured at layer K-1


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PruningSession:
    """Context manager returned by ``method(model)``. See the module docstring."""

    def __init__(self, method: Method, model, saliency: str = "auto"):
        self.method = method
        self.model = model
        self.adapter = get_adapter(model, saliency)
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
        self.needs = {
            name
            for name, flag in (
                ("saliency", method.needs_saliency),
                ("keys", method.needs_keys),
                ("pre_features", method.needs_pre_features),
            )
            if flag
        }
        if self.adapter.saliency == "feature_norm":
            self.needs.discard("saliency")
        self._handles: list = []
        self._record: VisionRecord | None = None
        self._call: dict = {}
        self._state: _PrefillState | None = None
        self._phase: str | None = None

    # -- install / remove -----------------------------------------------------------------
    def __enter__(self):
        if getattr(self.model, "_vlmprune_session", None) is not None:
            raise RuntimeError(
                "a vlmprune method is already applied to this model; nested `with` blocks are not supported"
            )
        try:
            vision = self.adapter.vision_module()
            self._handles.append(vision.register_forward_pre_hook(self._new_record))
            self._handles += self.adapter.vision_hooks(lambda: self._record, self.needs)
            self._handles.append(self.adapter.base.register_forward_pre_hook(self._on_base, with_kwargs=True))
            self._handles.append(
                self.adapter.language_model.register_forward_pre_hook(
                    self._on_language_model, with_kwargs=True
                )
            )
            if self.layer is not None:
                layers = self.adapter.layers
                self._handles.append(
                    layers[self.layer - 1].register_forward_pre_hook(self._on_layer_before, with_kwargs=True)
                )
                self._handles.append(
                    layers[self.layer].register_forward_pre_hook(self._on_prune_layer, with_kwargs=True)
                )
                for later in layers[self.layer + 1 :]:
                    self._handles.append(
                        later.register_forward_pre_hook(self._on_later_layer, with_kwargs=True)
                    )
        except BaseException:
            self._remove()
            raise
        self.model._vlmprune_session = self
        return self

    def __exit__(self, *exc):
        self._remove()
        return False

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._record, self._state, self._call, self._phase = None, None, {}, None
        if getattr(self.model, "_vlmprune_session", None) is self:
            del self.model._vlmprune_session

    # -- hooks ------------------------------------------------------------------------------
    def _new_record(self, module, args):
        self._record = VisionRecord()

    def _on_base(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self._call = {
            "input_ids": input_ids,
            "image_sizes": kwargs.get("image_sizes"),
            "image_grid_thw": kwargs.get("image_grid_thw"),
        }
        st, cache = self._state, kwargs.get("past_key_values")
        if (
            st is not None
            and cache is not None
            and kwargs.get("attention_mask") is None
            and input_ids is not None
        ):
            past = cache.get_seq_length()
            if past > 0:
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
            self._state = None
            ids = self._call.get("input_ids")
            if (
                ids is None
                or tuple(ids.shape) != tuple(embeds.shape[:2])
                or not (ids == self.adapter.image_token_id).any()
            ):
                self.method.last_selection = []
                return None
            return args, self._prefill(ids, embeds, kwargs)
        if self._state is None:
            return None
        return args, self._decode(embeds, kwargs, past)

    # -- prefill ------------------------------------------------------------------------------
    def _spans(self, ids: torch.Tensor, layouts) -> tuple[list[tuple[int, torch.Tensor]], list[int]]:
        """Assign images to rows: ``(row, placeholder positions (n,))`` per image in batch order,
        and for each the index of its image in the vision tower's run.

        ``generate(num_beams=r)`` / ``num_return_sequences=r`` repeat each prompt row r times
        (``repeat_interleave``) after the vision tower ran once per original image: then each
        group of r identical rows shares its images.
        """
        bsz = ids.shape[0]
        for r in range(1, bsz + 1):
            if bsz % r or (r > 1 and not torch.equal(ids, ids[::r].repeat_interleave(r, dim=0))):
                continue
            base = self._assign(ids[::r], layouts)
            if base is None:
                continue
            spans, vision_index = [], []
            per_row: dict[int, list[int]] = {}
            for j, (row, _) in enumerate(base):
                per_row.setdefault(row, []).append(j)
            for b in range(bsz):
                for j in per_row.get(b // r, []):
                    spans.append((b, base[j][1]))
                    vision_index.append(j)
            return spans, vision_index
        raise ValueError("the image placeholders in `input_ids` do not match the images' token counts")

    def _assign(self, ids: torch.Tensor, layouts) -> list[tuple[int, torch.Tensor]] | None:
        is_image = ids == self.adapter.image_token_id
        spans, it = [], iter(layouts)
        for b in range(ids.shape[0]):
            pos = torch.nonzero(is_image[b]).flatten()
            off = 0
            while off < pos.numel():
                layout = next(it, None)
                if layout is None or off + layout.n_placeholders > pos.numel():
                    return None
                spans.append((b, pos[off : off + layout.n_placeholders]))
                off += layout.n_placeholders
        if len(spans) != len(layouts):  # every image the adapter laid out must sit in the prompt
            return None
        return spans

    def _image_tokens(self, embeds, mask2d, is_image, index, row, ph, layout) -> ImageTokens:
        method = self.method
        feats = embeds[row, ph[layout.content]]  # (N, D)
        signals = self.adapter.image_signals(self._record, index, layout) if self._record is not None else {}
        saliency = signals.get("saliency")
        if method.needs_saliency and self.adapter.saliency == "feature_norm":
            saliency = feats.float().norm(dim=-1)
        if method.needs_saliency and saliency is None:
            raise RuntimeError(
                f"{method.name}: no saliency was captured (did the vision tower run in this call?)"
            )
        text = None
        if method.needs_text:
            real = mask2d[row].bool() & ~is_image[row]
            after = real.clone()
            after[: int(ph.max()) + 1] = False
            text_pos = torch.nonzero(after if after.any() else real).flatten()
            text = embeds[row, text_pos]
        n = int(layout.content.numel())
        return ImageTokens(
            features=feats,
            budget=method.keep_count(n),
            regions=layout.regions,
            grid=layout.grid,
            pre_features=signals.get("pre_features"),
            saliency=saliency,
            keys=signals.get("keys"),
            text=text,
            seed=index,
        )

    def _prefill(self, ids, embeds, kwargs):
        method, device = self.method, embeds.device
        bsz, length, _ = embeds.shape
        mask = kwargs.get("attention_mask")
        if mask is not None and (not torch.is_tensor(mask) or mask.dim() != 2):
            raise NotImplementedError(
                "vlmprune needs a 2-D attention mask (static/compiled caches that pre-build 4-D masks are not supported)"
            )
        mask2d = mask if mask is not None else torch.ones(bsz, length, dtype=torch.long, device=device)
        layouts = self.adapter.image_layouts(self._call, self._record)
        spans, vision_index = self._spans(ids, layouts)
        layouts = [layouts[j] for j in vision_index]
        is_image = ids == self.adapter.image_token_id

        keep = torch.ones(bsz, length, dtype=torch.bool, device=device)
        images: list[_ImageSpan] = []
        selections: list[Selection] = []
        if method.pre_llm:
            tokens = [
                self._image_tokens(embeds, mask2d, is_image, j, row, ph, lay)
                for j, (row, ph), lay in zip(vision_index, spans, layouts)
            ]
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                kept = method.select_images(tokens)
            _sync(device)
            ms = (time.perf_counter() - t0) * 1e3 / max(1, len(tokens))
            keep &= ~is_image  # every image placeholder (content and newline) is dropped unless kept
            replaced = None
            for (row, ph), lay, tok, k in zip(spans, layouts, tokens, kept):
                idx = k.indices.to(device)
                seq_pos = ph[lay.content.to(device)[idx]]
                if idx.numel() == tok.num_tokens:  # everything kept: the image stays as stock (newlines too)
                    keep[row, ph] = True
                else:
                    keep[row, seq_pos] = True
                if k.features is not None:
                    replaced = embeds.clone() if replaced is None else replaced
                    replaced[row, seq_pos] = k.features.to(embeds.dtype)
                images.append(_ImageSpan(row, seq_pos, idx, tok.num_tokens, lay))
                selections.append(
                    Selection(idx.cpu(), tok.num_tokens, lay.grid, lay.regions, k.assignment, "pre_llm", ms)
                )
            embeds = replaced if replaced is not None else embeds
        else:
            for (row, ph), lay in zip(spans, layouts):
                n = int(lay.content.numel())
                images.append(
                    _ImageSpan(row, ph[lay.content.to(device)], torch.arange(n, device=device), n, lay)
                )
                selections.append(Selection(torch.arange(n), n, lay.grid, lay.regions, None, "none", 0.0))
        method.last_selection = selections

        index, valid = compact_index(keep)  # (B, L')
        new_len = index.shape[1]
        new_embeds = gather_seq(embeds, index, 1)
        new_mask = gather_seq(mask2d, index, 1) * valid.to(mask2d.dtype)
        pos = kwargs.get("position_ids")
        pos_full = pos if pos is not None else torch.arange(length, device=device).expand(bsz, length)
        if pos_full.dim() == 3:  # (k, B, L) M-RoPE
            new_pos = gather_seq(pos_full, index, 2)
            shift = pos_full[0, :, -1] - new_pos[0, :, -1]
        elif self.policy == "original" or not method.pre_llm:
            new_pos = gather_seq(pos_full, index, 1)
            shift = pos_full[:, -1] - new_pos[:, -1]
        else:
            first = pos_full.gather(1, first_real(mask2d)[:, None])[:, 0]
            new_pos = compact_positions(new_mask, first) if pos is not None else None
            shift = pos_full[:, -1] - (new_pos[:, -1] if new_pos is not None else new_len - 1)

        # where each surviving image token now sits: old position -> new position
        old_to_new = torch.full((bsz, length), -1, dtype=torch.long, device=device)
        rows = torch.arange(bsz, device=device)[:, None].expand_as(index)
        old_to_new[rows[valid], index[valid]] = torch.nonzero(valid)[:, 1]
        for span in images:
            span.positions = old_to_new[span.row, span.positions]

        self._state = _PrefillState(length, new_len, new_mask, shift, images, cur_mask=new_mask)
        self._phase = "prefill"
        kwargs["inputs_embeds"] = new_embeds
        kwargs["attention_mask"] = new_mask
        kwargs["position_ids"] = new_pos
        return kwargs

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
            raise NotImplementedError("vlmprune needs a 2-D attention mask while decoding")
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
        st.cur_mask = new_mask
        self._phase = "decode"
        kwargs["attention_mask"] = new_mask
        kwargs["position_ids"] = new_pos
        return kwargs

    # -- in-LLM stage --------------------------------------------------------------------------
    def _active(self) -> bool:
        return self._phase is not None and self._state is not None

    def _on_layer_before(self, module, args, kwargs):
        if self._phase == "prefill" and self._state is not None:
            hidden = args[0] if args else kwargs["hidden_states"]
            self._state.layer_input = (hidden, kwargs["position_embeddings"])
        return None

    def _layer_mask(self, hidden, mask2d, cache):
        from transformers.masking_utils import create_causal_mask

        return create_causal_mask(
            config=self.adapter.language_model.config,
            inputs_embeds=hidden,
            attention_mask=mask2d,
            past_key_values=cache,
            layer_idx=self.layer,
        )

    def _on_prune_layer(self, module, args, kwargs):
        if not self._active():
            return None
        st = self._state
        hidden = args[0] if args else kwargs["hidden_states"]
        cache = kwargs.get("past_key_values")
        if self._phase == "decode":
            mask2d = torch.cat(
                [st.layer_prefix, st.cur_mask[:, st.new_len :].to(st.layer_prefix.dtype)], dim=1
            )
            st.layer_override = {"attention_mask": self._layer_mask(hidden, mask2d, cache)}
            kwargs.update(st.layer_override)
            return args, kwargs
        return self._prune_in_layer(hidden, args, kwargs, cache)

    def _prune_in_layer(self, hidden, args, kwargs, cache):
        st, method = self._state, self.method
        prev_hidden, prev_pe = st.layer_input
        with torch.no_grad():
            attention, keys = last_token_attention(
                self.adapter.layers[self.layer - 1], prev_hidden, prev_pe, st.cur_mask
            )
        bsz, length = st.cur_mask.shape
        is_image = torch.zeros(bsz, length, dtype=torch.bool, device=hidden.device)
        for span in st.images:
            is_image[span.row, span.positions] = True
        tokens = []
        for span in st.images:
            text_pos = torch.nonzero(st.cur_mask[span.row].bool() & ~is_image[span.row]).flatten()
            tokens.append(
                LayerTokens(
                    attention=attention[span.row, span.positions],
                    hidden=hidden[span.row, span.positions],
                    keys=keys[span.row, span.positions],
                    text_hidden=hidden[span.row, text_pos],
                    text_keys=keys[span.row, text_pos],
                    budget=method.keep_count(span.num_tokens),
                    origin=span.origin,
                    grid=span.layout.grid,
                )
            )
        _sync(hidden.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            kept = method.select_layer(tokens)
        _sync(hidden.device)
        ms = (time.perf_counter() - t0) * 1e3 / max(1, len(tokens))
        keep = torch.ones(bsz, length, dtype=torch.bool, device=hidden.device)
        for i, (span, k) in enumerate(zip(st.images, kept)):
            k = k.to(hidden.device)
            dropped = torch.ones(span.positions.numel(), dtype=torch.bool, device=hidden.device)
            dropped[k] = False
            keep[span.row, span.positions[dropped]] = False
            sel = method.last_selection[i]
            method.last_selection[i] = Selection(
                span.origin[k].cpu(),
                sel.num_tokens,
                sel.grid,
                sel.regions,
                sel.assignment,
                "in_llm",
                sel.selection_ms + ms,
            )
        index, valid = compact_index(keep)
        new_hidden = gather_seq(hidden, index, 1)
        # without explicit position ids the LLM builds them (and cos/sin) with batch 1: broadcast first
        cos, sin = (t.expand(bsz, *t.shape[1:]) for t in kwargs["position_embeddings"])
        override = {"position_embeddings": (gather_seq(cos, index, 1), gather_seq(sin, index, 1))}
        if torch.is_tensor(kwargs.get("position_ids")):
            override["position_ids"] = gather_seq(kwargs["position_ids"].expand(bsz, -1), index, 1)
        st.layer_prefix = gather_seq(st.cur_mask, index, 1) * valid.to(st.cur_mask.dtype)
        override["attention_mask"] = self._layer_mask(new_hidden, st.layer_prefix, cache)
        st.layer_override = override
        st.layer_input = None
        kwargs.update(override)
        if args:
            args = (new_hidden, *args[1:])
        else:
            kwargs["hidden_states"] = new_hidden
        return args, kwargs

    def _on_later_layer(self, module, args, kwargs):
        if not self._active():
            return None
        kwargs.update(self._state.layer_override)
        return args, kwargs
