"""Tiny random models of every supported family, built offline from configs.

Used by the test-suite, by ``vlmprune bench``'s built-in default and by the docs. Nothing here
downloads: tokenizers are trained on a fixed corpus with ``tokenizers`` and wrapped in
``PreTrainedTokenizerFast``; image processors are the stock PIL ones; the processors are the stock
``LlavaProcessor`` / ``LlavaNextProcessor``. Qwen's stock processor needs torchvision for its video
processor (integration.md), so :class:`QwenTinyProcessor` expands ``<|image_pad|>`` itself and
returns ``mm_token_type_ids`` exactly as the stock processor does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

FAMILIES = ("llava", "llava_next", "qwen2_5_vl", "qwen2_vl")

_CORPUS = (
    "USER: What is in the image? ASSISTANT: A red square and a blue circle. "
    "Describe the picture in detail. How many objects are there? Is there a cat? yes no "
    "what colour is the object left of the star? green yellow purple orange white black "
    "the quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9 "
    "system user assistant You are a helpful assistant. Answer with one word."
)


def train_bpe_tokenizer(lines, special, vocab_size: int, eos: str = "</s>"):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained offline on ``lines``, with the
    ``special`` tokens (``<pad>``, ``<s>``, ``<unk>`` and ``eos`` among them), left padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special),
        initial_alphabet=sorted(pre_tokenizers.ByteLevel.alphabet()),  # its order varies per process
        show_progress=False,
    )
    tok.train_from_iterator(list(lines), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token=eos,
        unk_token="<unk>",
        padding_side="left",
    )
    fast.add_special_tokens(
        {"additional_special_tokens": [s for s in special if s not in fast.all_special_tokens]}
    )
    return fast


@lru_cache(maxsize=4)
def build_tokenizer(special: tuple[str, ...]):
    """The tiny models' tokenizer: byte-level BPE trained offline on a fixed corpus."""
    return train_bpe_tokenizer([_CORPUS] * 4, special, vocab_size=400)


_LLAVA_SPECIAL = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
_QWEN_SPECIAL = (
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def _text_config(vocab: int, layers: int, family: str, pad_id: int, bos: int, eos: int) -> dict:
    cfg = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        pad_token_id=pad_id,
        bos_token_id=bos,
        eos_token_id=eos,
        max_position_embeddings=4096,
    )
    if family.startswith("qwen"):
        cfg["rope_parameters"] = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
    return cfg


def _tiny_clip(image_size: int):
    """CLIP vision tower of the tiny LLaVA families: 3 layers, d=32, patch 14, with CLS."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=14,
        projection_dim=32,
    )


def _finish(model, attn: str, seed: int, dtype):
    model.eval()
    model.to(dtype)
    model.generation_config.pad_token_id = model.config.text_config.pad_token_id
    model.generation_config.eos_token_id = None  # let max_new_tokens decide: deterministic lengths in tests
    model.generation_config.do_sample = False
    return model


def _seeded_init(seed: int):
    torch.manual_seed(seed)


def llava_processor(tok, image_size: int, chat_template: str | None = None):
    """A stock ``LlavaProcessor`` for a square CLIP input of ``image_size`` px, patch 14, with a CLS
    token (``"default"`` strategy) and ``<image>`` placeholders."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    ip = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return _clip_processor(LlavaProcessor, ip, tok, chat_template)


def _clip_processor(cls, image_processor, tok, chat_template: str | None = None):
    """``cls`` (``LlavaProcessor`` / ``LlavaNextProcessor``) for a CLIP tower with patch 14 and a CLS
    token (``"default"`` strategy), ``<image>`` placeholders."""
    return cls(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )


def tiny_llava(attn: str = "sdpa", seed: int = 0, layers: int = 4, image_size: int = 84, dtype=torch.float32):
    """Tiny LLaVA-1.5: CLIP ViT (3 layers, CLS, patch 14) -> MLP projector -> Llama decoder.

    ``image_size=84`` gives a 6x6 = 36-token grid. Returns ``(model, processor)``.
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tok = build_tokenizer(_LLAVA_SPECIAL)
    vc = _tiny_clip(image_size)
    tc = _text_config(len(tok), layers, "llava", tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    cfg = LlavaConfig(
        vision_config=vc,
        text_config=tc,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        attn_implementation=attn,
    )
    _seeded_init(seed)
    model = LlavaForConditionalGeneration(cfg)
    return _finish(model, attn, seed, dtype), llava_processor(tok, image_size)


def tiny_llava_next(
    attn: str = "sdpa", seed: int = 0, layers: int = 4, image_size: int = 56, dtype=torch.float32
):
    """Tiny LLaVA-NeXT: anyres with pinpoints up to 2x2 tiles of ``image_size`` (4x4 grid each)."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tok = build_tokenizer(_LLAVA_SPECIAL)
    s = image_size
    pinpoints = [[s, 2 * s], [2 * s, s], [2 * s, 2 * s]]
    vc = _tiny_clip(s)
    tc = _text_config(len(tok), layers, "llava_next", tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    cfg = LlavaNextConfig(
        vision_config=vc,
        text_config=tc,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        attn_implementation=attn,
    )
    _seeded_init(seed)
    model = LlavaNextForConditionalGeneration(cfg)
    with torch.no_grad():  # the stock init leaves image_newline at zero: give it a value so it matters
        model.model.image_newline.normal_()
    ip = LlavaNextImageProcessorPil(
        size={"shortest_edge": s},
        crop_size={"height": s, "width": s},
        image_grid_pinpoints=pinpoints,
    )
    return _finish(model, attn, seed, dtype), _clip_processor(LlavaNextProcessor, ip, tok)


@dataclass
class QwenTinyProcessor:
    """Stand-in for ``Qwen2_5_VLProcessor`` (which needs torchvision to construct in 5.23):
    the stock PIL image processor plus placeholder expansion, returning the same keys."""

    image_processor: object
    tokenizer: object
    merge_size: int = 2
    image_token: str = "<|image_pad|>"

    def __call__(self, text, images=None, return_tensors="pt", padding=True):
        texts = [text] if isinstance(text, str) else list(text)
        out = {}
        if images is not None:
            flat = images if isinstance(images, (list, tuple)) else [images]
            flat = [im for group in flat for im in (group if isinstance(group, (list, tuple)) else [group])]
            img = self.image_processor(flat, return_tensors="pt")
            out.update(pixel_values=img["pixel_values"], image_grid_thw=img["image_grid_thw"])
            counts = (img["image_grid_thw"].prod(-1) // self.merge_size**2).tolist()
            it = iter(counts)
            expanded = []
            for t in texts:
                parts = t.split(self.image_token)
                s = parts[0]
                for p in parts[1:]:
                    s += "<|placeholder|>" * next(it) + p
                expanded.append(s.replace("<|placeholder|>", self.image_token))
            texts = expanded
        enc = self.tokenizer(texts, return_tensors=return_tensors, padding=padding)
        out.update(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        image_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        out["mm_token_type_ids"] = (enc["input_ids"] == image_id).to(torch.int32)
        from transformers import BatchFeature

        return BatchFeature(out)

    def batch_decode(self, *a, **k):
        return self.tokenizer.batch_decode(*a, **k)


def _tiny_qwen(kind: str, attn: str, seed: int, layers: int, dtype, max_pixels: int):
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    tok = build_tokenizer(_QWEN_SPECIAL)
    tc = _text_config(len(tok), layers, kind, tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    ids = dict(
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    if kind == "qwen2_5_vl":
        vc = dict(
            depth=4,
            hidden_size=32,
            intermediate_size=64,
            num_heads=4,
            out_hidden_size=64,
            patch_size=14,
            window_size=56,
            fullatt_block_indexes=[1, 3],
            spatial_merge_size=2,
            temporal_patch_size=2,
        )
        cfg = Qwen2_5_VLConfig(text_config=tc, vision_config=vc, attn_implementation=attn, **ids)
        cls = Qwen2_5_VLForConditionalGeneration
    else:
        vc = dict(
            depth=3,
            embed_dim=32,
            hidden_size=64,
            num_heads=4,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )
        cfg = Qwen2VLConfig(text_config=tc, vision_config=vc, attn_implementation=attn, **ids)
        cls = Qwen2VLForConditionalGeneration
    _seeded_init(seed)
    model = cls(cfg)
    ip = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=max_pixels, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    return _finish(model, attn, seed, dtype), QwenTinyProcessor(ip, tok)


def tiny_qwen2_5_vl(
    attn: str = "sdpa", seed: int = 0, layers: int = 4, dtype=torch.float32, max_pixels=168 * 168
):
    """Tiny Qwen2.5-VL: windowed vision tower (full attention at blocks 1 and 3), 2x2 merger, M-RoPE."""
    return _tiny_qwen("qwen2_5_vl", attn, seed, layers, dtype, max_pixels)


def tiny_qwen2_vl(
    attn: str = "sdpa", seed: int = 0, layers: int = 4, dtype=torch.float32, max_pixels=168 * 168
):
    """Tiny Qwen2-VL: full-attention vision tower, 2x2 merger, M-RoPE."""
    return _tiny_qwen("qwen2_vl", attn, seed, layers, dtype, max_pixels)


BUILDERS = {
    "llava": tiny_llava,
    "llava_next": tiny_llava_next,
    "qwen2_5_vl": tiny_qwen2_5_vl,
    "qwen2_vl": tiny_qwen2_vl,
}


def tiny_model(family: str, **kwargs):
    """``(model, processor)`` for a family in :data:`FAMILIES`."""
    if family not in BUILDERS:
        raise ValueError(f"`family` must be one of {FAMILIES}, got {family!r}")
    return BUILDERS[family](**kwargs)


def random_image(seed: int, size=(84, 84)) -> Image.Image:
    """A deterministic RGB image with smooth structure (not pure noise), ``size`` = (W, H)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3))
    for c in range(3):
        fx, fy, ph = rng.uniform(0.02, 0.2, 2).tolist() + [rng.uniform(0, 6.28)]
        img[..., c] = 0.5 + 0.5 * np.sin(fx * xx + fy * yy + ph)
    for _ in range(3):
        x0, y0 = rng.integers(0, w - 10), rng.integers(0, h - 10)
        img[y0 : y0 + rng.integers(5, 20), x0 : x0 + rng.integers(5, 20)] = rng.uniform(0, 1, 3)
    return Image.fromarray((img * 255).astype("uint8"))


def prompt_for(family: str, question: str, n_images: int = 1) -> str:
    """A chat-style prompt with ``n_images`` image placeholders for the family's processor."""
    if family.startswith("qwen"):
        img = "<|vision_start|><|image_pad|><|vision_end|>" * n_images
        return f"system You are a helpful assistant. user {img}{question} assistant"
    return "USER: " + "<image>\n" * n_images + f"{question} ASSISTANT:"


def make_inputs(family: str, processor, questions, images):
    """Batch inputs (left padded) for ``questions`` (list of str) with ``images`` (list of list of PIL)."""
    prompts = [prompt_for(family, q, len(ims)) for q, ims in zip(questions, images)]
    flat = [im for ims in images for im in ims]
    if family.startswith("qwen"):
        return processor(text=prompts, images=flat if flat else None)
    if not flat:
        return processor(text=prompts, return_tensors="pt", padding=True)
    return processor(text=prompts, images=flat, return_tensors="pt", padding=True)
