"""Helpers of the vLLM plugin tests: tiny random checkpoints on disk, engines run in their own
processes (``run_engine.py``) and the HF reference (vlmprune's session on the stock HF model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "llava_onevision")

#: the plugin's methods (every pre-LLM method), each at a budget below the tiny models' tokens
PRE_LLM = (
    "cdpruner",
    "divprune",
    "pool",
    "promprune",
    "random",
    "sppruner",
    "temporal",
    "visionzip",
    "vispruner",
)


def save_tiny(name: str, out: Path, stock_keys: bool = False) -> Path:
    """A tiny random checkpoint of family ``name`` in ``out``, sized for vLLM's CPU kernels (head
    dim 32); weights with a wide init, so that greedy tokens depend on which tokens are kept.
    ``stock_keys``: LLaVA's CLIP keys as vLLM 0.32 expects them (``vision_tower.vision_model.``)."""
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    from vlmprune.adapters import family
    from vlmprune.apps import zoo

    cls = family(name)
    tok = zoo.build_tokenizer(tuple(cls.tiny_special))
    text = zoo._text_config(cls, tok, 4 if name == "qwen3_vl" else 2)  # DeepStack feeds 3 layers
    text.update(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
    if "head_dim" in text:
        text["head_dim"] = 32
    text["initializer_range"] = 0.1
    if "rope_parameters" in text:
        section = [2, 3, 3] if name == "qwen3_5" else [4, 6, 6]  # Qwen3.5 rotates half of each head
        text["rope_parameters"] = dict(text["rope_parameters"], mrope_section=section)
    if name == "qwen3_5":  # the head dims vLLM's CPU linear-attention kernel takes (the real model's)
        text.update(linear_key_head_dim=128, linear_value_head_dim=128)
    size = {"image_size": 112} if name == "llava" else {"max_pixels": 224 * 224}
    if name == "internvl":
        size = {"image_size": 56}  # 2x2 tokens a tile: the test images are 2x2 tiles + a thumbnail
    if name == "llava_next":  # 4x4 tokens per crop; an 84x84 image is the base crop + 2x2 tiles
        size = {"image_size": 56}
    size = {"image_size": 84} if name == "llava_onevision" else size
    config = cls.tiny_config(tok, text, "sdpa", **size)
    if name == "llava_onevision":  # vLLM packs with anyres_max_9 whatever the config says
        config.image_grid_pinpoints, config.vision_aspect_ratio = ONEVISION_PINPOINTS, "anyres_max_9"
    config.initializer_range = 0.1
    if hasattr(config.vision_config, "out_hidden_size"):
        config.vision_config.out_hidden_size = 128
    elif name == "qwen2_vl":  # its merger's output width
        config.vision_config.hidden_size = 128
    torch.manual_seed(0)
    model = getattr(transformers, cls.model_class)(config).eval()
    if name == "llava_next":
        cls.tiny_init(model)  # a random image_newline: the newlines' rows matter
    model.save_pretrained(out)
    if name == "internvl":
        internvl_processor(tok, cls.tiny_processor(tok, **size), out)
    elif name == "llava_onevision":
        _onevision_processor(tok, config).save_pretrained(out)
    else:
        cls.tiny_processor(tok, **size).save_pretrained(out)
    if stock_keys and name != "internvl":  # vLLM reads its transformers-5 keys as they are
        weights = out / "model.safetensors"
        state = load_file(weights)
        rename = {k: k.replace("vision_tower.", "vision_tower.vision_model.", 1) for k in state}
        save_file({rename[k]: v for k, v in state.items()}, weights, metadata={"format": "pt"})
    return out


#: an 84 x 84 image goes on the 4 x 6-tile canvas: its padding columns are cut and the 24 x 24
#: grid shrunk to 18 x 18 (anyres_max_9), so every step of the packing runs; 3 x 10 for wide images
ONEVISION_PINPOINTS = [[336, 504], [504, 336], [252, 840]]


def _onevision_processor(tok, config):
    """The stock LLaVA-OneVision processor (images and videos) of the tiny checkpoint."""
    from transformers import LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_llava_onevision import (
        LlavaOnevisionImageProcessor,
    )
    from transformers.models.llava_onevision.video_processing_llava_onevision import (
        LlavaOnevisionVideoProcessor,
    )

    s = int(config.vision_config.image_size)
    side = {"height": s, "width": s}
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=side, image_grid_pinpoints=ONEVISION_PINPOINTS),
        video_processor=LlavaOnevisionVideoProcessor(size=side),
        tokenizer=tok,
        num_image_tokens=(s // 14) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )


def run_vllm(
    tmp: Path,
    model,
    requests,
    plugin: bool = True,
    repeat: bool = False,
    max_tokens=6,
    batches=False,
    each=False,
    **engine,
):
    """Outputs of one vLLM engine (its own process) for ``requests``; ``plugin=False`` runs stock
    vLLM (``VLLM_PLUGINS`` names no installed plugin). ``batches``: also the item count of each of
    the plugin model's encoder calls (``(outputs, counts)``). ``each``: the requests one at a time,
    a refused one as ``{"error": its last line}``, the engine serving on."""
    spec = {
        "model": str(model),
        "requests": requests,
        "engine": engine,
        "repeat": repeat,
        "max_tokens": max_tokens,
        "encoder_batches": batches,
        "each": each,
    }
    spec_path, out_path = tmp / "spec.json", tmp / "out.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, VLLM_PLUGINS="vlmprune" if plugin else "none", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, str(HERE / "run_engine.py"), str(spec_path), str(out_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        log = proc.stdout + proc.stderr  # vLLM logs to stdout
        (tmp / "engine.log").write_text(log)
        causes = [line for line in log.splitlines() if "Error" in line and "EngineDead" not in line]
        raise AssertionError(
            "vLLM run failed:\n" + "\n".join(causes[-12:]) + f"\n(full log: {tmp / 'engine.log'})"
        )
    outs = json.loads(out_path.read_text())
    return (outs, json.loads(Path(f"{out_path}.batches.json").read_text())) if batches else outs


def image_files(tmp: Path, images) -> list[str]:
    paths = []
    for i, im in enumerate(images):
        p = tmp / f"image-{len(list(tmp.glob('image-*.png')))}-{i}.png"
        im.save(p)
        paths.append(str(p))
    return paths


def video_files(tmp: Path, videos) -> list[str]:
    import numpy as np

    paths = []
    for i, v in enumerate(videos):
        p = tmp / f"video-{len(list(tmp.glob('video-*.npy')))}-{i}.npy"
        np.save(p, v)
        paths.append(str(p))
    return paths


def video_metadata(frames: int, fps: float = 4.0) -> dict:
    """The metadata both sides are given with a video of ``frames`` frames, every frame kept.
    Qwen2.5-VL derives its temporal positions from it: at 4 fps a temporal patch (2 frames) is
    0.5 s, 2 positions apart at the tiny model's 4 tokens per second."""
    return {
        "fps": fps,
        "duration": frames / fps,
        "total_num_frames": frames,
        "frames_indices": list(range(frames)),
        "video_backend": "opencv",
    }


def random_video(seed: int, frames: int = 8, size: int = 112, still: float = 0.0):
    """(frames, size, size, 3) uint8 random frames; ``still``: the share of each frame copied
    from the one before (a video whose frames repeat in part)."""
    import numpy as np

    rng = np.random.RandomState(seed)
    out = rng.randint(0, 256, (frames, size, size, 3), dtype=np.uint8)
    rows = int(size * still)
    for f in range(1, frames):
        out[f, :rows] = out[f - 1, :rows]
    return out


def hf_reference(
    name: str,
    model_dir,
    prompt: str,
    images,
    config: dict | None,
    max_tokens: int = 6,
    videos=(),
    llm_len=False,
):
    """Greedy tokens and their log-probabilities from the stock HF model under vlmprune's session
    (``config``: ``{"method": ..., "budget"|"ratio": ...}``; None: the unmodified model), and per
    image (then video) its kept indices and token count; ``llm_len``: also the length of the
    sequence the session's prefill gave the LLM (the prompt with the kept visual tokens)."""
    inputs = hf_inputs(model_dir, prompt, images, videos)
    return hf_generate(name, model_dir, inputs, config, max_tokens, llm_len=llm_len)


def hf_inputs(model_dir, prompt: str, images, videos=()):
    """The stock HF processor's tensors for ``prompt`` with ``images`` and ``videos``."""
    import transformers

    proc = transformers.AutoProcessor.from_pretrained(str(model_dir))
    media = {"images": list(images) or None, "videos": list(videos) or None}
    if videos:
        media["video_metadata"] = [video_metadata(len(v)) for v in videos]
    return dict(proc(text=[prompt], return_tensors="pt", **media))


def hf_generate(
    name: str,
    model_dir,
    inputs: dict,
    config: dict | None,
    max_tokens: int = 6,
    dtype="float32",
    llm_len=False,
):
    """:func:`hf_reference` on processed ``inputs``."""
    import torch

    import vlmprune
    from vlmprune.adapters import family

    model = _hf_model(family(name).model_class, str(model_dir), dtype)

    def generate():
        out = model.generate(
            **inputs,
            max_new_tokens=max_tokens,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
            eos_token_id=None,
            pad_token_id=0,
        )
        toks = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        return toks, [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.scores, toks)]

    with torch.no_grad():
        if config is None:
            return (*generate(), None, *([inputs["input_ids"].shape[1]] if llm_len else []))
        options = {k: v for k, v in config.items() if k not in ("method", "saliency")}
        method = vlmprune.get_method(config["method"], **options)
        with method(model, saliency=config.get("saliency", "auto")) as session:
            toks, lps = generate()
        kept = [(s.kept.tolist(), s.num_tokens) for s in method.last_selection]
        return toks, lps, kept, *([session.kept_positions.shape[1]] if llm_len else [])


_MODELS: dict = {}


def _hf_model(cls_name: str, path: str, dtype: str = "float32"):
    import torch
    import transformers

    if (path, dtype) not in _MODELS:
        model = getattr(transformers, cls_name).from_pretrained(path, dtype=getattr(torch, dtype))
        _MODELS[path, dtype] = model.eval()
    return _MODELS[path, dtype]


def start_fails(model, llm_kwargs: str) -> str:
    """Start ``LLM(model=model, <llm_kwargs>)`` in a fresh process with the plugin loaded; assert
    that it fails before the engine process starts and return the last line of its stderr."""
    code = (
        "from vllm import LLM\n"
        "if __name__ == '__main__':\n"
        f"    LLM(model={str(model)!r}, dtype='float32', gpu_memory_utilization=0.25, enforce_eager=True,"
        f" {llm_kwargs})\n"
        "    print('STARTED')\n"
    )
    env = dict(os.environ, VLLM_PLUGINS="vlmprune")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "STARTED" not in proc.stdout
    assert "EngineCore" not in proc.stderr  # refused before the engine process started
    return proc.stderr.strip().splitlines()[-1]


def internvl_processor(tok, tiny, out: Path) -> None:
    """Save the stock ``InternVLProcessor`` that vLLM builds (with the tiny processor's image
    processor and tile size) and a tokenizer naming InternVL's image tokens."""
    import transformers
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    tok.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    names = ("context_image_token", "start_image_token", "end_image_token", "video_token")
    cfg["extra_special_tokens"] = dict(zip(names, ("<IMG_CONTEXT>", "<img>", "</img>", "<video>")))
    cfg_path.write_text(json.dumps(cfg))
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ip = tiny.image_processor
    video = InternVLVideoProcessor(size=dict(ip.size))
    transformers.InternVLProcessor(
        image_processor=ip, tokenizer=tok, video_processor=video, image_seq_length=tiny.tokens_per_tile
    ).save_pretrained(out)
