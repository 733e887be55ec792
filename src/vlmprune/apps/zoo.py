"""Built-in models, built offline from configs: nothing here downloads.

* **tiny** models (:func:`tiny_model`): a few layers and tokens per family, random weights; the
  test-suite's models and, at a demo size, the built-in ``--model tiny-...`` of the command line.
* **bench-size** models (:func:`bench_model`): the same structure with an 8-layer, d = 256 LLM, so
  that pruning's speedups show on a CPU.

Tokenizers are byte-level BPE trained offline on a fixed corpus (:func:`train_bpe_tokenizer`)
and wrapped in ``PreTrainedTokenizerFast``; processors are the families' stock ones (or the
adapter's torchvision-free stand-in). Everything family-specific comes from the adapters.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import torch

from vlmprune.adapters import families, family

CORPUS = (
    "USER: What is in the image? ASSISTANT: A red square and a blue circle. "
    "Describe the picture in detail. How many objects are there? Is there a cat? yes no "
    "what colour is the object left of the star? green yellow purple orange white black "
    "the quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9 "
    "system user assistant You are a helpful assistant. Answer with one word."
)

#: The LLM of the bench-size models: 8 layers, d=256, m=688 (m/d of the 7B models), 4 heads of 64.
BENCH_TEXT = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 64,
}


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
    """The tiny models' tokenizer: byte-level BPE trained offline on :data:`CORPUS`."""
    return train_bpe_tokenizer([CORPUS] * 4, special, vocab_size=400)


def _text_config(cls, tok, layers: int) -> dict:
    cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4)
    cfg.update(num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=4096)
    cfg.update(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg.update(cls.tiny_text())
    return cfg


def _finish(model, dtype):
    model.eval()
    model.to(dtype)
    model.generation_config.pad_token_id = model.config.text_config.pad_token_id
    model.generation_config.eos_token_id = None  # let max_new_tokens decide: deterministic lengths in tests
    model.generation_config.do_sample = False
    return model


def tiny_model(name: str, attn: str = "sdpa", seed: int = 0, layers: int = 4, dtype=torch.float32, **size):
    """``(model, processor)``: the tiny random model of family ``name`` (stock class, weights
    seeded with ``seed``), ``layers`` decoder layers; ``size`` goes to the family's
    ``tiny_config`` / ``tiny_processor`` (e.g. ``image_size``, ``max_pixels``)."""
    import transformers

    try:
        cls = family(name)
    except KeyError:
        raise ValueError(f"`family` must be one of {[c.family for c in families()]}, got {name!r}") from None
    tok = build_tokenizer(tuple(cls.tiny_special))
    config = cls.tiny_config(tok, _text_config(cls, tok, layers), attn, **size)
    torch.manual_seed(seed)
    model = getattr(transformers, cls.model_class)(config)
    cls.tiny_init(model)
    return _finish(model, dtype), cls.tiny_processor(tok, **size)


def tiny_inputs(name: str, processor, questions, images):
    """Batch inputs (left padded) for ``questions`` (list of str) with ``images`` (list of lists of
    PIL images, one list per question) in the tiny models' prompt format."""
    cls = family(name)
    prompts = [cls.tiny_prompt(q, len(ims)) for q, ims in zip(questions, images)]
    flat = [im for ims in images for im in ims]
    return processor(text=prompts, images=flat or None, return_tensors="pt", padding=True)


def builtin_names() -> dict[str, str]:
    """``{name: family}`` of the built-in random models (each family's ``tiny_name``)."""
    return {cls.tiny_name: cls.family for cls in families() if cls.tiny_name}


def default_name() -> str:
    """The default ``--model`` of the tools: the first registered family's built-in model."""
    return next(iter(builtin_names()))


def demo_model(name: str, attn: str = "sdpa", seed: int = 0):
    """``(model, processor, description)`` of a built-in model at its demo size (the family's
    real token count per image, e.g. 576 for a 336 px single crop)."""
    cls = family(builtin_names()[name])
    model, proc = tiny_model(cls.family, attn=attn, seed=seed, **cls.demo_size)
    size = ", ".join(f"{k}={v}" for k, v in cls.demo_size.items())
    return model, proc, f"{name} (random weights, {size})"


def _merge(base: dict, over: dict) -> dict:
    """``base`` updated with ``over``; nested dicts are merged one level deep."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            {**out.get(key, {}), **value}
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def bench_model(
    name: str,
    dtype=torch.float32,
    device="cpu",
    attn: str = "sdpa",
    seed: int = 0,
    image_size=None,
    text: dict | None = None,
    vision: dict | None = None,
):
    """``(model, processor, description)``: the bench-size model of built-in ``name``: the tiny
    model's structure, tokenizer and special ids with the :data:`BENCH_TEXT` LLM and the family's
    ``bench_vision`` tower. ``image_size`` (W, H) sets a dynamic-resolution family's pixel budget;
    ``text`` / ``vision``: config keys over those (a larger LLM, say)."""
    cls = family(builtin_names()[name])
    size = (
        dict(cls.bench_size)
        if cls.bench_size is not None
        else cls.processor_size(None, image_size or cls.bench_image)
    )
    small, proc = tiny_model(cls.family, attn=attn, **size)
    d = small.config.to_dict()
    d["text_config"].pop("layer_types", None)  # sized for the tiny depth; the bench text sets its own or none
    d["text_config"] = _merge(d["text_config"], {**BENCH_TEXT, **cls.bench_text(), **(text or {})})
    d["vision_config"] = {**d["vision_config"], **copy.deepcopy(cls.bench_vision()), **(vision or {})}
    for key in ("dtype", "torch_dtype"):
        for sub in (d, d["text_config"], d["vision_config"]):
            sub.pop(key, None)
    config = type(small.config).from_dict(d)
    torch.manual_seed(seed)
    with torch.device(device):
        model = type(small)._from_config(config, dtype=dtype, attn_implementation=attn)
    cls.tiny_init(model)
    model.generation_config = small.generation_config
    t = d["text_config"]
    desc = (
        f"{name}: built-in bench model, random weights; LLM {t['num_hidden_layers']} layers, "
        f"d={t['hidden_size']}, m={t['intermediate_size']}, {t['num_attention_heads']} heads"
    )
    return model.eval(), proc, desc
