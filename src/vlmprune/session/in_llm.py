"""The in-LLM stage of a session: pruning image tokens at the input of decoder layer ``K``.

The stock decoder loop passes one causal mask and one rotary embedding to every layer, so the
stage works through pre-hooks on layers ``K-1 .. end``: layer ``K-1``'s input is captured, layer
``K`` computes the last prompt token's attention (recomputed by the adapter, no eager attention
needed), drops image tokens from the hidden states, rotary embeddings and mask, and layers
``>= K`` get the mask of the shortened sequence at prefill and at every decode step.
"""

from __future__ import annotations

import functools
import time

import torch

from vlmprune.core.sequence import compact_index, gather_seq
from vlmprune.core.types import LayerTokens, Selection


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class InLLMStage:
    """Mixin of :class:`~vlmprune.session.PruningSession` (uses its ``adapter``, ``method``,
    ``layer``, ``selections``, ``_state`` and ``_phase``)."""

    def _install_layer_hooks(self) -> None:
        layers = self.adapter.layers
        hook = [(layers[self.layer - 1], self._on_layer_before), (layers[self.layer], self._on_prune_layer)]
        later = range(self.layer + 1, len(layers))
        hook += [(layers[i], functools.partial(self._on_later_layer, layer=i)) for i in later]
        for module, fn in hook:
            self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))

    def _active(self) -> bool:
        return self._phase is not None and self._state is not None

    def _on_layer_before(self, module, args, kwargs):
        if self._phase == "prefill" and self._state is not None:
            hidden = args[0] if args else kwargs["hidden_states"]
            self._state.layer_input = (hidden, kwargs["position_embeddings"])
        return None

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
            st.layer_override = {}
            st.layer_masks = self._masks_by_kind(hidden, mask2d, cache)
            kwargs["attention_mask"] = st.layer_masks[self.adapter.layer_kind(self.layer)]
            return args, kwargs
        return self._prune_in_layer(hidden, args, kwargs, cache)

    def _masks_by_kind(self, hidden, mask2d, cache) -> dict:
        """The mask of each kind of decoder layer from the prune layer on (softmax attention,
        linear attention, ...), for ``hidden`` (B, L'', D) and the 2-D mask ``mask2d``."""
        masks = {}
        for i in range(self.layer, len(self.adapter.layers)):
            kind = self.adapter.layer_kind(i)
            if kind not in masks:
                masks[kind] = self.adapter.layer_mask(hidden, mask2d, cache, i)
        return masks

    def _layer_tokens(self, hidden) -> list[LayerTokens]:
        """Each image's surviving tokens at the prune layer, with the signals of layer ``K-1``."""
        st = self._state
        prev_hidden, prev_pe = st.layer_input
        with torch.no_grad():
            attention, keys = self.adapter.last_token_attention(
                self.layer - 1, prev_hidden, prev_pe, st.cur_mask
            )
        bsz, length = st.cur_mask.shape
        is_image = torch.zeros(bsz, length, dtype=torch.bool, device=hidden.device)
        for span in st.images:
            is_image[span.row, span.positions] = True
        tokens = []
        for span in st.images:
            text_pos = torch.nonzero(st.cur_mask[span.row].bool() & ~is_image[span.row]).flatten()
            rows = int(span.positions.numel())
            tokens.append(
                LayerTokens(
                    attention=attention[span.row, span.positions],
                    hidden=hidden[span.row, span.positions],
                    keys=keys[span.row, span.positions],
                    text_hidden=hidden[span.row, text_pos],
                    text_keys=keys[span.row, text_pos],
                    budget=min(self.method.keep_count(span.num_tokens), rows),
                    origin=span.origin,
                    grid=span.layout.grid,
                    pinned=span.pinned,
                )
            )
        return tokens

    def _prune_in_layer(self, hidden, args, kwargs, cache):
        st = self._state
        reuse = self._reuse["layer"] if self._reusing else None
        tokens = self._layer_tokens(hidden) if reuse is None else st.images
        sync(hidden.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            kept = self.method.select_layer(tokens) if reuse is None else reuse
        if self._reuse is not None:
            self._reuse["layer"] = kept
        sync(hidden.device)
        ms = (time.perf_counter() - t0) * 1e3 / max(1, len(tokens))
        bsz, length = st.cur_mask.shape
        keep = torch.ones(bsz, length, dtype=torch.bool, device=hidden.device)
        kept_len = [length] * bsz  # per row, counted on the host
        for i, (span, k) in enumerate(zip(st.images, kept)):
            k = k.to(hidden.device)
            dropped = torch.ones(span.positions.numel(), dtype=torch.bool, device=hidden.device)
            dropped[k] = False
            keep[span.row, span.positions[dropped]] = False
            kept_len[span.row] -= span.positions.numel() - k.numel()
            sel = self.selections[i]
            self.selections[i] = Selection(
                span.origin[k].cpu(), sel.num_tokens, sel.grid, sel.regions, sel.assignment, "in_llm",
                sel.selection_ms + ms,
            )  # fmt: skip
        index, valid = compact_index(keep, max(kept_len, default=0))  # no host sync
        self.adapter.on_layer_prune(index, valid)
        new_hidden = gather_seq(hidden, index, 1)
        # without explicit position ids the LLM builds them (and cos/sin) with batch 1: broadcast first
        cos, sin = (t.expand(bsz, *t.shape[1:]) for t in kwargs["position_embeddings"])
        override = {"position_embeddings": (gather_seq(cos, index, 1), gather_seq(sin, index, 1))}
        if torch.is_tensor(kwargs.get("position_ids")):
            override["position_ids"] = gather_seq(kwargs["position_ids"].expand(bsz, -1), index, 1)
        st.layer_prefix = gather_seq(st.cur_mask, index, 1) * valid.to(st.cur_mask.dtype)
        st.layer_masks = self._masks_by_kind(new_hidden, st.layer_prefix, cache)
        st.layer_override = override
        st.layer_input = None
        kwargs.update(override, attention_mask=st.layer_masks[self.adapter.layer_kind(self.layer)])
        if args:
            args = (new_hidden, *args[1:])
        else:
            kwargs["hidden_states"] = new_hidden
        return args, kwargs

    def _on_later_layer(self, module, args, kwargs, layer: int):
        if not self._active():
            return None
        st = self._state
        kwargs.update(st.layer_override, attention_mask=st.layer_masks[self.adapter.layer_kind(layer)])
        return args, kwargs
