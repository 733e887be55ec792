"""The testbed VLMs: stock Hugging Face classes, built from configs, tokenizers trained offline.

* **testbed-llava** - ``LlavaForConditionalGeneration``: CLIP-style ViT with CLS (patch 14 at
  336 px -> 24x24 = 576 visual tokens, ``vision_feature_layer=-2``, ``"default"`` strategy), MLP
  projector, Llama decoder; stock ``LlavaProcessor`` (``CLIPImageProcessorPil``) with a chat template.
  ``LlavaForConditionalGeneration.from_pretrained(dir)`` / ``LlavaProcessor.from_pretrained(dir)``.
* **testbed-qwen** - ``Qwen2_5_VLForConditionalGeneration`` (windowed ViT, 2x2 merger, M-RoPE,
  dynamic resolution). ``Qwen2_5_VLProcessor`` cannot be constructed without torchvision in
  transformers 5.23, so the directory holds the stock ``Qwen2VLImageProcessorPil`` config and the
  tokenizer; load them with ``Qwen2VLImageProcessorPil.from_pretrained(dir)`` +
  ``AutoTokenizer.from_pretrained(dir)`` and wrap them in
  :class:`vlmprune.adapters.qwen2_vl.QwenImageProcessor` (what :func:`load_testbed` does).

Prompts (one question; training packs several turns per image):

* llava: ``"USER: <image>\\n{question} ASSISTANT:"`` -> ``" {answer}</s>"``
* qwen:  ``"<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\\n<|im_start|>assistant\\n"``
  -> ``"{answer}<|im_end|>"``
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlmprune.testbed import questions as Q

LLAVA_SPECIAL = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
QWEN_SPECIAL = (
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

LLAVA_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "USER: {% for c in parts %}{% if c['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for c in parts %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} ASSISTANT:"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ ' ' }}{% for c in parts %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}</s>"
    "{%- endif -%}"
    "{%- endfor -%}"
)
QWEN_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% for c in parts %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% endif %}{% endfor %}"
    "{% for c in parts %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{% endif -%}"
)

# d: decoder width; the vision tower is CLIP-like (LLaVA) or Qwen2.5-VL-like (windowed)
SIZES = {
    "default": dict(v_d=192, v_layers=6, v_heads=3, v_ff=768, t_d=256, t_layers=4, t_heads=4, t_ff=768),
    "tiny": dict(v_d=32, v_layers=2, v_heads=2, v_ff=64, t_d=64, t_layers=2, t_heads=2, t_ff=128),
}


def _corpus_lines() -> list[str]:
    import numpy as np

    from vlmprune.testbed.scenes import make_scene

    lines = []
    for s in range(40):
        sc = make_scene(s, level=(s % 5) / 4)
        for qa in Q.questions_for_scene(sc, 16, seed=s):
            lines.append(f"USER: {qa.question} ASSISTANT: {qa.answer}")
            lines.append(f"user\n{qa.question}\nassistant\n{qa.answer}")
    words = Q.corpus() + [
        "USER:",
        "ASSISTANT:",
        "user",
        "assistant",
        "system",
        "You are a helpful assistant.",
    ]
    rng = np.random.default_rng(0)
    for _ in range(20):
        rng.shuffle(words)
        lines.append(" ".join(words))
    return lines


def build_tokenizer(special=LLAVA_SPECIAL, eos="</s>"):
    """Byte-level BPE trained offline on the question/answer corpus: every vocabulary word (with
    its leading space) is one token, any other text still encodes byte-wise."""
    from vlmprune.apps.zoo import train_bpe_tokenizer

    return train_bpe_tokenizer(_corpus_lines() * 3, special, vocab_size=640, eos=eos)


def _finish(model, tok, eos_id):
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.do_sample = False
    model.generation_config.max_new_tokens = 4
    return model


def _decoder_kwargs(z: dict, tok, eos_id: int, max_positions: int) -> dict:
    """The decoder settings both testbeds share: sizes from ``SIZES[size]``, the tokenizer's special
    ids, tied embeddings."""
    return dict(
        hidden_size=z["t_d"],
        intermediate_size=z["t_ff"],
        num_hidden_layers=z["t_layers"],
        num_attention_heads=z["t_heads"],
        num_key_value_heads=z["t_heads"],
        vocab_size=len(tok),
        max_position_embeddings=max_positions,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos_id,
        tie_word_embeddings=True,
    )


def build_llava(
    size: str = "default",
    seed: int = 0,
    attn: str = "sdpa",
    rope_theta: float = 10000.0,
    text_overrides: dict | None = None,
    rope_linear: float = 1.0,
):
    """``(model, processor)`` for an untrained testbed-llava (fp32); ``rope_theta`` of its decoder,
    ``rope_linear``: stock linear RoPE scaling factor (positions / factor; 1: none),
    ``text_overrides``: further ``LlamaConfig`` settings (e.g. ``attention_bias`` to take a decoder
    with q/k/v biases, :func:`transplant_decoder`)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from vlmprune.adapters.llava import LlavaAdapter

    z = SIZES[size]
    tok = build_tokenizer(LLAVA_SPECIAL, "</s>")
    vc = CLIPVisionConfig(
        hidden_size=z["v_d"],
        intermediate_size=z["v_ff"],
        num_hidden_layers=z["v_layers"],
        num_attention_heads=z["v_heads"],
        image_size=336,
        patch_size=14,
        projection_dim=z["v_d"],
    )
    tc = LlamaConfig(
        **_decoder_kwargs(z, tok, tok.eos_token_id, max_positions=2048),
        rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)}
        if rope_linear == 1
        else {"rope_type": "linear", "factor": float(rope_linear), "rope_theta": float(rope_theta)},
        **(text_overrides or {}),
    )
    cfg = LlavaConfig(
        vision_config=vc,
        text_config=tc,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        attn_implementation=attn,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg)
    return _finish(model, tok, tok.eos_token_id), LlavaAdapter.tiny_processor(tok, 336, LLAVA_TEMPLATE)


QWEN_MIN_PIXELS = 224 * 224
QWEN_MAX_PIXELS = 336 * 336


def build_qwen(size: str = "default", seed: int = 0, attn: str = "sdpa", rope_theta: float = 10000.0):
    """``(model, processor)`` for an untrained testbed-qwen (fp32); processor: QwenImageProcessor."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from vlmprune.adapters.qwen2_vl import QwenImageProcessor

    z = SIZES[size]
    tok = build_tokenizer(QWEN_SPECIAL, "<|im_end|>")
    tok.chat_template = QWEN_TEMPLATE
    head = z["t_d"] // z["t_heads"]
    sec = [head // 8, 3 * head // 16, head // 2 - head // 8 - 3 * head // 16]
    tc = dict(
        **_decoder_kwargs(z, tok, tok.convert_tokens_to_ids("<|im_end|>"), max_positions=4096),
        rope_parameters={"rope_type": "default", "mrope_section": sec, "rope_theta": float(rope_theta)},
    )
    n = z["v_layers"]
    vc = dict(
        depth=n,
        hidden_size=z["v_d"],
        intermediate_size=z["v_ff"],
        num_heads=z["v_heads"],
        out_hidden_size=z["t_d"],
        patch_size=14,
        window_size=112,
        fullatt_block_indexes=sorted({n // 2 - 1, n - 1}),
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    ids = dict(
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    cfg = Qwen2_5_VLConfig(
        text_config=tc, vision_config=vc, attn_implementation=attn, tie_word_embeddings=True, **ids
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    ip = Qwen2VLImageProcessorPil(
        min_pixels=QWEN_MIN_PIXELS,
        max_pixels=QWEN_MAX_PIXELS,
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
    )
    return _finish(model, tok, tok.convert_tokens_to_ids("<|im_end|>")), QwenImageProcessor(
        image_processor=ip, tokenizer=tok
    )


def build(
    family: str,
    size: str = "default",
    seed: int = 0,
    attn: str = "sdpa",
    rope_theta: float = 10000.0,
    text_overrides: dict | None = None,
    rope_linear: float = 1.0,
):
    if family == "llava":
        return build_llava(size, seed, attn, rope_theta, text_overrides, rope_linear)
    if family == "qwen":
        if text_overrides or rope_linear != 1:
            raise ValueError("`text_overrides` and `rope_linear` are only supported for family='llava'")
        return build_qwen(size, seed, attn, rope_theta)
    raise ValueError(f"`family` must be 'llava' or 'qwen', got {family!r}")


def llava_overrides_for(source_config) -> dict:
    """``LlamaConfig`` settings under which a testbed-llava decoder can hold ``source_config``'s
    decoder (a Qwen2-style decoder has q/k/v biases; its RMSNorm epsilon)."""
    tc = source_config.get_text_config()
    bias = tc.model_type.startswith("qwen") or bool(getattr(tc, "attention_bias", False))
    return {"attention_bias": bias, "rms_norm_eps": float(tc.rms_norm_eps)}


@torch.no_grad()
def transplant_decoder(model, tokenizer, source, source_tokenizer) -> dict:
    """Copy ``source``'s language model (a testbed-qwen's Qwen2 decoder, or another testbed-llava's)
    into testbed-llava ``model``'s Llama decoder, in place: the LLaVA recipe of starting from a
    pretrained LLM. Layers, norms and projections are copied one to one (sizes must match; a bias the
    source lacks is zeroed, e.g. Llama's ``o_proj`` bias under ``attention_bias``); token embeddings
    (tied to the LM head) are matched by token string, tokens the source lacks keep their rows.
    Text positions use the same rotary frequencies in both (M-RoPE with equal t/h/w ids is 1-D RoPE).
    Returns ``{"copied": n_tensors, "tokens_matched": k, "tokens_new": [...]}``."""
    dst = model.model.language_model
    src = source.model.language_model
    sd = src.state_dict()
    copied = 0
    for name, t in dst.state_dict().items():
        if name == "embed_tokens.weight":
            continue
        if name in sd:
            if sd[name].shape != t.shape:
                raise ValueError(
                    f"decoder shapes differ at {name}: {tuple(sd[name].shape)} vs {tuple(t.shape)}"
                )
            t.copy_(sd[name])
            copied += 1
        elif name.endswith(".bias"):
            t.zero_()
        else:
            raise ValueError(f"the source decoder has no {name}")
    src_vocab = source_tokenizer.get_vocab()
    emb, src_emb = dst.embed_tokens.weight, src.embed_tokens.weight
    new = []
    for tok, i in tokenizer.get_vocab().items():
        if tok in src_vocab:
            emb[i] = src_emb[src_vocab[tok]]
        else:
            new.append(tok)
    model.tie_weights()
    return {"copied": copied, "tokens_matched": len(tokenizer) - len(new), "tokens_new": new}


def save(model, processor, out_dir, dtype=torch.bfloat16, extra: dict | None = None) -> None:
    """``save_pretrained`` the model (safetensors, ``dtype``) and its processor parts into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # a converted state dict: casting the live model there and back would round a training run's
    # fp32 weights to ``dtype`` at every checkpoint (and a deep copy would also copy the training
    # hooks' captured activations)
    state = {k: (v.detach().to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    model.save_pretrained(out, state_dict=state, safe_serialization=True)
    if hasattr(processor, "save_pretrained"):
        processor.save_pretrained(out)
    else:  # QwenImageProcessor
        processor.image_processor.save_pretrained(out)
        processor.tokenizer.save_pretrained(out)
    meta = {"testbed": family_of(model)}
    meta.update(extra or {})
    (out / "testbed.json").write_text(json.dumps(meta, indent=2))


def family_of(model) -> str:
    mt = model.config.model_type
    return "llava" if mt == "llava" else "qwen" if mt.startswith("qwen") else mt


def load_testbed(path, dtype=torch.float32, device="cpu", attn: str = "sdpa"):
    """``(model, processor, family)`` from a directory written by :func:`save` (no network), with
    the library's checkpoint loader."""
    from vlmprune.adapters.loading import load_pretrained

    pre = load_pretrained(str(path), dtype=dtype, device=device, attn=attn)
    return pre.model, pre.processor, family_of(pre.model)


def load_processor(path):
    """``(processor, family)`` saved in a testbed directory (the tokenizer the weights were trained with)."""
    from vlmprune.adapters.loading import load_config
    from vlmprune.adapters.loading import load_processor as load

    cfg = load_config(str(path))
    if cfg.model_type not in ("llava", "qwen2_5_vl"):
        raise ValueError(f"{path} is not a testbed checkpoint (model_type {cfg.model_type!r})")
    return load(str(path), cfg)[0], "llava" if cfg.model_type == "llava" else "qwen"


# ------------------------------------------------------------------------------------------ prompts
def prompt(family: str, question: str) -> str:
    if family == "llava":
        return f"USER: <image>\n{question} ASSISTANT:"
    if family != "qwen":  # a built-in random model of another family: its plain prompt
        from vlmprune.adapters import family as family_class

        return family_class(family).tiny_prompt(question)
    return (
        f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def answer_text(family: str, answer: str) -> str:
    return answer if family == "qwen" else f" {answer}"


def turn_text(family: str, question: str, first: bool) -> str:
    """The user turn of a multi-turn training sequence (the first one carries the image)."""
    if first:
        return prompt(family, question)
    if family == "llava":
        return f"USER: {question} ASSISTANT:"
    return f"\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def eos_token(family: str) -> str:
    return "</s>" if family == "llava" else "<|im_end|>"


def encode(family: str, processor, images, questions_):
    """Batch inputs for one question per image (left padded), through the stock processor."""
    prompts = [prompt(family, q) for q in questions_]
    if family == "qwen":
        return processor(text=prompts, images=list(images))
    return processor(text=prompts, images=list(images), return_tensors="pt", padding=True)


def answer_token_ids(tokenizer, family: str) -> dict[str, int]:
    """The single token id of each vocabulary answer as the model emits it."""
    out = {}
    for a in Q.ANSWERS:
        ids = tokenizer(answer_text(family, a), add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise AssertionError(f"answer {a!r} is not one token: {ids}")
        out[a] = ids[0]
    return out
