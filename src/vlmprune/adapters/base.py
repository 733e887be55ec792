"""The adapter interface: the only library code that knows transformers internals of a family.

An adapter has two sides.

*Bound to a model* (``Adapter(model)``), for the session: where the vision tower runs, so side
signals can be captured with forward hooks as the stock code runs (``vision_module``,
``vision_hooks``, ``image_signals``); how each image's visual tokens are laid out in the LLM
sequence (``image_layouts``); the language model, its decoder layers, the last prompt token's
attention at a layer and the causal mask of a shortened sequence (``last_token_attention``,
``layer_mask``). Shortening sequences, positions, masks and KV-cache bookkeeping are
family-independent and live in :mod:`vlmprune.session`.

*The family* (class attributes and class methods), for the tools built on the library: the stock
classes, the real-size configs (``archs``), the prompt format and placeholder, the vision tower's
FLOPs shape (``vision_shape``) and the token geometry drawn by the visualisations
(``token_geometry``). The tiny test model and the bench fixtures are declared apart, in
:class:`~vlmprune.adapters.fixtures.Fixtures` (a base of :class:`Adapter`).

Families register with :func:`register_adapter`; the registry, keyed by ``model_type``, drives
the method x family test matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from vlmprune.adapters.fixtures import Fixtures
from vlmprune.core.errors import UnsupportedModelError
from vlmprune.core.sequence import last_real
from vlmprune.core.types import Region

SALIENCY_SIGNALS = ("auto", "cls_attention", "attention_received", "feature_norm")


@dataclass
class ImageLayout:
    """How one image sits in the LLM sequence.

    ``n_placeholders``: tokens it occupies (content tokens plus any row separators);
    ``content`` (N,): offsets of its content tokens inside that run, in raster order;
    ``regions``/``grid``: the layout of the N content tokens (see :class:`~vlmprune.core.types.Region`).
    """

    n_placeholders: int
    content: torch.Tensor
    regions: list[Region]
    grid: tuple[int, ...]
    kind: str = "image"  # "image" or "video" (a video's regions are its frames)


@dataclass
class VisionRecord:
    """What the vision hooks captured in one call: a dict per run of the vision tower (a family
    that encodes images and videos separately runs it twice: images first). ``raw`` is the current
    run's dict; ``used`` is set once a prefill has read the record."""

    runs: list = field(default_factory=list)
    used: bool = False

    @property
    def raw(self) -> dict:
        if not self.runs:
            self.runs.append({})
        return self.runs[-1]

    def new_run(self, pixels=None) -> None:
        """Start a run; ``pixels`` (the tower's input) records ``encoded``, how many images, crops,
        tiles or frames it holds (its first dimension)."""
        self.runs.append({} if pixels is None else {"encoded": int(pixels.shape[0])})


@dataclass
class TokenGeometry:
    """Where the N visual tokens of one image came from.

    ``boxes`` (N, 4) float64 ``x0, y0, x1, y1`` in original-image pixels, clipped to the image (a
    token that saw only padding has an empty box); ``view`` (N,) int64, the view each token belongs
    to (index into ``views``: e.g. a base view and a high-resolution view); ``grids`` the token grid
    ``(rows, cols)`` of each view; ``image_size`` ``(W, H)``; ``description`` one line saying how
    the processor turned the image into tokens.
    """

    boxes: np.ndarray
    view: np.ndarray
    views: tuple[str, ...]
    grids: tuple[tuple[int, int], ...]
    image_size: tuple[int, int]
    description: str = ""

    @property
    def num_tokens(self) -> int:
        return int(self.boxes.shape[0])


def edges_to_boxes(xs: np.ndarray, ys: np.ndarray, width: int, height: int) -> np.ndarray:
    """(gw+1,) and (gh+1,) cell edges in original pixels -> (gh*gw, 4) raster boxes clipped to the image."""
    xs = np.clip(xs, 0.0, float(width))
    ys = np.clip(ys, 0.0, float(height))
    gh, gw = len(ys) - 1, len(xs) - 1
    x0 = np.broadcast_to(xs[None, :-1], (gh, gw))
    x1 = np.broadcast_to(xs[None, 1:], (gh, gw))
    y0 = np.broadcast_to(ys[:-1, None], (gh, gw))
    y1 = np.broadcast_to(ys[1:, None], (gh, gw))
    return np.stack([x0, y0, x1, y1], axis=-1).reshape(-1, 4).astype(np.float64)


def single_view(boxes: np.ndarray, grid: tuple[int, int], image_size, description: str) -> TokenGeometry:
    """A :class:`TokenGeometry` with one view."""
    return TokenGeometry(
        boxes, np.zeros(len(boxes), np.int64), ("image",), (tuple(grid),), image_size, description
    )


@dataclass(kw_only=True)
class ImagesOnlyProcessor:
    """Base of the processors that need no torchvision: the stock PIL image processor, then the
    placeholder expansion the stock processor does. The stock processors of the newer families
    cannot be built without torchvision (their video processors). A family sets ``image_token``
    and implements :meth:`encode`; :meth:`placeholder` wraps a run of placeholders."""

    image_processor: object
    tokenizer: object
    chat_template: str | None = None
    image_token: ClassVar[str] = ""

    def encode(self, images: list) -> tuple[dict, list[int]]:
        """The image processor's tensors for ``images`` and each image's placeholder count."""
        raise NotImplementedError

    def placeholder(self, count: int) -> str:
        return self.image_token * count

    def finish(self, out: dict) -> None:
        """Add family-specific keys to the outputs (after tokenisation)."""

    def __call__(self, text, images=None, return_tensors="pt", padding=True, **_):
        from transformers import BatchFeature

        texts = [text] if isinstance(text, str) else list(text)
        out = {}
        if images is not None:
            flat = images if isinstance(images, (list, tuple)) else [images]
            flat = [im for group in flat for im in (group if isinstance(group, (list, tuple)) else [group])]
            tensors, counts = self.encode(flat)
            out.update(tensors)
            it = iter(counts)
            texts = [self._expand(t, it) for t in texts]
        enc = self.tokenizer(texts, return_tensors=return_tensors, padding=padding)
        out.update(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        self.finish(out)
        return BatchFeature(out)

    def _expand(self, text: str, counts) -> str:
        parts = text.split(self.image_token)
        return parts[0] + "".join(self.placeholder(next(counts)) + p for p in parts[1:])

    def batch_decode(self, *a, **k):
        return self.tokenizer.batch_decode(*a, **k)

    def apply_chat_template(self, messages, **kwargs):
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, **kwargs)

    def save_pretrained(self, path) -> None:
        self.image_processor.save_pretrained(path)
        self.tokenizer.save_pretrained(path)


def feature_layer(config, strategy: str, family: str) -> int:
    """The vision encoder layer whose output the connector reads (``vision_feature_layer`` counts
    hidden states, the embeddings first), for a model that reads one layer with ``strategy``;
    ``UnsupportedModelError`` naming both otherwise."""
    layer = config.vision_feature_layer
    if not isinstance(layer, int) or config.vision_feature_select_strategy != strategy:
        raise UnsupportedModelError(
            f"{family}: vision_feature_layer={layer!r} with strategy "
            f"{config.vision_feature_select_strategy!r} is not supported (one layer, {strategy!r})"
        )
    n_states = config.vision_config.num_hidden_layers + 1  # hidden_states: embeddings + one per layer
    return (layer if layer >= 0 else layer + n_states) - 1


def placeholder_runs(ids: torch.Tensor, token: int, total: int | None = None) -> list[int]:
    """Lengths of the runs of ``token`` in ``ids`` (B, L), row by row: one run per image or video
    of families whose runs tell their size. ``generate(num_beams=r)`` repeats each row r times
    after the encoder ran once per item: the rows are taken every r-th for the smallest such r
    whose runs add up to ``total`` placeholders (the encoder's count, when known)."""
    rows = []
    for row in ids:
        hit, lengths, n = (row == token).int().tolist() + [0], [], 0
        for h in hit:
            if h:
                n += 1
            elif n:
                lengths.append(n)
                n = 0
        rows.append(lengths)
    b = ids.shape[0]
    for r in range(1, b + 1):
        if b % r or (r > 1 and not torch.equal(ids, ids[::r].repeat_interleave(r, dim=0))):
            continue
        runs = [n for lengths in rows[::r] for n in lengths]
        if total is None or sum(runs) == total:
            return runs
    return [n for lengths in rows for n in lengths]


def projector_input_hook(projector: torch.nn.Module, on_record) -> object:
    """Record the connector's input (the pre-connector features, (V, N, Dv) per tower run) under
    ``"pre_features"``; returns the handle."""

    def grab_pre(module, args):
        on_record().raw.setdefault("pre_features", []).append(args[0].detach())

    return projector.register_forward_pre_hook(grab_pre)


class InstanceAttributeHook:
    """A removable handle that shadows one attribute of one module instance (never the class).

    Used only where transformers offers no module to hook: ``remove()`` deletes the instance
    attribute, which restores the class's own method exactly."""

    def __init__(self, obj, name: str, value):
        if name in vars(obj):
            raise RuntimeError(f"{type(obj).__name__}.{name} is already overridden on this instance")
        self.obj, self.name = obj, name
        setattr(obj, name, value)

    def remove(self) -> None:
        if self.name in vars(self.obj):
            delattr(self.obj, self.name)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of the first ``r = cos.shape[-1]`` dims of ``x`` (all of them, or a part)."""
    r = cos.shape[-1]
    rot = x[..., :r] * cos + _rotate_half(x[..., :r]) * sin
    return rot if r == x.shape[-1] else torch.cat((rot, x[..., r:]), dim=-1)


def _linear(lin, inp: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(inp, lin.weight.float(), None if lin.bias is None else lin.bias.float())


def decoder_last_token_attention(
    layer, hidden, position_embeddings, mask2d
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last position's attention over the sequence at a Llama/Qwen2-style decoder layer.

    ``hidden`` (B, L, D) the layer's input; ``position_embeddings`` (cos, sin) each (B, L, hd);
    ``mask2d`` (B, L) 1 for real tokens. Handles q/k RMSNorm, a query projection that also
    carries an output gate (per head: query, then gate) and partial rotary embeddings. Returns
    ``(attention, keys)``: attention (B, L) =
    softmax over keys of the last query, mean over heads (what eager attention returns as
    ``attn_weights[:, :, -1]``, averaged; the last *real* token's row under right padding), and keys
    (B, L, Hkv*hd) un-rotated key projections.
    Cost O(L D Dkv) for the keys, O(L D) for the query row.
    """
    attn = layer.self_attn
    x = layer.input_layernorm(hidden).float()
    bsz, length, _ = x.shape
    hd = attn.head_dim
    heads = attn.config.num_attention_heads
    last = last_real(mask2d)  # (B,) the last real token of each row (right padding: not the last column)
    rows = torch.arange(bsz, device=x.device)
    q = _linear(attn.q_proj, x[rows, last][:, None])  # (B, 1, H*hd[*2])
    q = q.view(bsz, 1, heads, -1)[..., :hd].transpose(1, 2)  # (B, H, 1, hd)
    k_flat = _linear(attn.k_proj, x)  # (B, L, Hkv*hd)
    k = k_flat.view(bsz, length, -1, hd).transpose(1, 2)  # (B, Hkv, L, hd)
    if getattr(attn, "q_norm", None) is not None:  # per-head RMSNorm of q and k before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    cos, sin = (t.float().expand(bsz, *t.shape[1:]).unsqueeze(1) for t in position_embeddings)  # (B, 1, L, r)
    q = _rope(q, cos[rows, :, last][:, :, None], sin[rows, :, last][:, :, None])  # at each row's last token
    k = _rope(k, cos, sin)
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)  # (B, H, L, hd)
    scores = (q @ k.transpose(-1, -2)) * attn.scaling  # (B, H, 1, L)
    scores = scores.masked_fill(~mask2d.bool()[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)[:, :, 0]  # (B, H, L)
    return probs.mean(1), k_flat


class Adapter(Fixtures):
    """Base adapter. Subclasses set the class variables and implement the vision and layout hooks;
    the test and bench fixtures are declared in :class:`~vlmprune.adapters.fixtures.Fixtures`."""

    # -- the family ---------------------------------------------------------------------------
    family: ClassVar[str] = ""  # registry key and the name tools print
    label: ClassVar[str] = ""  # human name, e.g. "LLaVA-1.5"
    model_types: ClassVar[tuple[str, ...]] = ()
    model_class: ClassVar[str] = ""  # the stock transformers class name
    config_class: ClassVar[str] = ""
    image_token: ClassVar[str] = ""  # the processor's image placeholder
    special_tokens: ClassVar[dict[str, str]] = {}  # token -> config attribute holding its id
    archs: ClassVar[tuple[str, ...]] = ()  # real-size configs in adapters/configs/*.json
    default_positions: ClassVar[str] = "original"
    supports_compact: ClassVar[bool] = True
    default_saliency: ClassVar[str] = "cls_attention"
    saliency_signals: ClassVar[tuple[str, ...]] = ("cls_attention", "feature_norm")
    #: what the support matrix prints as this family's saliency signal
    saliency_doc: ClassVar[str] = ""
    #: masking a token out of every layer's attention equals dropping it (False for decoders with
    #: recurrent layers, whose reference is the stock model fed only the kept tokens)
    masking_is_dropping: ClassVar[bool] = True
    #: videos are pruned too (:meth:`media_tokens` has "video"); each frame is a region
    prunes_video: ClassVar[bool] = False

    def __init__(self, model, saliency: str = "auto"):
        self.model = model
        self.base = model.model
        self.config = model.config
        self.text_config = model.config.get_text_config()
        self.language_model = self.base.language_model
        self.layers = self.language_model.layers
        self.image_token_id = int(model.config.image_token_id)
        if saliency not in SALIENCY_SIGNALS:
            raise ValueError(f"`saliency` must be one of {SALIENCY_SIGNALS}, got {saliency!r}")
        if saliency == "auto":
            saliency = self.default_saliency
        if saliency not in self.saliency_signals:
            raise ValueError(
                f"`saliency`={saliency!r} is not available for {self.family}; choose one of {self.saliency_signals}"
            )
        self.saliency = saliency

    # -- vision capture ----------------------------------------------------------------------
    def vision_module(self) -> torch.nn.Module:
        """The module whose forward runs the vision tower once per call (all images)."""
        raise NotImplementedError

    def vision_hooks(self, on_record, needs: set[str]) -> list:
        """Register forward hooks capturing what ``needs`` asks for ("saliency", "keys",
        "pre_features"). ``on_record()`` returns the current :class:`VisionRecord`. Returns handles."""
        raise NotImplementedError

    def encode_images(self, inputs: dict) -> dict:
        """Run the vision tower on processor ``inputs`` as ``generate`` does; returns the inputs with
        the pixels replaced by ``mm_encoder_outputs`` (the image metadata stays: positions need it)."""
        rest = self.model._prepare_multimodal_encoder_kwargs_for_generation(dict(inputs))
        for key, value in inputs.items():
            if key not in rest and not key.startswith("pixel_values"):
                rest[key] = value
        return rest

    # -- layout -------------------------------------------------------------------------------
    def media_tokens(self) -> dict[str, int]:
        """The placeholder token id of each kind of media this family prunes (``{"image": id}``,
        and ``"video"`` where videos are supported); other placeholders pass through untouched."""
        return {"image": self.image_token_id}

    def media_layouts(self, kind: str, call: dict, record: VisionRecord | None) -> list[ImageLayout]:
        """Layouts of every item of ``kind`` ("image", "video") in the call, in batch order."""
        if kind != "image":
            raise ValueError(f"{self.family}: cannot prune {kind}s")
        return self.image_layouts(call, record)

    def image_layouts(self, call: dict, record: VisionRecord | None) -> list[ImageLayout]:
        """Layouts of every image of the call in batch order (the order features are scattered)."""
        raise NotImplementedError

    def image_signals(self, record: VisionRecord, index: int, layout: ImageLayout) -> dict:
        """Per-image side signals in content order: keys "saliency" (N,), "keys" (N, d),
        "pre_features" (N, Dv); absent when not captured."""
        raise NotImplementedError

    # -- the language model ----------------------------------------------------------------------
    def lm_hooks(self) -> list:
        """Hooks a family's language model needs beyond the session's (removable handles)."""
        return []

    def shorten_lm_inputs(self, kwargs: dict, index: torch.Tensor, valid: torch.Tensor) -> None:
        """Shorten the language model's per-token side inputs in ``kwargs`` (beyond
        ``inputs_embeds``, the mask and the positions) to the kept positions: ``index`` (B, L')
        gathers them from the (B, L) call, ``valid`` (B, L') marks real positions."""

    def on_layer_prune(self, index: torch.Tensor | None, valid: torch.Tensor | None) -> None:
        """The in-LLM stage dropped tokens at its layer: ``index`` (B, L'') gathers the surviving
        positions of the (B, L') sequence (None: a new call starts)."""

    def check_llm_layer(self, layer: int) -> None:
        """``ValueError`` naming ``layer`` when an in-LLM stage cannot prune at its input (it reads
        the attention of decoder layer ``layer - 1``)."""

    def last_token_attention(self, layer: int, hidden, position_embeddings, mask2d):
        """``(attention (B, L), keys (B, L, Dk))`` of decoder layer ``layer`` for the last position,
        from the layer's input (see :func:`decoder_last_token_attention`)."""
        return decoder_last_token_attention(self.layers[layer], hidden, position_embeddings, mask2d)

    def layer_kind(self, layer: int) -> str:
        """The kind of decoder layer ``layer`` (layers of one kind share an attention mask)."""
        return "attention"

    def layer_mask(self, hidden, mask2d, cache, layer: int):
        """The attention mask decoder layer ``layer`` expects for ``hidden`` (B, L', D) with the
        2-D mask ``mask2d`` and the KV ``cache`` (the stock mask builder, per-layer cache sizes)."""
        from transformers.masking_utils import create_causal_mask

        return create_causal_mask(
            config=self.language_model.config,
            inputs_embeds=hidden,
            attention_mask=mask2d,
            past_key_values=cache,
            layer_idx=layer,
        )

    # -- the family, for tools -------------------------------------------------------------------
    @classmethod
    def prompt(cls, question: str, n_images: int = 1) -> str:
        """A plain prompt with ``n_images`` placeholders (used when a checkpoint has no chat template)."""
        raise NotImplementedError

    @classmethod
    def llm_shape(cls, config):
        """The language model's :class:`~vlmprune.core.flops.LLMShape` for ``config``."""
        from vlmprune.core.flops import LLMShape

        return LLMShape.from_config(config)

    @classmethod
    def vision_shape(cls, config):
        """The vision tower's :class:`~vlmprune.core.flops.VisionShape` for ``config``."""
        raise NotImplementedError

    @classmethod
    def vision_grids(cls, config, inputs) -> dict:
        """``vision_flops`` keyword arguments describing the images of processor ``inputs``."""
        raise NotImplementedError

    @classmethod
    def token_geometry(cls, image_size, processor, config, selection) -> TokenGeometry:
        """:class:`TokenGeometry` of one image of ``image_size`` (W, H), as ``processor`` and the
        model (``config``) turned it into the tokens of ``selection``."""
        raise NotImplementedError


_ADAPTERS: dict[str, type[Adapter]] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: register a family adapter under its ``family`` (and its ``model_types``)."""
    if not cls.family or not cls.model_types:
        raise ValueError(f"{cls.__name__} needs `family` and `model_types`")
    if cls.family in _ADAPTERS and _ADAPTERS[cls.family] is not cls:
        raise ValueError(f"family {cls.family!r} registered twice")
    _ADAPTERS[cls.family] = cls
    return cls


def families() -> list[type[Adapter]]:
    """Every registered family adapter, in registration order."""
    return list(_ADAPTERS.values())


def family(name: str) -> type[Adapter]:
    """The adapter class of family ``name``; ``KeyError`` listing the known families otherwise."""
    if name not in _ADAPTERS:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(_ADAPTERS)}")
    return _ADAPTERS[name]


def supported_model_types() -> list[str]:
    """Every ``model_type`` an adapter is registered for, sorted."""
    return sorted(t for a in _ADAPTERS.values() for t in a.model_types)


def adapter_class(config, what: str = "") -> type[Adapter]:
    """The adapter class for a model config, or :class:`UnsupportedModelError` naming ``what``
    (e.g. the model class) and the supported types."""
    kind = getattr(config, "model_type", None)
    for cls in _ADAPTERS.values():
        if kind in cls.model_types:
            return cls
    raise UnsupportedModelError(
        f"vlmprune does not support {what + ' ' if what else ''}(model_type={kind!r}); supported model_types: "
        f"{', '.join(supported_model_types())} (the *ForConditionalGeneration classes)"
    )


def get_adapter(model, saliency: str = "auto") -> Adapter:
    """The adapter for ``model`` or :class:`UnsupportedModelError` naming the supported types."""
    cls = adapter_class(getattr(model, "config", None), type(model).__name__)
    if not hasattr(model, "model"):
        raise UnsupportedModelError(
            f"vlmprune does not support {type(model).__name__}: use the {cls.model_class} class "
            f"(supported model_types: {', '.join(supported_model_types())})"
        )
    return cls(model, saliency=saliency)
