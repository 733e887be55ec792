"""The family-independent half of the plugin: the prompt processor's side and the model's side.

The processor (API-server process) resolves each request's configuration, emits K placeholders
per image instead of N (the count is fixed here, before the model runs) and attaches to each
image its configuration (``vlmprune_spec``) and, for methods that read the prompt, the prompt's
text token ids after that image (``vlmprune_text``). The model (worker process) runs the stock
vision tower with the family's signal hooks, selects with the method's pure ``select`` and
returns the K kept rows; families with M-RoPE append the kept tokens' original positions.
"""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager

import torch

from vlmprune.core.tokens import image_tokens
from vlmprune.core.types import Region
from vlmprune.integrations.vllm.config import KEY, ConfigError, Spec, decode, encode_rows, merge, resolve

SPEC_FIELD = "vlmprune_spec"
TEXT_FIELD = "vlmprune_text"
#: per modality the processor's fields: (configuration, text token ids)
FIELDS = {"image": (SPEC_FIELD, TEXT_FIELD), "video": ("vlmprune_video_spec", "vlmprune_video_text")}
#: per modality the field holding each item's unpruned token count N: the encoder's work, which
#: :mod:`vlmprune.integrations.vllm.scheduler` charges where vLLM's own scheduler charges K
TOKENS_FIELD = {"image": "vlmprune_tokens", "video": "vlmprune_video_tokens"}
#: per modality the stock input keys that name it in a batch of ``embed_multimodal``
INPUT_KEYS = {"image": ("pixel_values", "image_embeds"), "video": ("pixel_values_videos", "video_embeds")}


class PruningProcessor:
    """Mixed in before a family's stock vLLM multimodal processor.

    A family sets ``positions`` (the position policies it supports under vLLM) and
    ``modalities`` (what it prunes: images, and videos where its model takes them), and implements
    ``_vlmprune_media_ids`` (token ids that are not text: image and video placeholders),
    ``_vlmprune_image_id`` (``_vlmprune_video_id``) and ``_vlmprune_num_images`` (images in an HF
    processor output; ``_vlmprune_num_videos``).
    """

    positions: tuple[str, ...] = ("compact",)
    modalities: tuple[str, ...] = ("image",)
    _local = threading.local()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._vlmprune_spec({})  # a bad server configuration fails here, at start-up

    def _vlmprune_spec(self, hf_kwargs) -> Spec | None:
        server = getattr(self.info.get_hf_config(), KEY, None)
        return resolve(merge(server, (hf_kwargs or {}).get(KEY)), self.positions)

    def _vlmprune_texts(self, prompt, n_images: int, modality: str = "image", out=None) -> list[torch.Tensor]:
        """Per image (video): the prompt's text token ids after its placeholder (all of them when none).
        ``out``: the HF processor's output for the request's items."""
        ids = list(prompt) if not isinstance(prompt, str) else self.info.get_tokenizer().encode(prompt)
        image = self._vlmprune_video_id() if modality == "video" else self._vlmprune_image_id()
        media = set(self._vlmprune_media_ids())
        marks = [i for i, t in enumerate(ids) if t == image]
        text = [(i, t) for i, t in enumerate(ids) if t not in media]
        out = []
        for j in range(n_images):
            start = marks[j] if j < len(marks) else -1
            after = [t for i, t in text if i > start]
            out.append(torch.tensor(after or [t for _, t in text], dtype=torch.long))
        return out

    # -- vLLM's processor hooks --------------------------------------------------------------
    def _get_mm_hashes(self, inputs):
        hashes = super()._get_mm_hashes(inputs)
        spec = self._vlmprune_spec(inputs.hf_processor_mm_kwargs)
        if spec is None or not spec.method.needs_text or not set(self.modalities) & set(hashes):
            return hashes
        prompt = inputs.prompt if isinstance(inputs.prompt, str) else ",".join(map(str, inputs.prompt))
        digest = hashlib.sha256(prompt.encode()).hexdigest()[:16]
        out = dict(hashes)
        for m in set(self.modalities) & set(hashes):  # text is per prompt
            out[m] = [f"{h}-{digest}-{i}" for i, h in enumerate(hashes[m])]
        return out

    def _cached_apply_hf_processor(self, inputs, timing_ctx):
        self._local.prompt, self._local.missing = inputs.prompt, None
        try:
            return super()._cached_apply_hf_processor(inputs, timing_ctx)
        finally:
            self._local.prompt = self._local.missing = None

    def _get_cache_missing_items(self, cache, mm_data_items, mm_hashes):
        is_cached, missing = super()._get_cache_missing_items(cache, mm_data_items, mm_hashes)
        self._local.missing = {
            m: [i for i, hit in enumerate(is_cached.get(m, [])) if not hit] for m in self.modalities
        }
        return is_cached, missing

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        spec = self._vlmprune_spec(hf_kwargs)
        rest = {k: v for k, v in hf_kwargs.items() if k != KEY}  # the HF processor never sees it
        out = super()._apply_hf_processor_main(mm_items, rest)
        for modality in self.modalities:
            n = self._vlmprune_num_videos(out) if modality == "video" else self._vlmprune_num_images(out)
            if n == 0:
                continue
            missing = (getattr(self._local, "missing", None) or {}).get(modality)  # which of the request's
            index = list(missing)[:n] if missing else list(range(n))
            spec_field, text_field = FIELDS[modality]
            out[spec_field] = encode_rows(spec, index)  # (n, L)
            prompt = getattr(self._local, "prompt", None)
            if spec is not None and spec.method.needs_text and prompt is not None:
                texts = self._vlmprune_texts(prompt, 1 + max(index), modality, out)
                out[text_field] = [texts[i] for i in index]
        if spec is not None:
            self._vlmprune_count_tokens(mm_items, rest, out)
        return out

    def _vlmprune_count_tokens(self, mm_items, hf_kwargs, out) -> None:
        """Per pruned modality, each item's unpruned token count N (n,) as ``TOKENS_FIELD``,
        read off the stock prompt updates (their embedding positions)."""
        from vllm.multimodal.inputs import MultiModalKwargsItems

        items = MultiModalKwargsItems.from_hf_inputs(out, super()._get_mm_fields_config(out, hf_kwargs))
        for update in super()._get_prompt_updates(mm_items, hf_kwargs, items):
            if update.modality in self.modalities and update.modality in items:
                stock = update.replacement
                counts = [
                    _num_embeds(stock(i) if callable(stock) else stock)
                    for i in range(len(items[update.modality]))
                ]
                out[TOKENS_FIELD[update.modality]] = torch.tensor(counts, dtype=torch.long)  # (n,)

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        from vllm.multimodal.inputs import MultiModalFieldConfig

        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        for modality in self.modalities:
            spec_field, text_field = FIELDS[modality]
            fields[spec_field] = MultiModalFieldConfig.batched(modality, keep_on_cpu=True)
            fields[text_field] = MultiModalFieldConfig.batched(modality)
            fields[TOKENS_FIELD[modality]] = MultiModalFieldConfig.batched(modality, keep_on_cpu=True)
        return fields

    def _vlmprune_refuse_embeddings(self, mm_items, hf_kwargs) -> None:
        """Embeddings given in place of pixels (``image_embeds``, ``video_embeds``) never pass the
        tower whose signals and layout a selection reads: a request that configures pruning for
        them is refused, naming the input, rather than served unpruned."""
        from vllm.multimodal.parse import DictEmbeddingItems, EmbeddingItems

        embedded = (EmbeddingItems, DictEmbeddingItems)  # tensors, or dicts with their grids (Qwen)
        given = [m for m in self.modalities if isinstance(mm_items.get(m), embedded)]
        if given and self._vlmprune_spec(hf_kwargs) is not None:
            family = self.info.get_hf_config().model_type
            raise ConfigError(
                f"vlmprune: {family} prunes {given[0]}s given as pixels, not as `{given[0]}_embeds`"
            )

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        """The stock updates, with each image's (video's) run of N placeholders cut to its kept count K."""
        self._vlmprune_refuse_embeddings(mm_items, hf_processor_mm_kwargs)
        updates = list(super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs))
        for u, update in enumerate(updates):
            if update.modality in self.modalities:
                updates[u] = _with_kept_count(update, out_mm_kwargs, self._vlmprune_cut)
        return updates

    def _vlmprune_cut(self, modality: str, tokens, spec: Spec | None):
        """An item's stock replacement ``tokens`` (one placeholder token repeated N times) -> its
        first K (all of them without a configuration)."""
        return tokens if spec is None else list(tokens)[: spec.keep_count(len(tokens))]


def _num_embeds(tokens) -> int:
    """Embedding positions of one stock replacement: a list of token ids, or details with an
    ``is_embed`` mask over ``full``."""
    full = getattr(tokens, "full", tokens)
    is_embed = getattr(tokens, "is_embed", None)
    return len(full) if is_embed is None else int(is_embed(list(full)).sum())


def _with_kept_count(update, out_mm_kwargs, cut):
    from dataclasses import replace

    stock, field = update.replacement, FIELDS[update.modality][0]

    def kept(item_idx: int):
        tokens = stock(item_idx) if callable(stock) else stock
        item = out_mm_kwargs[update.modality][item_idx]
        return cut(update.modality, tokens, decode(item[field].data) if field in item else None)

    return replace(update, replacement=kept)


class PruningModel:
    """Mixed in before a family's stock vLLM model class.

    A family implements ``_vlmprune_capture(needs)`` (a context manager yielding a dict the
    vision hooks fill), ``_vlmprune_images(kwargs, record, embeds)`` (per image: its layout and
    signals; ``_vlmprune_videos`` where it prunes videos, its ``"kind"`` ``"video"`` and its frames
    the regions) and may override ``_vlmprune_pack`` (what the LLM receives for the kept rows).
    vLLM batches one modality per call.
    """

    #: the modalities whose embeddings go through selection (the processor's ``modalities``)
    vlmprune_modalities: tuple[str, ...] = ("image",)

    def embed_multimodal(self, **kwargs):
        fields = {f: kwargs.pop(f, None) for pair in FIELDS.values() for f in pair}
        for f in TOKENS_FIELD.values():  # the scheduler's, not the tower's
            kwargs.pop(f, None)
        kind = next((m for m, keys in INPUT_KEYS.items() if any(k in kwargs for k in keys)), None)
        pruned = kind in self.vlmprune_modalities
        specs, texts = (fields[f] for f in FIELDS[kind]) if pruned else (None, None)
        decoded = [decode(s) for s in specs] if specs is not None else []
        needs = _needs(decoded)
        with self._vlmprune_capture(needs) as record:
            embeds = super().embed_multimodal(**kwargs)
        if not pruned:
            return embeds
        layouts = self._vlmprune_videos if kind == "video" else self._vlmprune_images
        infos = layouts(kwargs, record, embeds)
        lost = sorted(k for k in needs - {"keys"} if any(info.get(k) is None for info in infos))
        if lost:  # a hook that never ran (keys: CLS towers only): refuse rather than select on a stand-in
            raise RuntimeError(f"vlmprune: the vision tower's hooks captured no {', '.join(lost)}")
        out = []
        for i, (emb, info) in enumerate(zip(embeds, infos)):
            spec = decoded[i] if i < len(decoded) else None
            text = None if texts is None else texts[i]
            out.append(self._vlmprune_select_one(emb, info, spec, text))
        return tuple(out)

    def _vlmprune_main_width(self) -> int | None:
        """Columns of an embedding row that are the LLM input (None: all); the rest (e.g.
        DeepStack features) travel with their token."""
        return None

    def _vlmprune_select_one(self, emb: torch.Tensor, info: dict, spec: Spec | None, text):
        n = emb.shape[0]
        if spec is None or spec.keep_count(n) >= n:
            return self._vlmprune_pack(emb, torch.arange(n, device=emb.device), info)
        width = self._vlmprune_main_width()
        emb, extra = (emb, None) if width is None else (emb[:, :width], emb[:, width:])
        method = spec.method
        text_embeds = None
        if method.needs_text and text is not None:
            ids = torch.as_tensor(text, device=emb.device).long().flatten()
            text_embeds = self.get_language_model().embed_input_ids(ids)
        signals = {k: info[k] for k in ("saliency", "keys", "pre_features") if k in info}
        norm = spec.saliency == "feature_norm"
        kind = info.get("kind", "image")
        tokens = image_tokens(
            method, emb, info["regions"], info["grid"], signals, norm, text_embeds, spec.seed, kind
        )
        with torch.no_grad():
            kept = method.select_images([tokens])[0]
        idx = kept.indices.to(emb.device)
        rows = emb[idx] if kept.features is None else kept.features.to(emb.dtype)
        if extra is not None:
            rows = torch.cat([rows, extra[idx]], dim=1)  # (K, D) + (K, D') -> (K, D + D')
        return self._vlmprune_pack(rows, idx, info)

    def _vlmprune_pack(self, rows: torch.Tensor, idx: torch.Tensor, info: dict) -> torch.Tensor:
        """The LLM's input rows for the kept tokens ``idx`` (sorted): ``rows`` themselves."""
        return rows


def _needs(specs) -> set[str]:
    needs = set()
    for spec in specs:
        if spec is None:
            continue
        m = spec.method
        if m.needs_saliency and spec.saliency != "feature_norm":
            needs.add("saliency")
        needs |= {k for k, flag in (("keys", m.needs_keys), ("pre_features", m.needs_pre_features)) if flag}
    return needs


def whole(n: int, grid: tuple[int, int]) -> list[Region]:
    """One region over ``n`` raster tokens of ``grid``."""
    return [Region(torch.arange(n), tuple(grid))]


@contextmanager
def hooks(handles: list):
    """Remove ``handles`` on exit, whatever happens inside."""
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def all_heads(t: torch.Tensor, local_heads: int, total_heads: int) -> torch.Tensor:
    """``t``, this rank's share of a mean over every head -> the mean (all-reduced when the heads
    are split across tensor-parallel ranks)."""
    if local_heads == total_heads:
        return t
    from vllm.distributed import tensor_model_parallel_all_reduce

    return tensor_model_parallel_all_reduce(t.contiguous())


def heads_mean(t: torch.Tensor, local_heads: int, total_heads: int) -> torch.Tensor:
    """``t``, the mean over this rank's heads -> the mean over every head."""
    if local_heads == total_heads:
        return t
    return all_heads(t * local_heads, local_heads, total_heads) / total_heads
